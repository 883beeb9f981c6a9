"""A trained restorer as one ONNX graph: what ``cdd-dehaze apply`` computes for one image, runnable without us.

The graph takes an RGB (or grey, for a one-channel model) image as float32 NCHW in [0, 1], the layout and range
QGIS Deepness feeds a model and any onnxruntime user can make, and returns the restored image the same way. It is
the restore engine's whole-image path traced once (:class:`~napari_cdd_dehaze.restore.dispatch.Dispatcher`):
reflection padding to a multiple of 4, the network, the model's composition (transmission, airlight, its floor,
the guided upsampling of a working scale), clamping, and the crop back to the input's size.

Shapes. A model without a working scale (``estimate_size`` 0: the derainers, full-resolution dehazers) is
exported with dynamic height and width, any multiple of 4 (the network's stride) that fits in memory. A model with
a working scale, like the bundled one, derives the shrunk copy's size, the block-averaging factor and the padding
from the image's size, and ONNX fixes those in the graph, so it is exported for one tile size (default 512 × 512,
square, batch 1: what Deepness runs). Its haze is then estimated per tile, not once per image as ``apply`` does
on a whole scene; overlapping tiles (``tiles_overlap``) hide the seams this can leave (docs/export.md).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from napari_cdd_dehaze import __version__
from napari_cdd_dehaze.gan.networks import MIN_SIDE, ResnetGenerator
from napari_cdd_dehaze.restore.dispatch import Dispatcher
from napari_cdd_dehaze.restore.engine import estimate_size

OPSET = 18
DEFAULT_TILE = 512
DEFAULT_OVERLAP_PERCENT = 15  # of the tile, each side: a tile's outer pixels see less context
INPUT, OUTPUT = "image", "restored"
# what each export format needs beyond the base install: (module to import, the extra that installs it)
FORMAT_NEEDS = {"onnx": ("onnx", "onnx"), "bioimageio": ("bioimageio.core", "bioimageio")}


class ExportError(ValueError):
    """A model or setting that cannot be exported, said in one line."""


class ImageRestoration(nn.Module):
    """``restore_array`` on one image (1, C, H, W) in [0, 1], as a module (the engine's whole-image path)."""

    def __init__(self, generator: ResnetGenerator, size: tuple[int, int] | None) -> None:
        super().__init__()
        self.generator = generator.eval()
        self.working_size = estimate_size(generator, None)
        self.size = size  # fixed (height, width), or None: dynamic, multiples of 4
        self.dispatcher = Dispatcher(generator, torch.device("cpu"), tile=0, estimate_size=self.working_size,
                                     band_elements=1 << 62)  # one band: the whole image in one write

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image * 2 - 1
        if self.size is None:  # dynamic shapes: the network alone, on an image of multiples of 4
            return (self.generator(x) + 1) / 2
        h, w = self.size
        ph, pw = max(-(-h // 4) * 4, MIN_SIDE), max(-(-w // 4) * 4, MIN_SIDE)
        if (ph, pw) != (h, w):
            mode = "reflect" if h > ph - h and w > pw - w else "replicate"
            x = F.pad(x, (0, pw - w, 0, ph - h), mode=mode)
        written: list[torch.Tensor] = []
        self.dispatcher.run(lambda y0, y1, x0, x1: x[..., y0:y1, x0:x1],
                            lambda y0, y1, x0, x1, y: written.append(y), ph, pw)
        (restored,) = written
        return (restored[..., :h, :w] + 1) / 2


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"512"`` → (512, 512), ``"384,512"`` → (384, 512), None → None."""
    if text is None:
        return None
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError as exc:
        raise ExportError(f"size must be N or H,W in pixels, got {text!r}") from exc
    if len(values) not in (1, 2):
        raise ExportError(f"size must be N or H,W in pixels, got {text!r}")
    return (values[0], values[-1])


def export_onnx(generator: ResnetGenerator, out: str | Path, size: tuple[int, int] | None = None,
                overlap_percent: int = DEFAULT_OVERLAP_PERCENT, name: str = "restorer",
                provenance: dict | None = None) -> Path:
    """Write ``generator``'s restoration to ``out`` (see the module docstring); returns the path.

    ``size`` (height, width) fixes the input's size; None: dynamic for a model without a working scale, else
    :data:`DEFAULT_TILE` square. The file's metadata says what the graph expects and where its weights come from,
    including the keys QGIS Deepness reads (``model_type``, ``tiles_size``, ``tiles_overlap``).
    """
    import onnx

    working = estimate_size(generator, None)
    if size is None and working:
        size = (DEFAULT_TILE, DEFAULT_TILE)
    if size is not None and min(size) < 4:
        raise ExportError(f"an exported tile must be at least 4 × 4 pixels, got {size[0]} × {size[1]}")
    module = ImageRestoration(generator.cpu(), size).eval()
    channels = generator.config.channels
    example = torch.rand(1, channels, *(size or (256, 256)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dynamic = None if size is not None else {INPUT: {2: "height", 3: "width"}, OUTPUT: {2: "height", 3: "width"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python values it folds into constants: intended
        torch.onnx.export(module, (example,), str(out), dynamo=False, opset_version=OPSET, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes=dynamic)
    model = onnx.load(str(out))
    tile = size[0] if size is not None and size[0] == size[1] else None
    metadata = {
        "name": name,
        "description": ("unpaired image restoration (napari-cdd-dehaze): dehazing/deraining of one image; "
                        "input and output float32 NCHW in [0, 1]"),
        "input_range": "[0, 1]", "layout": "NCHW", "channel_order": "RGB" if channels == 3 else "grey",
        "input_size": "dynamic (multiples of 4)" if size is None else f"{size[0]}x{size[1]}",
        "working_scale": str(working), "package_version": __version__,
        "provenance": json.dumps(provenance or {}),
        # QGIS Deepness reads these (JSON values): an image-to-image model of one tile size with overlap
        "model_type": json.dumps("Superresolution"),
        "tiles_overlap": json.dumps(overlap_percent),
    }
    if tile is not None:
        metadata |= {"tiles_size": json.dumps(tile), "tile_size": json.dumps(tile)}
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name, model.producer_version = "napari-cdd-dehaze", __version__
    model.doc_string = metadata["description"]
    onnx.save(model, str(out))
    return out


def export_model(spec: str | Path, out: str | Path, size: tuple[int, int] | None = None,
                 overlap_percent: int = DEFAULT_OVERLAP_PERCENT, file_format: str = "onnx") -> Path:
    """Export the model named by ``spec`` (``default``, a run folder, a checkpoint or a ``.safetensors`` file) to
    ``out`` as ``file_format`` (``onnx``, or ``bioimageio``: a Model Zoo package, :mod:`.bioimageio`), with its
    file's provenance (training info, file name, SHA-256); what the CLI and the widgets call."""
    import hashlib
    import importlib

    from napari_cdd_dehaze.gan.checkpoint import bundled_weights, read_metadata, resolve_model_path
    from napari_cdd_dehaze.models import load_model
    from napari_cdd_dehaze.restore.classical import ClassicalDehazer

    if file_format not in FORMAT_NEEDS:
        raise ExportError(f"unknown export format {file_format!r} ({' or '.join(FORMAT_NEEDS)})")
    module, extra = FORMAT_NEEDS[file_format]
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(f"exporting to {file_format} needs the {extra} extra: "
                          f"pip install \"napari-cdd-dehaze[{extra}]\" ({exc})") from exc
    restorer = load_model(spec)
    if isinstance(restorer, ClassicalDehazer):
        raise ExportError(f"{spec} is a classical method without a network; export a trained model")
    file = bundled_weights(spec) or resolve_model_path(spec)
    provenance = {**json.loads(read_metadata(file).get("info", "{}") or "{}"), "file": file.name,
                  "sha256": hashlib.sha256(file.read_bytes()).hexdigest()}
    name = str(spec) if bundled_weights(spec) else Path(spec).resolve().name
    if file_format == "bioimageio":
        from .bioimageio import DEFAULT_SIZE, export_bioimageio

        return export_bioimageio(restorer, out, size or DEFAULT_SIZE, name=f"napari-cdd-dehaze {name}",
                                 provenance=provenance)
    return export_onnx(restorer, out, size, overlap_percent, name=name, provenance=provenance)


def run_onnx(path: str | Path, image: np.ndarray) -> np.ndarray:
    """Restore ``image`` (H, W, C) float in [0, 1] with an exported file through onnxruntime (CPU); (H, W, C) out."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)
    return session.run(None, {INPUT: batch})[0][0].transpose(1, 2, 0)
