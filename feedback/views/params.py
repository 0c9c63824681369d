"""Numbers read from request parameters: anything but a plain, small whole number is absent."""

from __future__ import annotations

import re

_SMALL_WHOLE_NUMBER = re.compile(r"[0-9]{1,18}")


def small_int(value: str | None) -> int | None:
    """``value`` as an int when it is 1-18 ASCII digits (fits a database id), else None.
    ``str.isdigit`` is not enough: it accepts digits ``int`` rejects ("²") and numbers longer
    than ``int`` parses."""
    if value is None or not _SMALL_WHOLE_NUMBER.fullmatch(value):
        return None
    return int(value)
