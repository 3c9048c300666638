"""The serving process's log lines: one line per record, nothing a caller can forge, no
credentials.

Every message has its control characters escaped (a CR/LF or NUL from a caller value
cannot start a line of its own) and is cut to a bounded length; tracebacks are indented,
so no line of one can pass for a log line; the Authorization header, security tokens,
secret keys, request signatures and presigned URLs' credentials are redacted, raw or
URL-encoded, whichever logger writes them (at debug level botocore logs whole signed
requests and urllib3 every URL it fetches, presigned ones included).
"""

from __future__ import annotations

import logging
import re

from smvision.quoting import clean

#: Longest message in one log line, in characters.
LINE_LIMIT = 4000

#: How the line each worker logs once its model has loaded begins (LocalServer counts them).
MODEL_LOADED = "model loaded"

#: Names whose values are credentials in a URL's query string (presigned URLs: SigV2's
#: AWSAccessKeyId and Signature, SigV4's X-Amz-Credential and X-Amz-Signature, the
#: security token of either).
_QUERY_NAMES = r"x-amz-signature|x-amz-security-token|x-amz-credential|awsaccesskeyid|signature"
#: Names whose values are credentials in headers, dict or JSON dumps and canonical requests.
_HEADER_NAMES = (r"x-amz-security-token|x-amz-signature|x-amz-credential|signature|"
                 r"aws_session_token|session[-_]?token|security[-_]?token|"
                 r"aws_secret_access_key|secret[-_]?access[-_]?key")
#: A name starts the text, or follows a character that cannot be part of it, or a URL-encoded
#: ? or & (a URL inside another URL's query).
_NOT_IN_A_NAME = r"(?:(?<![A-Za-z0-9_-])|(?<=%3F)|(?<=%26)|(?<=%253F)|(?<=%2526))"
_SECRETS = (
    # ?X-Amz-Signature=<hex>&...  Signature=abc%2Bd%3D  X-Amz-Security-Token%3D<encoded twice>:
    # the value ends where the parameter does (&, %26, %2526 when encoded twice).
    re.compile(rf"(?i){_NOT_IN_A_NAME}({_QUERY_NAMES})(=|%3D|%253D)(?!<redacted>)"
               r"((?:%(?!26|2526)[0-9A-Fa-f]{2}|[A-Za-z0-9._~+/=*-])+)"),
    # 'Authorization': b'AWS4-HMAC-SHA256 Credential=...'  /  Authorization: Bearer ...
    # (to the end of the line)
    re.compile(rf"(?i){_NOT_IN_A_NAME}(authorization)(['\"]?\s*[:=]\s*)(?!\s*<redacted>)"
               r"(b?'[^']*'|b?\"[^\"]*\"|[^\r\n]*)"),
    # 'X-Amz-Security-Token': b'...'  x-amz-security-token:<token>  "SessionToken": "..."
    # Signature:\n<hex>
    re.compile(rf"(?i){_NOT_IN_A_NAME}({_HEADER_NAMES})(['\"]?\s*[:=]\s*)(?!\s*<redacted>)"
               r"(b?'[^']*'|b?\"[^\"]*\"|[^\s'\",;&<>(){}\[\]]+)"),
    # <SessionToken>...</SessionToken> in an STS answer's XML
    re.compile(r"(?i)(<(?:SessionToken|SecretAccessKey|Signature)>)()(?!<redacted>)([^<]*)"),
)


#: Every name above holds one of these (lower case): a line without any is left alone unsearched.
_HINTS = ("authorization", "signature", "token", "credential", "accesskeyid", "secret")


def redact(text: str) -> str:
    """text with the values of Authorization headers, security tokens, secret keys,
    signatures and presigned URLs' credentials replaced by <redacted>, raw or
    URL-encoded (once or twice)."""
    lowered = text.lower()
    if not any(hint in lowered for hint in _HINTS):
        return text
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
        lines = redact(stack_info).splitlines()
        return "\n".join("    " + clean(line, LINE_LIMIT) for line in lines)
