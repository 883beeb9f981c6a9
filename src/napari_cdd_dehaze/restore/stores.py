"""Where the streamed engine keeps a layer's rows between stages: the compute device's memory, RAM, or an unlinked
temporary file (written and read with ``pwrite``/``preadv``, so its pages are the kernel's cache and not this
process's memory); and the per-channel moments merged across bands.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

import numpy as np
import torch


class MemoryStore:
    """A (C, H, W) float32 array in the memory of ``device`` (RAM for the CPU), written and read by rows.

    A write of all rows at once (a stage that fits one band, the usual case up to a few megapixels) keeps
    the tensor itself instead of copying it, when it is already on ``device``.
    """

    def __init__(self, channels: int, height: int, width: int, on_close: Callable[[int], None] | None,
                 device: torch.device | str = "cpu") -> None:
        self.shape = (channels, height, width)
        self.device = torch.device(device)
        self.data: torch.Tensor | None = None
        self._on_close = on_close

    def write(self, y0: int, rows: torch.Tensor) -> None:
        if y0 == 0 and rows.shape == self.shape:
            self.data = rows.to(self.device)
            return
        if self.data is None:
            self.data = torch.empty(self.shape, device=self.device)
        self.data[:, y0:y0 + rows.shape[1]] = rows

    def read(self, y0: int, y1: int) -> torch.Tensor:
        return self.data[:, y0:y1]

    def take(self) -> torch.Tensor:
        """All rows, handed over: the store forgets them (a later read fails), so the caller may overwrite them."""
        data, self.data = self.data, None
        return data

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close(self.shape[0] * self.shape[1] * self.shape[2] * 4)
            self._on_close = None
        self.data = None


class FileStore:
    """A (C, H, W) float32 array in an unlinked temporary file, rows stored contiguously (H, C, W)."""

    def __init__(self, channels: int, height: int, width: int, folder: str | None) -> None:
        self.channels, self.width = channels, width
        self.row_bytes = channels * width * 4
        fd, path = tempfile.mkstemp(prefix="cdd-stream-", suffix=".f32", dir=folder)
        os.unlink(path)  # the data lives as long as the descriptor: nothing is left behind after a crash
        self.fd = fd
        os.ftruncate(fd, height * self.row_bytes)

    def write(self, y0: int, rows: torch.Tensor) -> None:
        buffer = memoryview(rows.cpu().permute(1, 0, 2).contiguous().numpy()).cast("B")
        offset, done = y0 * self.row_bytes, 0
        while done < len(buffer):
            done += os.pwrite(self.fd, buffer[done:], offset + done)

    def read(self, y0: int, y1: int) -> torch.Tensor:
        array = np.empty((y1 - y0, self.channels, self.width), dtype=np.float32)
        view, offset, done = memoryview(array).cast("B"), y0 * self.row_bytes, 0
        while done < len(view):
            got = os.preadv(self.fd, [view[done:]], offset + done)
            if got == 0:
                raise OSError("scratch file ended early")
            done += got
        return torch.from_numpy(array).permute(1, 0, 2)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Moments:
    """Per-channel mean and (biased) variance over all rows added, merged across bands in float64."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, None, None

    def add(self, rows: torch.Tensor) -> None:  # (C, r, W)
        n = rows.shape[1] * rows.shape[2]
        var, mean = torch.var_mean(rows.float(), dim=(1, 2), correction=0)
        mean, m2 = mean.double().cpu(), var.double().cpu() * n
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * n / total)
        self.count = total
