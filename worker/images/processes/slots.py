"""Shared-memory slots: where decoder processes write prepared images for the device thread to read.

A prepared image (uint8 224x224x3 in fast mode: 150 KB) is written once, by the decoder process,
into a slot of one shared block, and read once, by ``torch.stack`` on the device thread. Pickling it
back through a pipe instead would copy it twice and cost the main thread about as much as the decode
saves (measured in BENCHMARKS.md).

A slot is taken when a record is handed to a decoder and given back when nothing references its
tensor view any more (``weakref.finalize``): after the batch holding it was stacked and the record
dropped its prepared image, in whatever thread that happens, and never while a view is alive.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import deque
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np
import torch


@dataclass(frozen=True, slots=True)
class SlotLayout:
    """The shape and dtype of every slot (the model input of one image), and how many there are."""

    count: int
    shape: tuple[int, ...]
    dtype: str  # a numpy dtype name: "uint8" (fast mode) or "float32" (exact mode)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


class SharedSlots:
    """The parent's side: owns the block, hands out free slot numbers, wraps a filled slot as a tensor."""

    def __init__(self, layout: SlotLayout) -> None:
        self.layout = layout
        self._memory = shared_memory.SharedMemory(create=True, size=max(1, layout.count * layout.nbytes))
        array = np.ndarray((layout.count, *layout.shape), dtype=layout.dtype, buffer=self._memory.buf)
        self._tensors = torch.from_numpy(array)  # one view of the whole block; slots are its rows
        self._free: deque[int] = deque(range(layout.count))  # appended to from any thread (finalizers)

    @property
    def name(self) -> str:
        return self._memory.name

    def free(self) -> int:
        return len(self._free)

    def take(self) -> int:
        """A free slot number; call only when free() > 0."""
        return self._free.popleft()

    def give_back(self, slot: int) -> None:
        """For a slot whose record never got a view (it failed, or its decoder died)."""
        self._free.append(slot)

    def view(self, slot: int) -> torch.Tensor:
        """The filled slot as a tensor; the slot is free again once the tensor is garbage."""
        tensor = self._tensors[slot]
        weakref.finalize(tensor, self._free.append, slot)
        return tensor

    def close(self) -> None:
        """Unlink the block. Views still alive keep their pages mapped until they go (the block is
        only unmapped when nothing exports it)."""
        with contextlib.suppress(FileNotFoundError):
            self._memory.unlink()


class SlotWriter:
    """A decoder process's side: writes one image into a slot of the parent's block."""

    def __init__(self, name: str, layout: SlotLayout) -> None:
        self._memory = shared_memory.SharedMemory(name=name)
        self._slots = np.ndarray((layout.count, *layout.shape), dtype=layout.dtype, buffer=self._memory.buf)

    def write(self, slot: int, pixels: np.ndarray) -> None:
        self._slots[slot] = pixels
