"""The command line: train, resume, apply, and one-line errors with a non-zero exit on bad input."""
import numpy as np
import pytest

from napari_cdd_dehaze.cli import main
from napari_cdd_dehaze.io.image_files import read_image, write_image

TINY = ["--preset", "paper", "--steps", "2", "--crop", "32", "--checkpoint-every", "1", "--device", "cpu"]


@pytest.fixture
def tiny_paper_preset(monkeypatch):
    """The CLI's presets, shrunk to a test-sized network."""
    from napari_cdd_dehaze.gan import config
    monkeypatch.setitem(config.PRESETS, "paper", dict(width=8, blocks=2, disc_width=8, num_patches=16,
                                                      nce_layers=(0, 4, 8, 11), head_dim=32, noise_dim=8))


def test_train_resume_and_apply(unpaired_folders, tmp_path, tiny_paper_preset, capsys):
    degraded, clean = unpaired_folders
    run = tmp_path / "run"
    assert main(["train", "--degraded", str(degraded), "--clean", str(clean), "--out", str(run), *TINY]) == 0
    assert (run / "restorer.safetensors").is_file()
    assert main(["train", "--degraded", str(degraded), "--clean", str(clean), "--out", str(run), "--resume",
                 "--steps", "3"]) == 0
    assert "from step 2 to 3" in capsys.readouterr().err

    rng = np.random.default_rng(0)
    inputs = {"rgb.png": rng.integers(0, 255, (37, 51, 3), dtype=np.uint8),
              "grey16.tif": rng.integers(0, 65535, (30, 41), dtype=np.uint16),
              "rgba.png": rng.integers(0, 255, (24, 24, 4), dtype=np.uint8),
              "stack.tif": rng.integers(0, 255, (2, 20, 28), dtype=np.uint8),
              "photo.jpg": rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)}
    for name, array in inputs.items():
        write_image(tmp_path / "in" / name, array)
    out = tmp_path / "out"
    files = [str(tmp_path / "in" / n) for n in inputs]
    assert main(["apply", *files, "--out", str(out), "--model", str(run), "--device", "cpu"]) == 0
    for name, array in inputs.items():
        restored = read_image(out / name)
        assert restored.shape == array.shape and restored.dtype == array.dtype, name
    # alpha passes through untouched
    assert np.array_equal(read_image(out / "rgba.png")[..., 3], inputs["rgba.png"][..., 3])


def test_apply_reports_bad_files_and_processes_the_rest(unpaired_folders, tmp_path, tiny_paper_preset, capsys):
    degraded, clean = unpaired_folders
    run = tmp_path / "run"
    main(["train", "--degraded", str(degraded), "--clean", str(clean), "--out", str(run), *TINY])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    write_image(tmp_path / "fine.png", np.zeros((16, 16, 3), np.uint8))
    code = main(["apply", str(tmp_path / "broken.png"), str(tmp_path / "fine.png"), "--out", str(tmp_path / "o"),
                 "--model", str(run)])
    err = capsys.readouterr().err
    assert code == 1 and "broken.png" in err and "1 of 2" in err
    assert (tmp_path / "o" / "fine.png").is_file()


def test_bad_input_gives_one_line_and_non_zero_exit(tmp_path, capsys):
    code = main(["train", "--degraded", str(tmp_path / "missing"), "--clean", str(tmp_path), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "missing" in err and len(err.splitlines()) == 1
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    write_image(tmp_path / "x.png", np.zeros((8, 8), np.uint8))
    code = main(["apply", str(tmp_path / "x.png"), "--out", str(tmp_path / "o"), "--model",
                 str(tmp_path / "bad.safetensors")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "corrupt or truncated" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["train", "--clean", "x"])  # argparse: missing --degraded


def test_synth_haze_writes_unpaired_folders(tmp_path):
    assert main(["synth-haze", str(tmp_path / "demo")]) == 0
    for sub in ("degraded", "clean", "test/hazy", "test/clear"):
        assert any((tmp_path / "demo" / sub).glob("*.png"))


def test_ctrl_c_finishes_the_step_and_leaves_a_resumable_checkpoint(unpaired_folders, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    degraded, clean = unpaired_folders
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "napari_cdd_dehaze.cli", "train", "--degraded", str(degraded), "--clean", str(clean),
           "--out", str(run), "--preset", "cpu", "--crop", "32", "--steps", "100000", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    line = ""
    while "training cdd-gan" not in line and time.time() < deadline:
        line = proc.stderr.readline()
    time.sleep(3)  # a few steps
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopped at step" in err
    assert main(["train", "--degraded", str(degraded), "--clean", str(clean), "--out", str(run), "--resume",
                 "--steps", "1"]) == 0  # resumable (already past step 1: finishes at once)


def test_train_until_a_step_then_resume_with_fields_as_options_and_recipe_files(unpaired_folders, tmp_path,
                                                                                 tiny_paper_preset, capsys):
    """The run control of training/train.py: --until stops with a checkpoint, losses.csv has a row per step and a
    resume appends to it; any recipe field is an option, over --config files; a resume changes run control only."""
    from napari_cdd_dehaze.gan.checkpoint import latest_checkpoint, read_meta

    degraded, clean = unpaired_folders
    run = tmp_path / "run"
    (tmp_path / "a.yaml").write_text("lambda_identity: 0.5\nlambda_gan: 3.0\n")
    (tmp_path / "b.yaml").write_text("lambda_gan: 2.0\n")
    base = ["train", "--degraded", str(degraded), "--clean", str(clean), "--out", str(run)]
    assert main([*base, *TINY, "--steps", "4", "--checkpoint-every", "3", "--until", "2", "--config",
                 str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"), "--nce-layers", "0,4,8", "--lambda-cycle",
                 "5"]) == 0
    assert "stopped at step 2" in capsys.readouterr().err
    assert latest_checkpoint(run).name == "step_0000002" and (run / "restorer.safetensors").is_file()
    saved = read_meta(latest_checkpoint(run))["config"]
    assert (saved["steps"], saved["lambda_gan"], saved["lambda_identity"], saved["lambda_cycle"],
            saved["nce_layers"], saved["width"]) == (4, 2.0, 0.5, 5.0, [0, 4, 8], 8)
    rows = (run / "losses.csv").read_text().splitlines()
    assert rows[0].startswith("step,seconds,lr,steps_per_s,critics,") and len(rows) == 1 + 2

    assert main([*base, "--resume", "--lr", "1e-3"]) == 2  # not run control: refused, not dropped
    assert "can change only" in capsys.readouterr().err
    assert main([*base, "--resume", "--lambda-cycle", "5"]) == 0  # the value it has is no change
    assert "finished at step 4" in capsys.readouterr().err
    assert [r.split(",")[0] for r in (run / "losses.csv").read_text().splitlines()[1:]] == ["1", "2", "3", "4"]


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("shape", [(300, 400, 3), (300, 400, 4), (2, 120, 160)])
def test_tiffs_are_restored_window_by_window_and_match_in_memory(unpaired_folders, tmp_path, tiny_paper_preset,
                                                                  shape, compression):
    import tifffile

    from napari_cdd_dehaze.gan.checkpoint import load_restorer
    from napari_cdd_dehaze.restore.engine import RestoreOptions, restore_array

    degraded, clean = unpaired_folders
    run = tmp_path / "run"
    main(["train", "--degraded", str(degraded), "--clean", str(clean), "--out", str(run), *TINY])
    image = np.random.default_rng(0).integers(0, 65535, size=shape, dtype=np.uint16)
    photometric = "rgb" if shape[-1] in (3, 4) else "minisblack"
    tifffile.imwrite(tmp_path / "big.tif", image, photometric=photometric, compression=compression,
                     extrasamples=["unassalpha"] if shape[-1] == 4 else None)
    assert isinstance(read_image(tmp_path / "big.tif", memory_map=True), np.memmap) == (compression is None)
    assert main(["apply", str(tmp_path / "big.tif"), "--out", str(tmp_path / "o"), "--model", str(run),
                 "--tile", "64", "--device", "cpu"]) == 0
    restored = read_image(tmp_path / "o" / "big.tif")
    valid = image[..., -1] != 0 if shape[-1] == 4 else None  # declared alpha: its 0 pixels are nodata
    expected = restore_array(load_restorer(run), image, RestoreOptions(device="cpu", tile=64), valid=valid)
    assert restored.shape == shape and np.array_equal(restored, expected)
    assert not list((tmp_path / "o").glob(".*"))  # no temporary files left


def test_train_dcd_gan_by_method_argument_and_apply(rainy_folders, tmp_path, monkeypatch, capsys):
    from napari_cdd_dehaze.gan import config
    from napari_cdd_dehaze.gan.checkpoint import latest_checkpoint, read_meta
    tiny = {"width": 8, "blocks": 2, "disc_width": 8, "num_patches": 16, "nce_layers": (0, 4, 8, 11), "head_dim": 32,
            "load_size": 0}
    monkeypatch.setitem(config.DCD_PRESETS, "paper", {**config.DCD_PRESETS["paper"], **tiny})
    degraded, clean = rainy_folders
    run = tmp_path / "run"
    assert main(["train", "--method", "dcd-gan", "--degraded", str(degraded), "--clean", str(clean),
                 "--out", str(run), *TINY]) == 0
    assert "training dcd-gan" in capsys.readouterr().err
    assert read_meta(latest_checkpoint(run))["config"]["gan_mode"] == "hinge"
    code = main(["train", "--method", "cdd-gan", "--degraded", str(degraded), "--clean", str(clean),
                 "--out", str(run), "--resume", "--steps", "3"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "holds a dcd-gan run" in err and len(err.splitlines()) == 1
    write_image(tmp_path / "rainy.png", read_image(next(degraded.glob("*.png"))))
    assert main(["apply", str(tmp_path / "rainy.png"), "--out", str(tmp_path / "out"), "--model", str(run)]) == 0
    assert read_image(tmp_path / "out" / "rainy.png").shape == read_image(tmp_path / "rainy.png").shape


def test_synth_rain_writes_unpaired_folders(tmp_path):
    assert main(["synth-rain", str(tmp_path / "demo")]) == 0
    for sub in ("degraded", "clean", "test/rainy", "test/clear"):
        assert any((tmp_path / "demo" / sub).glob("*.png"))


def test_demo_restores_the_hazy_sample_with_the_default_model_and_baselines(tmp_path, capsys):
    """The README's first command: no input, no display; a picture and one PSNR per method."""
    assert main(["demo", "--out", str(tmp_path / "demo.png"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    scores = {line.split(":")[0]: float(line.split("PSNR ")[1].split(" dB")[0])
              for line in err.splitlines() if "PSNR" in line}
    assert set(scores) == {"dark channel prior", "colour atten. prior", "default model (CDD-GAN)"}
    assert all(10 < s < 60 for s in scores.values())
    picture = read_image(tmp_path / "demo.png")
    assert picture.ndim == 3 and picture.shape[1] > 4 * picture.shape[0]  # one row of five panels


def test_info_says_what_a_model_is_and_how_it_runs(capsys):
    from napari_cdd_dehaze.cli import main

    assert main(["info", "default", "cap"]) == 0
    out = capsys.readouterr().out
    assert "width 32, 6 residual blocks" in out and "estimate_size: 128" in out and "airlight_floor: 3" in out
    assert "step 2600" in out and "colour attenuation prior" in out
    assert main(["info", "no/such/model"]) == 2


def test_finetune_the_bundled_model_for_a_time_budget_then_extend_it(unpaired_folders, tmp_path, capsys):
    from napari_cdd_dehaze.gan.checkpoint import latest_checkpoint, load_restorer, read_meta
    from napari_cdd_dehaze.gan.run_card import CARD_FILE

    degraded, clean = unpaired_folders
    run = tmp_path / "finetuned"
    base = ["train", "--degraded", str(degraded), "--clean", str(clean), "--out", str(run), "--device", "cpu"]
    # --init alone picks the finetune preset; the budget, not the 2000 steps, ends the run
    assert main([*base, "--init", "default", "--minutes", "0.05"]) == 0
    meta = read_meta(latest_checkpoint(run))
    first = meta["step"]
    assert 1 <= first < 2000 and meta["trained_s"] >= 3 and meta["config"]["decay_from"] == 1.0
    assert load_restorer(run).config.output == "dehaze"
    card = (run / CARD_FILE).read_text()
    assert "default (the bundled dehazing model)" in card and f"| steps | {first} of 2000, budget 0.05 min |" in card
    assert "4 in" in card  # the image counts of both folders
    # a resumed run keeps its time so far and trains until the new budget
    budget = round(meta["trained_s"] / 60 + 0.05, 3)
    assert main([*base, "--resume", "--minutes", str(budget)]) == 0
    resumed = read_meta(latest_checkpoint(run))
    assert resumed["step"] > first and resumed["trained_s"] >= budget * 60
    assert resumed["start_model"].startswith("default")
    err = capsys.readouterr().err
    assert f"time budget: {budget:g} min" in err and f"(time budget of {budget:g} min reached)" in err


def test_the_finetune_preset_starts_from_the_bundled_model_of_its_method(unpaired_folders, rainy_folders, tmp_path,
                                                                        capsys):
    from napari_cdd_dehaze.gan.checkpoint import bundled_model_available, read_meta

    for method, folders, bundled in (("cdd-gan", unpaired_folders, "default"), ("dcd-gan", rainy_folders, "derain")):
        base = ["train", "--degraded", str(folders[0]), "--clean", str(folders[1]), "--device", "cpu",
                "--preset", "finetune", "--method", method]
        if not bundled_model_available(bundled):  # no derainer is bundled yet: said, and nothing starts
            assert main([*base, "--out", str(tmp_path / method), "--steps", "1"]) == 2
            assert "give --init" in capsys.readouterr().err and not (tmp_path / method).exists()
            continue
        assert main([*base, "--out", str(tmp_path / method), "--steps", "1"]) == 0
        assert f"finetuning the bundled {bundled} model" in capsys.readouterr().err
        assert read_meta(tmp_path / method / "checkpoints" / "step_0000001")["start_model"].startswith(bundled)
