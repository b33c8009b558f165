"""Text that came from outside, made safe once before it reaches a header, a log line or an error.

Input records carry strings the worker does not control: ids, URIs, metadata, and the messages of
exceptions that quote them. Two things about such text broke the worker before:
- lone surrogates (``"\\ud800"`` is legal in JSON and in Python's ``str``, not in UTF-8): the first
  ``str.encode()`` of a dead-letter header raised ``UnicodeEncodeError`` on the main thread;
- unbounded length: a megabyte of id quoted in an exception message, a header or a log line.

``safe_text`` escapes what UTF-8 cannot hold (backslash escapes, so nothing is silently lost) and caps
the length, saying how much was cut. Every path from input text to the outside goes through it.
"""

from __future__ import annotations

DEFAULT_LIMIT = 1000
_CUT_MARK = "...[{cut} more characters]"


def safe_text(value: object, *, limit: int = DEFAULT_LIMIT) -> str:
    """``value`` as a string that always encodes to UTF-8, no longer than about ``limit`` characters.

    Bytes are decoded as UTF-8 with invalid sequences escaped; anything else goes through ``str()``
    (falling back to ``repr()``, then to the type's name, if those raise).
    """
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value).decode("utf-8", "backslashreplace")
    elif isinstance(value, str):
        text = value
    else:
        text = _stringify(value)
    if len(text) > limit:
        text = text[:limit] + _CUT_MARK.format(cut=len(text) - limit)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def safe_bytes(value: object, *, limit: int = DEFAULT_LIMIT) -> bytes:
    """``safe_text`` encoded as UTF-8: a Kafka header value that can always be produced."""
    return safe_text(value, limit=limit).encode("utf-8")


def _stringify(value: object) -> str:
    for render in (str, repr):
        try:
            return render(value)
        except Exception:  # a hostile __str__ (or one that recurses) must not escape from here
            continue
    return f"<unprintable {type(value).__name__}>"
