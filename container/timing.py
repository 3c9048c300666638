"""The Server-Timing header on every /invocations answer (errors too).

A W3C Server-Timing value in milliseconds: receive (the body from the socket), queue
(waiting for the handler thread), the stages the request's Inflight recorded (input,
predict, output or transform, and the kind's own: fetch, decode, forward, nms, ...),
and total.
"""

from __future__ import annotations

import re
import time

from smvision.container.pool import Call

_TOKEN = re.compile(r"[^A-Za-z0-9!#$%&'*+.^_`|~-]")


def server_timing(started: float, received: float | None, call: Call | None) -> str:
    """The W3C Server-Timing header value: each stage's milliseconds, then the total."""
    stages: list[tuple[str, float]] = []
    if received is not None:
        stages.append(("receive", received))
    if call is not None:
        if call.started is not None:
            stages.append(("queue", call.started - call.submitted))
        flight = call.inflight
        if flight is not None:
            try:
                stages.extend(dict(flight.stages).items())
            except RuntimeError:  # a handler thread past its deadline is adding one now
                pass
    stages.append(("total", time.monotonic() - started))
    return ", ".join(f"{_TOKEN.sub('_', name)};dur={seconds * 1000:.1f}" for name, seconds in stages)
