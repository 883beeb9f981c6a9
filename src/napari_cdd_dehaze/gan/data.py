"""Unpaired training data: two folders of images (degraded, clean) that never show the same scene.

Every random choice (which image, where to crop, whether to flip) comes from a ``torch.Generator``
owned by the caller, so a run is repeatable from a seed and resumable from the generator's state.
The training engine uses :meth:`UnpairedBatches.samples_at`: sample ``i`` of the global batch of
step ``t`` is drawn from its own generator seeded by (seed, t, i), so the data of a step does not
depend on how many processes share the batch, nor on anything but the step it is resumed at.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_cdd_dehaze.io.image_files import IMAGE_SUFFIXES, ImageReadError, IntensityMap, read_image, to_channels
from napari_cdd_dehaze.io.tiff_windows import TiffWindows

# A TIFF whose first image decodes to more than this is never read whole: crops are read by windows, and shrunk
# copies (``load_size``) are built band by band.
WINDOWED_BYTES = 256 << 20


class DataError(ValueError):
    """A training folder that cannot be used (missing, empty, nothing readable)."""


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder``, recursively, in a stable (sorted) order; hidden files skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise DataError(f"image folder {folder} holds no PNG, JPEG or TIFF files")
    return files


class ImageFolder:
    """The images of one domain, checked once up front and cached in their stored dtype.

    Unreadable files are dropped with one warning that names them all; a folder with no readable
    image is a :class:`DataError`. Images are converted to the model's channel count (grey repeated,
    alpha dropped) and to [0, 1] by their dtype's range. The cache keeps decoded images in their
    stored dtype up to ``cache_bytes``; later images are decoded again on every use.

    TIFFs larger than ``windowed_bytes`` decoded are never read whole (:mod:`~napari_cdd_dehaze.io.tiff_windows`):
    only their header is checked up front, a crop reads the strips or tiles under it, and with ``load_size`` the
    image is shrunk once, band by band, and the shrunk copy kept.
    """

    def __init__(self, folder: str | Path, channels: int = 3, cache_bytes: int = 2 << 30,
                 windowed_bytes: int = WINDOWED_BYTES) -> None:
        self.folder, self.channels = Path(folder), channels
        self._cache: dict[int, np.ndarray] = {}
        self._cache_left = cache_bytes
        self._windowed: dict[int, TiffWindows] = {}
        self._shrunk: dict[tuple[int, int], torch.Tensor] = {}
        self._ranges: dict[int, IntensityMap] = {}
        self.files: list[Path] = []
        skipped: list[str] = []
        for path in list_images(self.folder):
            try:
                reader = self._windowed_reader(path, windowed_bytes)
                if reader is not None:
                    self._windowed[len(self.files)] = reader
                else:
                    self._remember(len(self.files), self._load_plane(path))
            except ImageReadError as exc:  # its message starts with the file's path
                skipped.append(str(exc))
                continue
            self.files.append(path)
        if skipped:
            warnings.warn(f"skipped {len(skipped)} unreadable file(s) in {self.folder}: " + "; ".join(skipped),
                          stacklevel=2)
        if not self.files:
            raise DataError(f"image folder {self.folder} has no readable image ({len(skipped)} file(s) failed)")

    def __len__(self) -> int:
        return len(self.files)

    @property
    def windowed(self) -> list[Path]:
        """The files read by windows."""
        return [self.files[i] for i in sorted(self._windowed)]

    def _windowed_reader(self, path: Path, limit: int) -> TiffWindows | None:
        if path.suffix.lower() not in (".tif", ".tiff"):
            return None
        reader = TiffWindows(path)
        if reader.nbytes <= limit:
            reader.close()
            return None
        if min(reader.height, reader.width) < 4:
            raise ImageReadError(f"{path}: image of {reader.width}×{reader.height} pixels is too small")
        return reader

    def _load_plane(self, path: Path) -> np.ndarray:
        array = read_image(path)
        if array.ndim == 4 or (array.ndim == 3 and array.shape[-1] not in (1, 2, 3, 4)):
            array = array[0]  # first page of a stack
        if array.ndim == 3 and array.shape[-1] not in (1, 2, 3, 4):
            raise ImageReadError(f"{path}: unsupported layout {array.shape}")
        if min(array.shape[:2]) < 4:
            raise ImageReadError(f"{path}: image of {array.shape[1]}×{array.shape[0]} pixels is too small")
        return array

    def _remember(self, index: int, array: np.ndarray) -> None:
        if array.nbytes <= self._cache_left:
            self._cache[index] = array
            self._cache_left -= array.nbytes

    def image(self, index: int) -> torch.Tensor:
        """Image ``index`` as a float tensor (channels, H, W) in [0, 1] (not for files read by windows)."""
        if index in self._windowed:
            raise ValueError(f"{self.files[index]} is read by windows, not whole")
        array = self._cache.get(index)
        if array is None:
            array = self._load_plane(self.files[index])
        unit = IntensityMap.for_array(array).to_unit(array)
        return torch.from_numpy(to_channels(unit, self.channels))

    def crop(self, index: int, crop: int, load_size: int, generator: torch.Generator) -> torch.Tensor:
        """A random crop of image ``index`` as :func:`random_crop` makes it, drawing the same random numbers."""
        reader = self._windowed.get(index)
        if reader is None:
            return random_crop(self.image(index), crop, load_size, generator)
        if load_size > 0 or min(reader.height, reader.width) < crop:  # resized: crop the copy shrunk once
            return random_crop(self._shrunk_copy(index, max(load_size, crop)), crop, load_size, generator)
        top = int(torch.randint(0, reader.height - crop + 1, (1,), generator=generator))
        left = int(torch.randint(0, reader.width - crop + 1, (1,), generator=generator))
        values = self._range(index).to_unit(reader.read(top, left, crop, crop))
        window = torch.from_numpy(to_channels(values, self.channels))
        if bool(torch.randint(0, 2, (1,), generator=generator)):
            window = window.flip(-1)
        return window

    def _range(self, index: int) -> IntensityMap:
        """A windowed file's intensity map: its dtype's range, or a float image's range on a shrunk copy."""
        if index not in self._ranges:
            reader = self._windowed[index]
            sample = np.zeros(1, reader.dtype)
            if np.issubdtype(reader.dtype, np.floating):
                sample = reader.overview(max(1, min(reader.height, reader.width) // 1024)).astype(reader.dtype)
            self._ranges[index] = IntensityMap.for_array(sample)
        return self._ranges[index]

    def _shrunk_copy(self, index: int, short_side: int) -> torch.Tensor:
        """Image ``index`` block-averaged to about twice ``short_side`` (random_crop's antialiased resize does the
        rest), built once, band by band."""
        reader = self._windowed[index]
        factor = max(1, min(reader.height, reader.width) // (2 * short_side))
        if (index, factor) not in self._shrunk:
            unit = self._range(index).to_unit(reader.overview(factor))
            self._shrunk[index, factor] = torch.from_numpy(to_channels(unit, self.channels))
        return self._shrunk[index, factor]


def random_crop(image: torch.Tensor, crop: int, load_size: int, generator: torch.Generator,
                flip: bool = True) -> torch.Tensor:
    """A random ``crop``×``crop`` window of ``image`` (C, H, W), with a random horizontal flip.

    With ``load_size`` > 0 the image is first rescaled so that its short side is ``load_size``. An
    image whose short side is still below ``crop`` is **enlarged** (bilinear, aspect kept) so that its
    short side equals ``crop``: enlarging keeps the picture natural, while padding would show the
    discriminator mirrored borders that real images never have.
    """
    short = min(image.shape[-2:])
    target_short = load_size if load_size > 0 else short
    target_short = max(target_short, crop)
    if target_short != short:
        scale = target_short / short
        size = (max(crop, round(image.shape[-2] * scale)), max(crop, round(image.shape[-1] * scale)))
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                              antialias=scale < 1)[0].clamp_(0, 1)
    h, w = image.shape[-2:]
    top = int(torch.randint(0, h - crop + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - crop + 1, (1,), generator=generator))
    window = image[:, top:top + crop, left:left + crop]
    if flip and bool(torch.randint(0, 2, (1,), generator=generator)):
        window = window.flip(-1)
    return window


class UnpairedBatches:
    """Endless stream of (degraded, clean) batches in [-1, 1], shape (B, C, crop, crop) each.

    The degraded and clean images of a batch are drawn independently: nothing pairs them.
    """

    def __init__(self, degraded: ImageFolder, clean: ImageFolder, crop: int, batch_size: int = 1,
                 load_size: int = 0) -> None:
        self.degraded, self.clean = degraded, clean
        self.crop, self.batch_size, self.load_size = crop, batch_size, load_size

    def sample(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self._batch(self.degraded, generator), self._batch(self.clean, generator)

    def _batch(self, folder: ImageFolder, generator: torch.Generator) -> torch.Tensor:
        return torch.stack([self._one(folder, generator) for _ in range(self.batch_size)]) * 2 - 1

    def samples_at(self, seed: int, step: int, indices: range) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``indices`` of the global batch of ``step``: one (degraded, clean) pair per index.

        Each pair comes from a generator seeded by (``seed``, ``step``, index) through numpy's
        ``SeedSequence`` (independent streams for neighbouring seeds), so rank r of a data-parallel run
        drawing indices [r·b, (r+1)·b) sees exactly what one process drawing the whole batch sees.
        """
        degraded, clean = [], []
        for index in indices:
            state = np.random.SeedSequence([seed, step, index]).generate_state(1, np.uint64)[0]
            generator = torch.Generator().manual_seed(int(state))
            degraded.append(self._one(self.degraded, generator))
            clean.append(self._one(self.clean, generator))
        return torch.stack(degraded) * 2 - 1, torch.stack(clean) * 2 - 1

    def _one(self, folder: ImageFolder, generator: torch.Generator) -> torch.Tensor:
        index = int(torch.randint(0, len(folder), (1,), generator=generator))
        return folder.crop(index, self.crop, self.load_size, generator)
