"""Restoration of arrays of any size, layout and dtype: the engine (:mod:`.engine`), the dispatcher of its
strategies (whole, streamed, tiles, working scale) and the classical dehazers."""
from .engine import RestoreOptions, Restorer, plane_ndim, restore_array
from .windows import Cancelled

__all__ = ["Cancelled", "RestoreOptions", "Restorer", "plane_ndim", "restore_array"]
