"""Whole-image restoration of arrays with a trained restorer (the tiled engine builds on this).

Any 2-D image keeps its shape, dtype and scale: intensities go to [0, 1] through
:class:`~napari_cdd_dehaze.image_files.IntensityMap` and back; alpha is passed through; an image whose
channel count differs from the model's is restored channel by channel as grey. Arrays with more
dimensions are stacks: every 2-D (or 2-D colour) plane is restored on its own.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .image_files import IntensityMap
from .networks import ResnetGenerator


def plane_ndim(shape: tuple[int, ...]) -> int:
    """Trailing dimensions that form one image: 3 when the last axis is colour (≤ 4 long), else 2."""
    return 3 if len(shape) >= 3 and shape[-1] <= 4 else 2


def restore_array(restorer: ResnetGenerator, array: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """Restore a 2-D image, a colour image or a stack of them; same shape and dtype out."""
    if array.ndim < 2:
        raise ValueError(f"expected an image, got an array of shape {array.shape}")
    imap = IntensityMap.for_array(array)  # one map for a whole stack keeps the planes comparable
    unit = imap.to_unit(array)
    out = np.empty_like(unit)
    for index in np.ndindex(unit.shape[:unit.ndim - plane_ndim(unit.shape)]):
        out[index] = restore_plane(restorer, unit[index], device)
    return imap.from_unit(out)


def restore_plane(restorer: ResnetGenerator, unit: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """Restore one (H, W) or (H, W, C) image with values in [0, 1]; returns the same layout in [0, 1]."""
    channels = restorer.config.channels
    grey_input = unit.ndim == 2
    planes = unit[..., None] if grey_input else unit
    has_alpha = planes.shape[-1] in (2, 4)
    colour = planes[..., :-1] if has_alpha else planes
    if colour.shape[-1] == channels:
        restored = _run(restorer, colour, device)
    else:  # grey into an RGB model, or RGB/multichannel into a grey model: one channel at a time
        restored = np.stack([_run(restorer, np.repeat(colour[..., i:i + 1], channels, axis=-1), device).mean(-1)
                             for i in range(colour.shape[-1])], axis=-1)
    if has_alpha:
        restored = np.concatenate([restored, planes[..., -1:]], axis=-1)
    return restored[..., 0] if grey_input else restored


@torch.inference_mode()
def _run(restorer: ResnetGenerator, image: np.ndarray, device: torch.device | str) -> np.ndarray:
    """(H, W, C) in [0, 1] through the network, padded to a multiple of 4 and cropped back."""
    h, w = image.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()[None].to(device) * 2 - 1
    pad_h, pad_w = (-h) % 4, (-w) % 4
    if pad_h or pad_w:
        mode = "reflect" if h > pad_h and w > pad_w else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    restorer = restorer.to(device).eval()
    y = restorer(x)[..., :h, :w]
    return ((y[0].float().cpu().numpy().transpose(1, 2, 0) + 1) / 2).clip(0, 1)
