"""Request bodies: read whole within SAGEMAKER_MAX_PAYLOAD_IN_MB; the rest of a body that
is refused, read and thrown away, so that the client sees the answer.

Most HTTP clients (requests, http.client, Java's, SageMaker's) send the whole body before
they read the answer. A server that answers and closes while the body is still arriving
leaves unread bytes in its socket, and the kernel then resets the connection: the client
sees a reset or a broken pipe, never the 413. So an answer given before the body has been
read (a 413, a 503 while loading or shutting down) first reads what is left of the body
and discards it, up to a bound: DISCARD_FACTOR times the limit plus DISCARD_ALLOWANCE
bytes of body in all, within DISCARD_SECONDS. A body that ends within the bound leaves the
connection open for the next request. Past it, and at once for a body declared larger than
the bound or one the client holds back until a 100 Continue (Expect: 100-continue), the
answer says ``Connection: close`` and the connection is closed without reading more.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import ClientDisconnect, Request

from smvision.quoting import quote

log = logging.getLogger("smvision.container")

MB = 1024 * 1024
#: A refused body is read and discarded up to DISCARD_FACTOR x the limit + DISCARD_ALLOWANCE
#: bytes (in all, counted from its first byte) ...
DISCARD_FACTOR = 4
DISCARD_ALLOWANCE = 64 * MB
#: ... and for at most this many seconds.
DISCARD_SECONDS = 10.0


class TooLarge(Exception):
    """The body is over the limit: ``size`` bytes or more (declared, or counted so far),
    ``received`` of which have been read from the connection."""

    def __init__(self, size: int, received: int) -> None:
        super().__init__(size)
        self.size = size
        self.received = received


class BadRequest(Exception):
    pass


def declared_length(request: Request) -> int | None:
    """The Content-Length header as a number; None without one; BadRequest if it is not one."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    try:
        length = int(declared)
    except ValueError:
        length = -1
    if length < 0:
        raise BadRequest(f"invalid Content-Length {quote(declared)}")
    return length


async def read_body(request: Request, limit: int | None) -> bytes:
    """The whole request body, refusing (413) one over ``limit`` bytes: a declared
    Content-Length first, then by counting while a chunked body arrives."""
    length = declared_length(request)
    if limit is not None and length is not None and length > limit:
        raise TooLarge(length, 0)
    receive = request.receive
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if chunk:
            total += len(chunk)
            if limit is not None and total > limit:
                raise TooLarge(total, total)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


def discard_bound(limit: int | None) -> int:
    """The most bytes of a refused body (in all) read and discarded before answering."""
    return DISCARD_FACTOR * (limit or 0) + DISCARD_ALLOWANCE


async def discard_rest(request: Request, received: int, bound: int,
                       seconds: float = DISCARD_SECONDS) -> bool:
    """Read and throw away what is left of the request body (``received`` bytes of it
    have been read); whether it ended within ``bound`` bytes in all and ``seconds``, so
    that the connection can serve the next request. False at once for a body declared
    past the bound or held back for a 100 Continue, and for a client that has gone."""
    try:
        declared = declared_length(request)
    except BadRequest:
        return False  # no telling where the body ends
    if declared is not None and declared > bound:
        log.warning("not reading a body of %s bytes (more than %s): closing the connection",
                    f"{declared:,}", f"{bound:,}")
        return False
    if received == 0 and request.headers.get("expect", "").lower() == "100-continue":
        return False  # the client sends nothing until told to
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    receive = request.receive
    try:
        while received <= bound:
            message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            if message["type"] == "http.disconnect":
                return False
            received += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
    except asyncio.TimeoutError:
        log.warning("the rest of a refused body took more than %g s to arrive: closing the "
                    "connection after %s bytes", seconds, f"{received:,}")
        return False
    log.warning("a refused body went past %s bytes: closing the connection", f"{bound:,}")
    return False
