"""Caller values in messages and logs: quoted, control characters escaped, length capped.

A value a caller sent (an S3 key, a parameter, a Content-Type) may hold CR/LF (which
would forge a log line), a NUL, or a megabyte of text. Every message that echoes one
goes through quote(); free text of unknown origin (an entry script's exception message)
goes through clean() before it reaches a log line or an error body.
"""

from __future__ import annotations

import re
import reprlib

#: Longest quoted value, in characters (the quotes and the "..." included).
VALUE_LIMIT = 120
#: Longest message (error body or log line), in characters.
MESSAGE_LIMIT = 2000

_repr = reprlib.Repr()
_repr.maxstring = VALUE_LIMIT
_repr.maxother = VALUE_LIMIT
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxdict = 6
_repr.maxlevel = 2

# C0/C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def quote(value: object) -> str:
    """The value as Python would write it ('a\\nb', 10, [1, 2]), cut to VALUE_LIMIT
    characters with '...' in the middle, and the full length said when cut."""
    text = _repr.repr(value)
    if isinstance(value, str) and len(value) > VALUE_LIMIT:
        text += f" ({len(value):,} characters)"
    return text


def clean(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """Free text made safe for one log line or an error body: control characters
    escaped (\\n, \\x00, ...), cut to `limit` characters."""
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text):,} characters)"
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match) -> str:
    char = match.group()
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char)
    if named:
        return named
    return f"\\x{ord(char):02x}" if ord(char) < 256 else f"\\u{ord(char):04x}"
