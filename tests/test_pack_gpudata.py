"""benchmarks/pack_gpudata.py shrinks a training set to travel to a GPU lease, keeps val/ as it is, skips bad files."""
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "pack_gpudata.py"


def noise_png(path: Path, shape: tuple[int, ...], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(path)


def test_pack_shrinks_training_images_and_copies_validation(tmp_path):
    data = tmp_path / "set"
    noise_png(data / "degraded" / "a.png", (300, 800, 3), 0)
    noise_png(data / "degraded" / "sub" / "b.png", (120, 90), 1)  # grey, already small: kept at its size
    noise_png(data / "clean" / "c.png", (700, 400, 3), 2)
    (data / "clean" / "broken.png").write_bytes(b"not an image")
    for part in ("hazy", "clear"):
        noise_png(data / "val" / part / "v.png", (200, 260, 3), 3)
    out = tmp_path / "packed"
    run = subprocess.run([sys.executable, str(SCRIPT), str(data), str(out), "--side", "256"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "degraded: 2 images packed, 0 skipped" in run.stdout
    assert "clean: 1 images packed, 1 skipped" in run.stdout and "broken.png" in run.stderr
    sizes = {p.relative_to(out).as_posix(): Image.open(p).size for p in out.rglob("*.jpg")}
    assert sizes == {"degraded/a.jpg": (256, 96), "degraded/sub/b.jpg": (90, 120), "clean/c.jpg": (146, 256)}
    assert all(Image.open(p).mode == "RGB" for p in out.rglob("*.jpg"))
    for part in ("hazy", "clear"):  # validation pairs travel byte for byte
        assert (out / "val" / part / "v.png").read_bytes() == (data / "val" / part / "v.png").read_bytes()
    # the packed picture is the photo shrunk, not another: its mean colour survives the shrink and the JPEG
    original = np.asarray(Image.open(data / "clean" / "c.png"), dtype=float).mean(axis=(0, 1))
    packed = np.asarray(Image.open(out / "clean" / "c.jpg"), dtype=float).mean(axis=(0, 1))
    assert np.abs(original - packed).max() < 2


def test_pack_refuses_a_set_too_large_or_without_its_folders(tmp_path):
    data = tmp_path / "set"
    noise_png(data / "degraded" / "a.png", (64, 64, 3), 0)
    noise_png(data / "clean" / "c.png", (64, 64, 3), 1)
    too_large = subprocess.run([sys.executable, str(SCRIPT), str(data), str(tmp_path / "p"), "--limit-mb", "0.001"],
                               capture_output=True, text=True)
    assert too_large.returncode == 1 and "too large to carry" in too_large.stderr
    missing = subprocess.run([sys.executable, str(SCRIPT), str(data / "degraded"), str(tmp_path / "q")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "expected degraded/ and clean/" in missing.stderr
    pack_into = [sys.executable, str(SCRIPT), str(data)]
    for _ in range(2):  # the second run replaces the first one's pack
        assert subprocess.run(pack_into + [str(tmp_path / "r")], capture_output=True).returncode == 0
    not_a_pack = subprocess.run(pack_into + [str(data)], capture_output=True, text=True)
    assert not_a_pack.returncode == 2 and "was not written by this script" in not_a_pack.stderr
    assert (data / "degraded" / "a.png").is_file() and (data / "clean" / "c.png").is_file()  # nothing lost
