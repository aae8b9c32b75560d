"""Error text as users read it (error.txt, the `error:` line, warnings)."""

from __future__ import annotations

import re

_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain_text(text: str) -> str:
    """`text` without terminal colour and cursor codes (Ray colours the errors it re-raises)."""
    return _TERMINAL_CODES.sub("", text)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text, plain (Ray appends whole remote tracebacks to its errors)."""
    text = plain_text(str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__
