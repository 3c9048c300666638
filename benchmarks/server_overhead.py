"""What our serving process adds to a request: a trivial echo entry script served by
`python -m smvision.container.serve`, against the same handler called in-process.

    python benchmarks/server_overhead.py [--requests 3000] [--clients 1 4] [--body-bytes 256]

Clients are separate processes speaking keep-alive HTTP/1.1 over raw sockets (a
pre-built request, a minimal response parser), so client-side cost stays small and the
numbers are about the server.  Every loop is bounded by --requests.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from smvision.deploy.server_process import ServerProcess, free_port

ENTRY = '''
def model_fn(model_dir):
    return None


def transform_fn(model, body, content_type, accept):
    return body, content_type
'''


def request_bytes(port: int, body: bytes, content_type: str) -> bytes:
    head = (
        f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: {content_type}\r\nAccept: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length body: (status, body)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end]).decode("latin-1")
    status = int(head.split(" ", 2)[1])
    length = 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(buf) < end + length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    body = bytes(buf[end:end + length])
    del buf[:end + length]
    return status, body


def client(port: int, request: bytes, expect: bytes, count: int, warmup: int,
           start_at: float, out: mp.Queue) -> None:
    """One keep-alive connection: warmup, then `count` timed requests."""
    latencies = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        for _ in range(warmup):
            sock.sendall(request)
            read_response(sock, buf)
        while time.time() < start_at:  # all clients start together
            time.sleep(0.001)
        first = time.perf_counter()
        for _ in range(count):
            t = time.perf_counter()
            sock.sendall(request)
            status, body = read_response(sock, buf)
            latencies.append(time.perf_counter() - t)
            if status != 200 or body != expect:
                raise RuntimeError(f"bad answer: {status} {body[:80]!r}")
        out.put((latencies, first, time.perf_counter()))


def in_process(model_dir: str, body: bytes, content_type: str, count: int) -> list[float]:
    """The same handler, no HTTP: Handler.invoke called directly."""
    from smvision.container.handler import Handler

    handler = Handler(model_dir)
    handler.load()
    for _ in range(200):
        handler.invoke(body, content_type, content_type)
    latencies = []
    for _ in range(count):
        t = time.perf_counter()
        handler.invoke(body, content_type, content_type)
        latencies.append(time.perf_counter() - t)
    return latencies


def run_clients(port: int, request: bytes, expect: bytes, clients: int, count: int,
                warmup: int) -> tuple[list[float], float]:
    ctx = mp.get_context("fork")
    out: mp.Queue = ctx.Queue()
    start_at = time.time() + 0.5
    procs = [
        ctx.Process(target=client, args=(port, request, expect, count, warmup, start_at, out))
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(30)
    latencies = [x for r in results for x in r[0]]
    wall = max(r[2] for r in results) - min(r[1] for r in results)
    return latencies, len(latencies) / wall


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (Linux /proc), in seconds."""
    total = 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except (OSError, ValueError, IndexError):
        return float("nan")
    return total + sum(cpu_seconds(child) for child in children)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# The floor: the same echo as a bare Starlette endpoint, run inline on the event loop
# (no handler thread, no timeout, no access log): what uvicorn + starlette cost alone.
BASELINE = """
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route


async def echo(request):
    return Response(await request.body(), headers={"content-type": request.headers["content-type"]})


async def ping(request):
    return Response(b"{}")


app = Starlette(routes=[Route("/invocations", echo, methods=["POST"]), Route("/ping", ping)])
"""


def start(cmd: list[str], port: int, log_path: Path) -> ServerProcess:
    """Start a server and wait until /ping answers 200 (server.ready_after: how long that took)."""
    server = ServerProcess(cmd, f"http://127.0.0.1:{port}", env={**os.environ, "SMVISION_BIND_HOST": "127.0.0.1"},
                           log_path=log_path, ready_timeout_s=60, poll_s=0.05)
    return server.start_and_wait()


def measure(name: str, server: ServerProcess, port: int, body: bytes, args, local_p50: float
            ) -> dict[int, float]:
    request = request_bytes(port, body, args.content_type)
    p50s = {}
    for clients in args.clients:
        cpu = cpu_seconds(server.process.pid)
        lat, rps = run_clients(port, request, body, clients, args.requests, args.warmup)
        cpu = (cpu_seconds(server.process.pid) - cpu) / (len(lat) + clients * args.warmup)
        p50 = p50s[clients] = statistics.median(lat)
        print(f"{name:<22} {clients:>7} {len(lat):>8} {rps:>8,.0f} {p50 * 1e3:>7.3f} "
              f"{pct(lat, 0.95) * 1e3:>7.3f} {pct(lat, 0.99) * 1e3:>7.3f} "
              f"{(p50 - local_p50) * 1e3:>9.3f} {cpu * 1e6:>10.0f} "
              f"{(1 / local_p50) / rps:>12,.0f}x")
    return p50s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="timed requests per client")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--body-bytes", type=int, default=256)
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the bare uvicorn + starlette floor")
    args = parser.parse_args(argv)

    body = (b'{"x": "' + b"a" * max(0, args.body_bytes - 9) + b'"}')[: max(args.body_bytes, 9)]
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    print(f"uvicorn with {http} + {loop}; {os.cpu_count()} CPUs, shared by the server and "
          f"the client processes; body {len(body)} bytes {args.content_type}")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        (model_dir / "code").mkdir(parents=True)
        (model_dir / "code" / "inference.py").write_text(ENTRY)
        (Path(tmp) / "baseline_app.py").write_text(BASELINE)

        local = in_process(str(model_dir), body, args.content_type, args.requests)
        local_p50 = statistics.median(local)
        print(f"in-process Handler.invoke: p50 {local_p50 * 1e6:.1f} us, "
              f"{1 / statistics.mean(local):,.0f} calls/s")
        print(f"{'server':<22} {'clients':>7} {'requests':>8} {'req/s':>8} {'p50 ms':>7} "
              f"{'p95 ms':>7} {'p99 ms':>7} {'added ms':>9} {'CPU us/req':>10} "
              f"{'in-proc/server':>13}")
        runs = []
        if not args.no_baseline:
            runs.append(("uvicorn+starlette floor", [
                sys.executable, "-m", "uvicorn", "--app-dir", tmp, "baseline_app:app",
                "--host", "127.0.0.1", "--no-access-log", "--log-level", "warning",
                "--workers", str(args.workers)]))
        runs.append(("smvision serve", [
            sys.executable, "-m", "smvision.container.serve", "--model-dir", str(model_dir),
            "--workers", str(args.workers)]))
        results = {}
        for name, cmd in runs:
            port = free_port()
            server = start([*cmd, "--port", str(port)], port, Path(tmp) / "serve.log")
            try:
                results[name] = measure(name, server, port, body, args, local_p50)
            finally:
                code = server.stop()
            if name.startswith("smvision"):
                print(f"{'':<22} ready {server.ready_after:.2f} s after start; exit code after SIGTERM: {code}")
        if len(results) == 2:
            floor, ours = results.values()
            print("smvision serve over the floor (p50): " + ", ".join(
                f"{c} client(s) +{(ours[c] - floor[c]) * 1e3:.3f} ms" for c in args.clients))
    return 0


if __name__ == "__main__":
    sys.exit(main())
