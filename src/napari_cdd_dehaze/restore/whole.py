"""The whole image in one forward pass: each norm layer sees the image's own statistics, nothing is approximated."""
from __future__ import annotations

from collections.abc import Callable

import torch

from .windows import Progress, ReadWindow, WriteWindow


def run_whole(forward: Callable[[torch.Tensor], torch.Tensor], read: ReadWindow, write: WriteWindow, height: int,
              width: int, check_stop: Callable[[], None], progress: Progress) -> None:
    """Restore the ``height``×``width`` image behind ``read`` with one call of ``forward``."""
    check_stop()
    write(0, height, 0, width, forward(read(0, height, 0, width)))
    if progress is not None:
        progress(1, 1)
