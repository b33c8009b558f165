"""Bounded retries for fetching weights: a few attempts with doubling backoff, within a time budget.

A pod whose weights cannot be had must say so and exit within seconds, not wait out a library's own
retries (the hub client alone retries for about half a minute per file); `clip-worker check` gives
each dependency a few seconds. So each attempt is one request with a timeout, and the loop stops at
MAX_ATTEMPTS or once the budget is spent, whichever comes first, with one line naming what was tried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from worker.errors import WeightsUnavailable
from worker.text import safe_text

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ATTEMPTS = 4
RETRY_SECONDS = 20.0  # the longest a start spends retrying weights that do not answer
_FIRST_BACKOFF_SECONDS = 1.0
_REASON_LIMIT = 300


@dataclass(frozen=True, slots=True)
class Budget:
    """How long retries may take in all, and how long one request may wait for an answer."""

    seconds: float = RETRY_SECONDS
    request_seconds: float = 10.0


def retried(attempt: Callable[[], T], *, what: str, budget: Budget, transient: Callable[[Exception], bool]) -> T:
    """``attempt()``, tried again after a transient failure while attempts and budget last; any other
    failure, or the last transient one, becomes WeightsUnavailable naming `what` and why."""
    start = time.monotonic()
    backoff = _FIRST_BACKOFF_SECONDS
    number = 0
    while True:
        number += 1
        try:
            return attempt()
        except WeightsUnavailable:
            raise
        except Exception as exc:  # classified below: each library raises its own kinds
            reason = describe(exc)
            if not transient(exc):
                raise WeightsUnavailable(f"{what}: {reason}") from exc
            elapsed = time.monotonic() - start
            if number == MAX_ATTEMPTS or elapsed + backoff > budget.seconds:
                raise WeightsUnavailable(
                    f"{what}: {reason} (unreachable: {number} attempt(s) in {elapsed:.1f} s)"
                ) from exc
            logger.info("%s: %s; trying again in %.0f s", what, reason, backoff)
            time.sleep(backoff)
            backoff *= 2


def describe(exc: BaseException) -> str:
    """A short reason fit for one line: the error's class and message, escaped and capped."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return safe_text(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, limit=_REASON_LIMIT)
