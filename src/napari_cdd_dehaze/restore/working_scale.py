"""Dehazing a large image by estimating its haze at a working scale and composing the output at full size.

Haze is a low-frequency field: the transmission t and airlight a of the scattering model vary with depth, not
with texture. A scattering restorer trained on photos of about 500 pixels sees haze at that scale; run on a
3000-pixel photo, its 15×15 dark-channel window and its receptive field cover a fifth of the scene they covered
in training. So a restorer with ``estimate_size`` (a :class:`~napari_cdd_dehaze.gan.networks.GeneratorConfig`
field, stored with its weights) estimates t and a on a copy of the image shrunk to that long side, upsamples
the two maps bilinearly, and applies J = (I − a)/t + a to the full-resolution pixels. Detail comes from the
input, the haze estimate from the scale the network knows. With ``guided_upsample`` t is carried to full
size along the input's own edges instead (He & Sun's fast guided filter: the coefficients of a local linear
fit t ≈ slope·grey + offset are computed on the shrunk copy, resized, and applied to the full-size grey),
so a near object's edge against a far background is not smeared by the coarse map. With ``pool_airlight``
the head's grey airlight map is replaced by its mean over the image: homogeneous haze has one airlight, and
a map lets the head trade airlight against transmission from place to place.
With ``airlight_floor`` the airlight is at least He et al.'s estimate from the shrunk copy, the head's veil kept
(:func:`floor_airlight`). Chosen on validation photos, never on the evaluation sets
(docs/model-card.md); it is also far cheaper than a full-resolution pass.

Memory stays bounded by a band, as in the streamed engine: the shrunk copy is built from row bands (block
averaging by an integer factor, then an antialiased resize of the small result), and the output is composed
and written band by band.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from napari_cdd_dehaze.gan.networks import MIN_SIDE, MIN_TRANSMISSION, ResnetGenerator
from napari_cdd_dehaze.imaging.primitives import guided_coefficients, luminance

from .windows import ReadWindow, WriteWindow, block_average

# Rows of the full-size image composed at once on a CPU: about a million values, so that a band's tensors stay in
# the caches. Band sizes do not change the output; at 4096² RGB with the bundled model this took a restore from
# 2.20 s (2²⁴ values a band) to 0.73 s on 2 CPU cores (docs/benchmarks.md). A GPU takes the engine's larger bands.
CPU_BAND_ELEMENTS = 1 << 20
GUIDED_UPSAMPLE_EPS = 1e-4  # the ridge of the guided fit (grey in [0, 1]); chosen on the validation suites



def working_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """The shrunk copy's (rows, columns): long side ``size``, aspect kept, multiples of 4, at least 16."""
    scale = size / max(height, width)
    return (max(MIN_SIDE, round(height * scale / 4) * 4), max(MIN_SIDE, round(width * scale / 4) * 4))


def block_cover(height: int, width: int, size: int) -> tuple[int, int, int]:
    """The block-averaging factor of :func:`shrink` and the rows and columns it covers (a remainder smaller than
    the factor is left out; the maps are stretched back over the covered part only)."""
    factor = max(1, max(height, width) // size)
    return factor, height // factor * factor, width // factor * factor


def shrink(read: ReadWindow, height: int, width: int, size: int, band_elements: int) -> torch.Tensor:
    """The image behind ``read`` shrunk to :func:`working_shape`, read by row bands.

    Block averaging by the largest integer factor that keeps the long side at or above ``size`` comes first,
    band by band; the remainder rows and columns of that factor (fewer than the factor) are left out. The
    small result is then resized to the working shape with an antialiased bilinear filter. An image no
    larger than ``size`` is returned as it is.
    """
    if max(height, width) <= size:
        return read(0, height, 0, width).float()
    factor, rows_used, cols_used = block_cover(height, width, size)
    channels = read(0, 1, 0, 1).shape[1]
    band = max(factor, band_elements // max(1, channels * cols_used) // factor * factor)
    reduced = block_average(read, rows_used, cols_used, factor, band)
    shape = working_shape(height, width, size)
    if tuple(reduced.shape[-2:]) == shape:
        return reduced
    return F.interpolate(reduced, size=shape, mode="bilinear", antialias=True, align_corners=False)


def _source_index(out_start: int, out_stop: int, out_size: int, in_size: int) -> tuple[torch.Tensor, ...]:
    """Neighbour indices and weights of bilinear resizing (``align_corners=False``, as :func:`F.interpolate`)
    from ``in_size`` to ``out_size`` samples, for outputs ``out_start`` to ``out_stop`` (which may run past
    ``out_size``: those repeat the last sample)."""
    pos = ((torch.arange(out_start, out_stop, dtype=torch.float64) + 0.5) * (in_size / out_size) - 0.5).clamp_min(0)
    low = pos.floor().long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    return low, high, (pos - low).clamp(0, 1).float()


def upsample_rows(maps: torch.Tensor, full_height: int, full_width: int, y0: int, y1: int,
                  width: int) -> torch.Tensor:
    """Rows ``y0:y1`` and columns ``0:width`` of ``maps`` (B, K, h, w) resized bilinearly to
    ``full_height``×``full_width``; rows and columns past that size repeat its last row or column.
    Equal to slicing ``F.interpolate(maps, (full_height, full_width), mode="bilinear")``, band by band."""
    h, w = maps.shape[-2:]
    r0, r1, wr = (v.to(maps.device) for v in _source_index(y0, y1, full_height, h))
    c0, c1, wc = (v.to(maps.device) for v in _source_index(0, width, full_width, w))
    rows = maps[..., r0, :] * (1 - wr)[:, None] + maps[..., r1, :] * wr[:, None]
    return rows[..., c0] * (1 - wc) + rows[..., c1] * wc


def _scattering_maps(generator: ResnetGenerator, small: torch.Tensor,
                     autocast_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The maps the output is composed with: the head's (with ``airlight_floor``, its airlight already floored by
    :meth:`~napari_cdd_dehaze.gan.networks.ResnetGenerator.scattering_maps`)."""
    with torch.autocast(small.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        t, a = generator.scattering_maps(small, generator.decode(small, generator.encoder(small)))
    t, a = t.float(), a.float()  # with pool_airlight, a is already one grey value per image (scattering_maps)
    return t, a


@torch.inference_mode()
def haze_at_working_scale(generator: ResnetGenerator, image: torch.Tensor,
                          size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The transmission and airlight maps that :func:`run_at_working_scale` composes ``image`` (1, C, H, W) in
    [-1, 1] with, at the working shape (an image within ``size`` at its own, padded to a multiple of 4); ``size``
    defaults to the generator's ``estimate_size``. With ``pool_airlight`` the airlight is one grey value: what
    the restorer reads the veil as. With ``guided_upsample`` t is the one before the guided fit that carries it
    to full size; with ``airlight_floor``, floored."""
    size = size or generator.config.estimate_size
    if generator.config.output != "dehaze" or not size:
        raise ValueError("haze_at_working_scale needs a dehazing restorer and a working size "
                         f"(output {generator.config.output!r}, size {size})")
    height, width = image.shape[-2:]
    device = next(generator.parameters()).device
    small = shrink(lambda y0, y1, x0, x1: image[..., y0:y1, x0:x1], height, width, size, 1 << 24).to(device)
    if max(height, width) <= size:  # run whole, as the engine does, on a copy padded to a multiple of 4
        small = F.pad(small, (0, -width % 4, 0, -height % 4), mode="replicate")
    return _scattering_maps(generator, small, None)


@torch.inference_mode()
def run_at_working_scale(generator: ResnetGenerator, device: torch.device, read: ReadWindow,
                         write: WriteWindow, height: int, width: int,
                         size: int, band_elements: int = 1 << 24, autocast_dtype: torch.dtype | None = None,
                         check_stop: Callable[[], None] | None = None,
                         progress: Callable[[int, int], None] | None = None) -> None:
    """Dehaze the ``height``×``width`` image behind ``read`` into ``write`` (see the module docstring).

    ``check_stop()`` is called before every band (it raises to stop); ``progress(done, total)`` after each.
    """
    if generator.config.output != "dehaze":
        raise ValueError(f"a working scale is for dehazing restorers (output 'dehaze'), "
                         f"not {generator.config.output!r}")
    check_stop = check_stop or (lambda: None)
    check_stop()
    small = shrink(read, height, width, size, band_elements).to(device)
    t, a = _scattering_maps(generator, small, autocast_dtype)
    radius = generator.config.guided_upsample
    if radius:  # t = slope·grey + offset, the two fitted at the working scale and resized: edges from the input
        t = torch.cat(guided_coefficients(luminance((small.float() + 1) / 2), t, radius, GUIDED_UPSAMPLE_EPS), 1)
    _, covered_h, covered_w = block_cover(height, width, size)  # what the shrunk copy shows
    channels = small.shape[1]
    rows = max(1, band_elements // max(1, channels * width))
    total = math.ceil(height / rows)
    for done, y0 in enumerate(range(0, height, rows)):
        check_stop()
        y1 = min(y0 + rows, height)
        unit = (read(y0, y1, 0, width).to(device).float() + 1) / 2
        tb = upsample_rows(t, covered_h, covered_w, y0, y1, width)
        if radius:
            tb = (tb[:, :1] * luminance(unit) + tb[:, 1:]).clamp(MIN_TRANSMISSION, 1)
        ab = a if a.shape[-2:] == (1, 1) else upsample_rows(a, covered_h, covered_w, y0, y1, width)
        write(y0, y1, 0, width, ((unit - ab) / tb + ab).clamp(0, 1) * 2 - 1)
        if progress is not None:
            progress(done + 1, total)
