"""A trained restorer as a bioimage.io model package (Model Zoo format 0.5), written with ``bioimageio.spec``.

The package holds the same restoration as the ONNX export (:mod:`.onnx`: padding, network, composition, clamping),
as TorchScript and ONNX weights, for one input size; a test input made from the package's hazy sample micrograph and
the output ``restore_array`` computes for it; a cover picture of the two; documentation; the licence; and the
citations of CDD-GAN and of this package. ``bioimageio.core.test_model`` reproduces the test output from either
weight format. Tools of the Zoo (bioimageio.core, deepImageJ, ilastik, QuPath) then run it without this package.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from napari_cdd_dehaze import __version__
from napari_cdd_dehaze.gan.networks import ResnetGenerator
from napari_cdd_dehaze.restore.engine import RestoreOptions, restore_array

from .onnx import OPSET, ExportError, ImageRestoration, export_onnx

DEFAULT_SIZE = (512, 512)
PACKAGE_URL = "https://pypi.org/project/napari-cdd-dehaze/"  # the package's index page, under its distribution name
CDD_GAN_PAPER = ("Chen, X., Fan, Z., Li, P., Dai, L., Kong, C., Zheng, Z., Huang, Y., Li, Y. Unpaired Deep Image "
                 "Dehazing Using Contrastive Disentanglement Learning. ECCV 2022.", "https://arxiv.org/abs/2203.07677")


def _test_image(channels: int, size: tuple[int, int]) -> np.ndarray:
    """The sample micrograph under its out-of-focus veil (as napari's File → Open Sample gives it), its middle
    ``size`` pixels, in [0, 1], as (1, C, H, W) float32."""
    from napari_cdd_dehaze._sample_data import hazy_microscopy_image

    hazy = hazy_microscopy_image()[1][0].astype(np.float32) / 4095
    h, w = size
    if hazy.shape[0] < h or hazy.shape[1] < w:
        raise ExportError(f"a bioimage.io test image of {h} × {w} is larger than the sample ({hazy.shape})")
    top, left = (hazy.shape[0] - h) // 2, (hazy.shape[1] - w) // 2  # the middle, where the cell is
    crop = hazy[top:top + h, left:left + w]
    return np.ascontiguousarray(np.repeat(crop[None, None], channels, axis=1))


def export_bioimageio(generator: ResnetGenerator, out: str | Path, size: tuple[int, int] = DEFAULT_SIZE,
                      name: str = "napari-cdd-dehaze restorer", provenance: dict | None = None,
                      check: bool = True) -> Path:
    """Write a bioimage.io package (a ``.zip``) of ``generator`` to ``out``; with ``check``, run
    ``bioimageio.core.test_model`` on it first and raise :class:`ExportError` with its summary if it fails."""
    from bioimageio.spec import save_bioimageio_package  # the bioimageio extra
    from bioimageio.spec.model.v0_5 import (
        Author,
        AxisId,
        BatchAxis,
        ChannelAxis,
        CiteEntry,
        FileDescr,
        Identifier,
        InputTensorDescr,
        IntervalOrRatioDataDescr,
        LicenseId,
        ModelDescr,
        OnnxWeightsDescr,
        OutputTensorDescr,
        SizeReference,
        SpaceInputAxis,
        SpaceOutputAxis,
        TensorId,
        TorchscriptWeightsDescr,
        Version,
        WeightsDescr,
    )

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bioimageio-") as folder:  # the package copies what it needs
        work = Path(folder)
        channels = generator.config.channels
        image = _test_image(channels, size)
        module = ImageRestoration(generator.cpu().eval(), size).eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python values it folds into constants: intended
            traced = torch.jit.trace(module, torch.from_numpy(image), check_trace=False)
        # the test output is what the package's own engine computes, so a test of either weight format checks the
        # exported graph against restore_array
        plane = restore_array(generator, image[0].transpose(1, 2, 0), RestoreOptions(device="cpu", tile=0))
        restored = np.ascontiguousarray(plane.transpose(2, 0, 1)[None], dtype=np.float32)
        traced.save(str(work / "weights.pt"))
        export_onnx(generator, work / "weights.onnx", size, name=name, provenance=provenance)
        np.save(work / "test_input.npy", image)
        np.save(work / "test_output.npy", restored)
        _write_cover(image, restored, work / "cover.png")
        (work / "README.md").write_text(_documentation(name, generator, size, provenance or {}), encoding="utf-8")

        channel_names = [Identifier(c) for c in ("red", "green", "blue")] if channels == 3 else [Identifier("grey")]
        unit_range = IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0))
        image_id = TensorId("image")
        inputs = [InputTensorDescr(
            id=image_id, description="the degraded image, values in [0, 1]",
            axes=[BatchAxis(size=1), ChannelAxis(channel_names=channel_names),
                  SpaceInputAxis(id=AxisId("y"), size=size[0]), SpaceInputAxis(id=AxisId("x"), size=size[1])],
            test_tensor=FileDescr(source=work / "test_input.npy"), data=unit_range)]
        outputs = [OutputTensorDescr(
            id=TensorId("restored"), description="the restored image, values in [0, 1]",
            axes=[BatchAxis(size=1), ChannelAxis(channel_names=channel_names),
                  SpaceOutputAxis(id=AxisId("y"), size=SizeReference(tensor_id=image_id, axis_id=AxisId("y"))),
                  SpaceOutputAxis(id=AxisId("x"), size=SizeReference(tensor_id=image_id, axis_id=AxisId("x")))],
            test_tensor=FileDescr(source=work / "test_output.npy"), data=unit_range)]
        weights = WeightsDescr(
            torchscript=TorchscriptWeightsDescr(source=work / "weights.pt", pytorch_version=Version(torch.__version__)),
            onnx=OnnxWeightsDescr(source=work / "weights.onnx", opset_version=OPSET))
        model = ModelDescr(
            name=name, description="Unpaired image restoration (dehazing) trained with CDD-GAN in napari-cdd-dehaze",
            authors=[Author(name="napari-cdd-dehaze contributors")],
            cite=[CiteEntry(text=CDD_GAN_PAPER[0], url=CDD_GAN_PAPER[1]),
                  CiteEntry(text=f"napari-cdd-dehaze {__version__}: unpaired image restoration in napari",
                            url=PACKAGE_URL)],
            license=LicenseId("BSD-3-Clause"), documentation=FileDescr(source=work / "README.md"),
            covers=[FileDescr(source=work / "cover.png")],
            tags=["dehazing", "image-restoration", "unpaired", "cdd-gan", "2d", "pytorch", "onnx"],
            inputs=inputs, outputs=outputs, weights=weights, version=Version(__version__))
        if check:
            from bioimageio.core import test_model

            summary = test_model(model)
            if summary.status != "passed":
                raise ExportError(f"the bioimage.io package fails bioimageio.core's test: {summary.format()}")
        save_bioimageio_package(model, output_path=out)
        return out


def _write_cover(image: np.ndarray, restored: np.ndarray, path: Path) -> None:
    """Input and output side by side, 8-bit (bioimage.io shows it on the model's card)."""
    from napari_cdd_dehaze.io.image_files import write_image

    def rgb(batch: np.ndarray) -> np.ndarray:
        plane = batch[0].transpose(1, 2, 0)
        return np.repeat(plane, 3, axis=2) if plane.shape[2] == 1 else plane

    gap = np.ones((image.shape[2], 8, 3), np.float32)
    side = np.concatenate([rgb(image), gap, rgb(restored)], axis=1)
    write_image(path, np.rint(np.clip(side, 0, 1) * 255).astype(np.uint8))


def _documentation(name: str, generator: ResnetGenerator, size: tuple[int, int], provenance: dict) -> str:
    c = generator.config
    lines = [f"# {name}", "",
             "A restorer trained with CDD-GAN (contrastive disentanglement in a CycleGAN framework, with negative "
             "generators) in napari-cdd-dehaze, from two unpaired folders: degraded images and clean images of other "
             "scenes.", "",
             f"* Input and output: float32, batch 1, {c.channels} channel(s), {size[0]} × {size[1]} pixels, values "
             "in [0, 1] (divide 8-bit data by 255, 16-bit by 65535).",
             f"* Network: ResNet generator, width {c.width}, {c.blocks} residual blocks, output {c.output!r}.",
             "* The graph pads to a multiple of 4, runs the network and its composition (transmission and airlight "
             "of the scattering model for a dehazer), and clamps to [0, 1]. A model with a working scale estimates "
             f"the haze on a copy of the input shrunk to {c.estimate_size} pixels." if c.estimate_size else
             "* The graph pads to a multiple of 4, runs the network at full resolution and clamps to [0, 1].",
             "", "Provenance: " + ", ".join(f"{k} {v}" for k, v in provenance.items()), ""]
    return "\n".join(lines)
