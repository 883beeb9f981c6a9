"""Metrics on hand-checkable cases; `cdd-dehaze eval` end to end; `apply --method`."""
import json

import numpy as np
import pytest
import torch
from conftest import to_u8

from napari_cdd_dehaze.cli import main
from napari_cdd_dehaze.gan.checkpoint import save_restorer
from napari_cdd_dehaze.gan.networks import GeneratorConfig, ResnetGenerator
from napari_cdd_dehaze.imaging import metrics
from napari_cdd_dehaze.imaging.synthesis import add_haze, ramp_depth
from napari_cdd_dehaze.io.image_files import read_image, write_image


def test_psnr_of_a_known_error_and_of_identical_images():
    clear = np.zeros((8, 10, 3))
    assert metrics.psnr(clear, clear + 0.1) == pytest.approx(20.0)  # MSE 0.01 → 10·log10(1/0.01)
    assert metrics.psnr(clear, clear + 0.01) == pytest.approx(40.0)
    assert metrics.psnr(clear, clear) == metrics.PSNR_CAP_DB == 100.0  # infinite, reported at the cap
    assert metrics.psnr(clear[..., 0], clear[..., 0] + 0.1) == pytest.approx(20.0)  # grey as R = G = B


def test_ssim_and_ciede2000_on_hand_checkable_images():
    from skimage.color import lab2rgb

    rng = np.random.default_rng(0)
    image = rng.random((32, 32, 3))
    assert metrics.ssim(image, image) == pytest.approx(1.0)
    assert metrics.ssim(image, np.full_like(image, image.mean())) < 0.05  # structure gone
    assert metrics.ciede2000(image, image) == pytest.approx(0.0, abs=1e-9)
    # two neutral greys at L* 45 and 55: around L* 50 the lightness weight S_L is 1, so ΔE00 = ΔL* = 10
    dark, light = (np.broadcast_to(lab2rgb(np.array([[[lightness, 0.0, 0.0]]])), (16, 16, 3)) for lightness in (45, 55))
    assert metrics.ciede2000(dark, light) == pytest.approx(10.0, abs=0.05)


def test_mean_dark_channel_measures_haze(photos):
    assert metrics.mean_dark_channel(np.dstack([np.full((20, 20), v) for v in (0.6, 0.3, 0.9)])) == pytest.approx(0.3)
    clear = photos["chelsea"][::4, ::4]
    hazy = add_haze(clear, ramp_depth(clear.shape[:2]), beta=1.5)
    assert metrics.mean_dark_channel(hazy) > metrics.mean_dark_channel(clear) + 0.2


def test_metrics_refuse_images_of_different_sizes():
    with pytest.raises(ValueError, match="differ in size"):
        metrics.psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))


# -------------------------------------------------------------------------------------------- eval
@pytest.fixture
def eval_folders(tmp_path, photos):
    """paired/: 2 pairs (one clear image 2 px larger), an unmatched file, a text file; unpaired/: 2 hazy + 1 corrupt."""
    paired, unpaired = tmp_path / "paired", tmp_path / "unpaired"
    for i, name in enumerate(("astronaut", "coffee")):
        clear = photos[name][::6, ::6]
        hazy = add_haze(clear, ramp_depth(clear.shape[:2], 0.3, 1.2), beta=1.5, airlight=0.85)
        write_image(paired / "hazy" / f"{name}.png", to_u8(hazy[:-2] if i == 1 else hazy))
        write_image(paired / "clear" / (f"{name}.jpg" if i == 0 else f"{name}.png"), to_u8(clear))
    write_image(paired / "hazy" / "lonely.png", to_u8(clear))
    (paired / "clear" / "notes.txt").write_text("not an image")
    for name in ("rocket", "chelsea"):
        clear = photos[name][::6, ::6]
        write_image(unpaired / "sub" / f"{name}.png", to_u8(add_haze(clear, ramp_depth(clear.shape[:2]), 1.5)))
    (unpaired / "broken.png").write_bytes(b"\x89PNG but not really")
    return paired, unpaired


def test_eval_end_to_end(eval_folders, tmp_path, capsys):
    paired, unpaired = eval_folders
    out = tmp_path / "report"
    code = main(["eval", "--paired", str(paired), "--unpaired", str(unpaired), "--method", "identity", "dcp",
                 "no-such-model", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1  # one method and one image failed; everything else ran
    report = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()
    assert list(report["methods"]) == ["identity", "dcp"] and "no-such-model" in report["method_errors"]

    paired_set, unpaired_set = report["sets"]
    assert paired_set["images"] == ["astronaut.png", "coffee.png"]
    identity, dcp = paired_set["per_image"]["identity"], paired_set["per_image"]["dcp"]
    # identity scores are those of the hazy file itself against the clear file (cropped to the common size)
    hazy = read_image(paired / "hazy" / "coffee.png") / 255.0
    clear = read_image(paired / "clear" / "coffee.png")[:-2] / 255.0
    assert identity["coffee.png"]["psnr"] == pytest.approx(metrics.psnr(clear, hazy), abs=1e-4)
    for image in paired_set["images"]:
        assert dcp[image]["psnr"] > identity[image]["psnr"] + 2
        assert dcp[image]["ciede2000"] < identity[image]["ciede2000"]
        assert 0 < identity[image]["ssim"] < dcp[image]["ssim"] <= 1
    assert any("cropped" in n and "coffee.png" in n for n in paired_set["notes"])
    assert any("lonely.png" in n and "no partner" in n for n in paired_set["notes"])
    assert any("notes.txt" in n for n in paired_set["notes"])

    assert unpaired_set["images"] == ["sub/chelsea.png", "sub/rocket.png"]
    assert any("broken.png" in e for e in unpaired_set["errors"])
    for image in unpaired_set["images"]:
        row = unpaired_set["per_image"]["dcp"][image]
        assert row["dark_channel_out"] < row["dark_channel_in"] - 0.1
        assert unpaired_set["per_image"]["identity"][image]["dark_channel_out"] == pytest.approx(
            row["dark_channel_in"], abs=1e-4)
    means = paired_set["means"]["dcp"]
    assert means["psnr"] == pytest.approx(np.mean([dcp[i]["psnr"] for i in paired_set["images"]]), abs=1e-4)

    # the summary (printed and in the Markdown): methods as rows, sets as columns
    summary = captured.out
    assert "| method | paired (2, paired) | unpaired (2, unpaired) |" in summary
    assert summary.count("\n| identity |") == 1 and summary.count("\n| dcp |") == 1
    assert summary.strip() in markdown and "no-such-model" in markdown and "broken.png" in markdown
    assert "no-such-model" in captured.err


def test_eval_runs_a_learned_model_from_a_file(eval_folders, tmp_path):
    torch.manual_seed(0)
    model = save_restorer(tmp_path / "tiny.safetensors", ResnetGenerator(GeneratorConfig(width=4, blocks=1)))
    paired, _ = eval_folders
    assert main(["eval", "--paired", str(paired), "--method", str(model), "--out", str(tmp_path / "r"),
                 "--device", "cpu", "--tile", "64"]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert "width 4" in report["methods"][str(model)]
    assert len(report["sets"][0]["per_image"][str(model)]) == 2


@pytest.mark.parametrize("args,message", [
    (["--method", "no-such-model", "--unpaired", "EXISTING"], "no method could be loaded"),
    (["--method", "dcp", "--paired", "MISSING"], "no such folder"),
    (["--method", "dcp"], "at least one paired or unpaired folder")])
def test_eval_bad_arguments_give_one_line_and_exit_2(tmp_path, capsys, args, message):
    args = [str(tmp_path / "missing") if a == "MISSING" else str(tmp_path) if a == "EXISTING" else a for a in args]
    assert main(["eval", *args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_apply_with_a_builtin_method(tmp_path, photos, capsys):
    clear = photos["coffee"][::8, ::8]
    write_image(tmp_path / "hazy.png", to_u8(add_haze(clear, ramp_depth(clear.shape[:2]), 1.5)))
    assert main(["apply", str(tmp_path / "hazy.png"), "--out", str(tmp_path / "o"), "--method", "dcp"]) == 0
    restored, hazy = read_image(tmp_path / "o" / "hazy.png"), read_image(tmp_path / "hazy.png")
    assert restored.shape == hazy.shape and restored.dtype == np.uint8
    assert metrics.psnr(clear, restored / 255.0) > metrics.psnr(clear, hazy / 255.0) + 2
    assert main(["apply", str(tmp_path / "hazy.png"), "--out", str(tmp_path / "o"), "--model", "cap"]) == 0
    assert main(["apply", str(tmp_path / "hazy.png"), "--out", str(tmp_path / "o"), "--model", "cap",
                 "--method", "dcp"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["apply", str(tmp_path / "hazy.png"), "--out", str(tmp_path / "o"), "--model", "default"]) == 0
    restored = read_image(tmp_path / "o" / "hazy.png")  # the bundled model lifts the veil too
    assert restored.shape == hazy.shape
    assert metrics.psnr(clear, restored / 255.0) > metrics.psnr(clear, hazy / 255.0) + 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_eval_with_an_absent_device_stops_before_running(eval_folders, tmp_path, capsys):
    model = save_restorer(tmp_path / "tiny.safetensors", ResnetGenerator(GeneratorConfig(width=4, blocks=1)))
    paired, _ = eval_folders
    assert main(["eval", "--paired", str(paired), "--method", str(model), "--out", str(tmp_path / "r"),
                 "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err and not (tmp_path / "r").exists()
