"""Where the streamed engine keeps a layer's rows between stages: the compute device's memory, RAM, or a temporary
file that nothing outlives (its pages are the kernel's cache, not this process's memory); and the per-channel
moments merged across bands.
"""
from __future__ import annotations

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
    """A (C, H, W) float32 array in a temporary file, rows stored contiguously (H, C, W).

    ``tempfile.TemporaryFile`` in ``folder`` (default: the system's temporary folder): on POSIX it has no name from
    the start, on Windows it is deleted when closed, so nothing is left behind after an error, a stop or a crash of
    the process. Rows are written and read with seek, write and readinto, which every platform has.
    """

    def __init__(self, channels: int, height: int, width: int, folder: str | None) -> None:
        self.channels, self.width = channels, width
        self.row_bytes = channels * width * 4
        self.file = tempfile.TemporaryFile(prefix="cdd-stream-", suffix=".f32", dir=folder, buffering=0)
        self.file.truncate(height * self.row_bytes)

    def write(self, y0: int, rows: torch.Tensor) -> None:
        buffer = memoryview(rows.cpu().permute(1, 0, 2).contiguous().numpy()).cast("B")
        self.file.seek(y0 * self.row_bytes)
        done = 0
        while done < len(buffer):  # an unbuffered write may take fewer bytes than given
            done += self.file.write(buffer[done:])

    def read(self, y0: int, y1: int) -> torch.Tensor:
        array = np.empty((y1 - y0, self.channels, self.width), dtype=np.float32)
        view, done = memoryview(array).cast("B"), 0
        self.file.seek(y0 * self.row_bytes)
        while done < len(view):
            got = self.file.readinto(view[done:])
            if not got:
                raise OSError("scratch file ended early")
            done += got
        return torch.from_numpy(array).permute(1, 0, 2)

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()


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
