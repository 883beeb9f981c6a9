"""ONNX export: the graph restores as restore_array does, without this package's Python code (onnxruntime)."""
import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from napari_cdd_dehaze import RestoreOptions, load_model, restore_array  # noqa: E402
from napari_cdd_dehaze.cli import main  # noqa: E402
from napari_cdd_dehaze.export.onnx import ExportError, export_onnx, parse_size, run_onnx  # noqa: E402
from napari_cdd_dehaze.imaging.metrics import psnr  # noqa: E402
from napari_cdd_dehaze.imaging.synthesis import demo_photos, random_haze  # noqa: E402


def _hazy(height: int, width: int) -> np.ndarray:
    photo = demo_photos()["motorcycle"][:height, :width]
    return np.rint(random_haze(photo, np.random.default_rng(0)).clip(0, 1) * 255).astype(np.uint8)


def test_the_bundled_model_exported_restores_as_restore_array(tmp_path, capsys):
    image = _hazy(384, 512)
    assert main(["export", "--model", "default", "--out", str(tmp_path / "default.onnx"), "--size", "384,512"]) == 0
    assert "wrote" in capsys.readouterr().out
    restored = run_onnx(tmp_path / "default.onnx", image / 255.0)
    got = np.rint(restored.clip(0, 1) * 255).astype(np.uint8)
    want = restore_array(load_model("default"), image, RestoreOptions(device="cpu"))
    assert got.shape == want.shape == image.shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2
    assert psnr(want / 255.0, got / 255.0) >= 45
    metadata = {p.key: p.value for p in onnx.load(str(tmp_path / "default.onnx")).metadata_props}
    assert json.loads(metadata["model_type"]) == "Superresolution" and json.loads(metadata["tiles_overlap"]) == 15
    assert metadata["input_range"] == "[0, 1]" and metadata["channel_order"] == "RGB"
    assert metadata["working_scale"] == "128" and metadata["input_size"] == "384x512"
    provenance = json.loads(metadata["provenance"])
    assert provenance["file"] == "default.safetensors" and len(provenance["sha256"]) == 64


def test_a_square_tile_for_qgis_deepness_is_the_default_of_a_working_scale_model(tmp_path):
    path = export_onnx(load_model("default"), tmp_path / "tile.onnx", overlap_percent=10)
    graph = onnx.load(str(path)).graph
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 512, 512]
    metadata = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props
                if p.key in ("tiles_size", "tile_size", "tiles_overlap")}
    assert metadata == {"tiles_size": 512, "tile_size": 512, "tiles_overlap": 10}


def test_a_full_resolution_model_is_exported_for_any_multiple_of_four(tmp_path):
    import torch

    from napari_cdd_dehaze.gan.networks import GeneratorConfig, ResnetGenerator

    torch.manual_seed(0)
    model = ResnetGenerator(GeneratorConfig(width=8, blocks=2, output="derain")).eval()
    path = export_onnx(model, tmp_path / "derain.onnx")
    for height, width in [(64, 96), (120, 48)]:
        image = np.random.default_rng(height).random((height, width, 3)).astype(np.float32)
        got = run_onnx(path, image)
        want = restore_array(model, image, RestoreOptions(device="cpu", tile=0))
        assert got.shape == image.shape and np.abs(got - want).max() < 1e-4


def test_bad_export_requests_say_what_is_wrong(tmp_path, capsys):
    assert main(["export", "--model", "dcp", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "classical method" in capsys.readouterr().err
    with pytest.raises(ExportError, match="N or H,W"):
        parse_size("a,b")
    assert parse_size("256") == (256, 256) and parse_size("96,128") == (96, 128)


def test_the_bundled_model_as_a_bioimageio_package_passes_bioimageio_core(tmp_path, capsys):
    core = pytest.importorskip("bioimageio.core")
    out = tmp_path / "default.zip"
    assert main(["export", "--model", "default", "--format", "bioimageio", "--out", str(out)]) == 0
    summary = core.test_model(str(out))  # both weight formats reproduce the test output restore_array computed
    assert summary.status == "passed", summary.format()
    names = {d.name for d in summary.details}
    assert {"Reproduce test outputs from test inputs (onnx)",
            "Reproduce test outputs from test inputs (torchscript)"} <= names
    import zipfile

    with zipfile.ZipFile(out) as package:
        files = set(package.namelist())
        rdf = package.read("rdf.yaml").decode()
    assert {"rdf.yaml", "weights.pt", "weights.onnx", "test_input.npy", "test_output.npy", "cover.png",
            "README.md"} <= files
    assert "arxiv.org/abs/2203.07677" in rdf and "BSD-3-Clause" in rdf
