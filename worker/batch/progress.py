"""What a batch run tells its operator: a progress bar with img/s while it runs (only when stderr is a
terminal: a log file gets no bar), and one summary line at the end, whatever happened.

    embedded 40, failed 11 (NotAnImage 3, TruncatedImage 2, ...), skipped 0 (already in the output) in 3.2 s: 12.5 img/s

img/s counts embedded inputs over the run's wall time, model load excluded, skipped inputs not at all.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

from tqdm import tqdm


@dataclass(slots=True)
class Tally:
    embedded: int = 0
    skipped: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # by error class
    started: float = field(default_factory=time.monotonic)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def summary(self) -> str:
        seconds = time.monotonic() - self.started
        failed = f"failed {self.failed}"
        if self.failures:
            failed += " (" + ", ".join(f"{name} {count}" for name, count in self.failures.most_common()) + ")"
        rate = self.embedded / seconds if seconds > 0 else 0.0
        return (f"embedded {self.embedded}, {failed}, skipped {self.skipped} (already in the output) "
                f"in {seconds:.1f} s: {rate:.1f} img/s")


class Progress:
    """Counts outcomes into a Tally, and draws them when `out` is a terminal."""

    def __init__(self, out: TextIO = sys.stderr) -> None:
        self.tally = Tally()
        self._bar = tqdm(unit="img", file=out, disable=not out.isatty(), dynamic_ncols=True)

    def embedded(self) -> None:
        self.tally.embedded += 1
        self._bar.update()

    def failed(self, error_class: str) -> None:
        self.tally.failures[error_class] += 1
        self._bar.update()
        self._bar.set_postfix(failed=self.tally.failed, refresh=False)

    def skipped(self) -> None:
        self.tally.skipped += 1

    def close(self) -> None:
        self._bar.close()
