"""What the service accepts, checked before anything is stored: ids, texts, numbers, the limits on each,
and errors that name the offending field (``DataError.field``, e.g. ``events[3].item_id``). The HTTP
adapter declares the same limits in its schemas; the engine checks them again for Python callers."""

from __future__ import annotations

import math
import re

from .errors import DataError, LLMRecError, UnknownNameError

EVENT_TYPES = ("view", "click", "like", "purchase", "dislike", "rating")
MAX_K = 100
MAX_HISTORY = 5000
MAX_TEXT = 2000
MAX_BATCH = 1000
MAX_ID = 256
MAX_FIELD = 10_000
MAX_FILTER_VALUES = 50
MAX_RELATIONS = 1000

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Unsupported(LLMRecError):
    """The served model cannot do what was asked (e.g. a free-text query to itemknn)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def field_error(field: str, message: str) -> DataError:
    return DataError(message, field=field)


def not_found(kind: str, name: object, field: str) -> UnknownNameError:
    e = UnknownNameError(kind, name)
    e.field = field
    return e


def check_id(x, field: str) -> str:
    """An id as the service accepts it everywhere, paths included: a string (or an integer) of 1 to
    ``MAX_ID`` characters, not blank, valid Unicode, with no control characters, and not "." or "..". Any
    other character, ``/`` included, is allowed (percent-encode it in a URL)."""
    if isinstance(x, bool) or not isinstance(x, (str, int)):
        raise field_error(field, f"expected an id (a string), got {x!r}")
    s = str(x)
    if not s.strip():
        raise field_error(field, "empty id")
    if len(s) > MAX_ID:
        raise field_error(field, f"id longer than {MAX_ID} characters")
    check_unicode(s, field)
    if _CONTROL.search(s):
        raise field_error(field, "an id may not contain control characters")
    if s in (".", ".."):  # a URL path segment that clients resolve away: no route could reach it
        raise field_error(field, f"{s!r} cannot be an id")
    return s


def check_unicode(s: str, field: str) -> None:
    """Refuse text that is not valid Unicode (a lone surrogate such as "\\ud800", which JSON can carry but
    UTF-8 cannot store)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise field_error(field, "not valid Unicode (a lone surrogate such as \\ud800)") from None


def number(x, field: str, what: str) -> float:
    """A finite JSON number as float; huge integers (1 followed by 400 zeros) are refused, not an overflow."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise field_error(field, f"expected {what}, got {x!r}")
    try:
        v = float(x)
    except OverflowError:
        v = math.inf
    if not math.isfinite(v):
        shown = repr(x) if isinstance(x, float) else "an integer too large for a float"
        raise field_error(field, f"expected {what}, a finite number, got {shown}")
    return v
