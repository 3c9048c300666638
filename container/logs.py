"""The serving process's log lines: one line per record, nothing a caller can forge, no
credentials.

Every message has its control characters escaped (a CR/LF or NUL from a caller value
cannot start a line of its own) and is cut to a bounded length; tracebacks are indented,
so no line of one can pass for a log line; the Authorization header, security tokens
and request signatures are redacted, whichever logger writes them (botocore logs whole
signed requests at debug level).
"""

from __future__ import annotations

import logging
import re

from smvision.quoting import clean

#: Longest message in one log line, in characters.
LINE_LIMIT = 4000

#: How the line each worker logs once its model has loaded begins (LocalServer counts them).
MODEL_LOADED = "model loaded"

_SECRETS = (
    # 'Authorization': b'AWS4-HMAC-SHA256 ...'  /  Authorization: Bearer ...
    re.compile(r"(?i)(authorization|x-amz-security-token)(['\"]?\s*[:=]\s*)(b?'[^']*'|b?\"[^\"]*\"|[^\r\n]*)"),
    re.compile(r"(?i)(signature)([=:]\s*)([0-9a-f]{64})"),
)


def redact(text: str) -> str:
    """text with the values of Authorization headers, security tokens and signatures
    replaced by <redacted>."""
    for pattern in _SECRETS:
        text = pattern.sub(r"\1\2<redacted>", text)
    return text


class SafeFormatter(logging.Formatter):
    """A Formatter whose lines cannot be forged and never carry credentials."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.msg, record.args, record.exc_text
        record.msg, record.args = clean(redact(record.getMessage()), LINE_LIMIT), None
        record.exc_text = None
        try:
            return super().format(record)
        finally:
            record.msg, record.args, record.exc_text = saved

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        text = redact(super().formatException(ei))
        return "\n".join("    " + clean(line, LINE_LIMIT) for line in text.splitlines())

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return "\n".join("    " + clean(line, LINE_LIMIT) for line in stack_info.splitlines())
