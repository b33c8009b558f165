"""Sink: what takes a record and is done with it at once - no poll() to run, nothing to close.

Stages (images/stages.py) hold work between turns of the loop, so they honour submit/poll/close. A
step that finishes its work inside submit() - the message decoder (decode.py), the output
(output.py), the device/CPU router of the image path - is not a stage, and this narrower contract
says so. Parked records (outage.py) resume by being submitted to one. Every Stage is a Sink.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

T_contra = TypeVar("T_contra", contravariant=True)


class Sink(Protocol[T_contra]):
    def submit(self, item: T_contra) -> None:
        """Take `item`; never blocks, never raises for one record (its failure goes to a failure sink)."""
