"""Data-parallel training under torchrun (gloo on CPU): replicas stay identical, R ranks × batch b is one process
with batch R·b, and checkpoints move between world sizes."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config

from napari_cdd_dehaze.gan.checkpoint import MODEL_FILE, list_checkpoints, read_safetensors
from napari_cdd_dehaze.gan.data import ImageFolder, UnpairedBatches
from napari_cdd_dehaze.gan.distributed import SINGLE
from napari_cdd_dehaze.gan.methods import build_method
from napari_cdd_dehaze.gan.trainer import Trainer

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "training" / "train.py"
# Adam's first steps move each weight by about lr·g/|g|, so a weight whose gradient is near zero can differ by up to
# ~lr between two float orders of summation; everything else agrees to float rounding. Compare to a fraction of lr.
LR = tiny_config().lr


def _biases_cancelled_by_a_norm() -> set[str]:
    """Biases of convolutions followed by InstanceNorm: the norm subtracts them, so their exact gradient is 0 and
    Adam moves them by ±lr at the sign of rounding noise — different noise in any other summation order."""
    method = build_method(tiny_config())
    names = set()
    for prefix, module in method.named_modules():
        if isinstance(module, torch.nn.Sequential):
            for i, (a, b) in enumerate(zip(module, list(module)[1:], strict=False)):
                if isinstance(a, torch.nn.Conv2d) and isinstance(b, torch.nn.InstanceNorm2d):
                    names.add(f"{prefix}.{i}.bias")
    return names


def _torchrun(processes: int, recipe: dict, folders, out: Path, tmp_path: Path, *extra: str) -> str:
    config = tmp_path / f"recipe-{out.name}.yaml"
    config.write_text(yaml.safe_dump(recipe))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(SCRIPT), "--config", str(config), "--degraded", str(folders[0]), "--clean", str(folders[1]),
               "--out", str(out), "--log-every", "1", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(checkpoint / MODEL_FILE)[0]


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest difference of any weight, except the biases whose gradient is rounding noise."""
    assert a.keys() == b.keys()
    noise = _biases_cancelled_by_a_norm()
    assert any(k.endswith(n) for k in a for n in noise)  # the names found are the names saved
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a
               if a[k].dtype.is_floating_point and not any(k.endswith(n) for n in noise))


def _csv_rows(run: Path) -> list[dict[str, float]]:
    lines = (run / "losses.csv").read_text().splitlines()
    names = lines[0].split(",")
    return [dict(zip(names, map(float, line.split(",")), strict=False)) for line in lines[1:]]


def test_two_processes_train_identical_replicas_and_rank_zero_writes_one_checkpoint(unpaired_folders, tmp_path):
    recipe = tiny_config(steps=3, checkpoint_every=100, device="cpu").to_dict()
    out = tmp_path / "run"
    stdout = _torchrun(2, recipe, unpaired_folders, out, tmp_path, "--check-sync", "1")
    # after every step, every tensor of every network (momentum heads and EMA restorer included) hashes the same
    assert [f"step {s}: weights identical on 2 rank(s)" in stdout for s in (1, 2, 3)] == [True] * 3
    assert stdout.count("finished at step 3") == 1  # only rank 0 talks
    assert [p.name for p in list_checkpoints(out)] == ["step_0000003"]
    meta = json.loads((out / "checkpoints/step_0000003/meta.json").read_text())
    assert meta["world_size"] == 2 and meta["global_batch"] == 2
    assert [row["step"] for row in _csv_rows(out)] == [1, 2, 3]  # one writer, no interleaved rows
    assert not list((out / "checkpoints").glob(".*"))  # no temporary folders left behind


def test_a_time_budget_ends_every_rank_at_the_same_step(unpaired_folders, tmp_path):
    """Each rank reads its own clock; they agree on the step the budget ends at, or the run would hang."""
    recipe = tiny_config(steps=100_000, minutes=0.05, checkpoint_every=100_000, device="cpu").to_dict()
    out = tmp_path / "run"
    stdout = _torchrun(2, recipe, unpaired_folders, out, tmp_path, "--check-sync", "1")
    assert stdout.count("(time budget of 0.05 min reached)") == 1
    (checkpoint,) = list_checkpoints(out)
    meta = json.loads((checkpoint / "meta.json").read_text())
    assert 1 <= meta["step"] < 100_000 and meta["trained_s"] >= 3
    assert f"step {meta['step']}: weights identical on 2 rank(s)" in stdout


def test_two_ranks_of_batch_one_are_one_rank_of_batch_two_and_resume_on_one_rank(unpaired_folders, tmp_path):
    recipe = tiny_config(steps=2, checkpoint_every=1, keep_checkpoints=2, batch_size=1, device="cpu").to_dict()
    two = tmp_path / "two"
    _torchrun(2, recipe, unpaired_folders, two, tmp_path)
    after_one, after_two = list_checkpoints(two)

    # One process, batch 2, same seed: the same data, patches and noise, so the same first update.
    one = Trainer(tiny_config(steps=1, batch_size=2, device="cpu"), *unpaired_folders, tmp_path / "one")
    one.run()
    assert _max_difference(_weights(after_one), _weights(list_checkpoints(tmp_path / "one")[-1])) < 0.05 * LR
    assert _csv_rows(two)[0]["generators"] == pytest.approx(one.last_losses["generators"], rel=1e-5)

    # The 2-rank checkpoint of step 1 resumed on one rank with batch 2 continues the very same run.
    resumed_run = tmp_path / "resumed"
    shutil.copytree(after_one, resumed_run / "checkpoints" / after_one.name)
    resumed = Trainer(tiny_config(steps=2, checkpoint_every=1, keep_checkpoints=2, batch_size=2, device="cpu"),
                      *unpaired_folders, resumed_run, resume=True)
    assert resumed.step == 1
    resumed.run()
    assert _max_difference(_weights(after_two), _weights(list_checkpoints(resumed_run)[-1])) < 0.1 * LR


def test_resuming_with_another_global_batch_works_and_warns(unpaired_folders, tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_config(steps=1, batch_size=2), *unpaired_folders, run).run()
    with pytest.warns(UserWarning, match="global batch of 2 with a global batch of 1"):
        resumed = Trainer(tiny_config(steps=2, batch_size=1), *unpaired_folders, run, resume=True)
    assert resumed.run().step == 2


def test_a_sample_does_not_depend_on_how_the_batch_is_split(unpaired_folders):
    batches = UnpairedBatches(ImageFolder(unpaired_folders[0]), ImageFolder(unpaired_folders[1]), crop=32)
    whole = batches.samples_at(7, 3, range(4))
    parts = [batches.samples_at(7, 3, range(i, i + 1)) for i in range(4)]
    assert torch.equal(whole[0], torch.cat([p[0] for p in parts]))
    assert torch.equal(whole[1], torch.cat([p[1] for p in parts]))
    assert not torch.equal(whole[0], batches.samples_at(7, 4, range(4))[0])  # another step, other crops
    assert not torch.equal(parts[0][0], parts[1][0])  # samples differ within a step


def test_replica_fingerprint_sees_a_single_changed_weight():
    model = torch.nn.Linear(3, 2)
    before = SINGLE.fingerprints(model, torch.device("cpu"))
    with torch.no_grad():
        model.weight[0, 0] = torch.nextafter(model.weight[0, 0], torch.tensor(2.0))
    assert SINGLE.fingerprints(model, torch.device("cpu")) != before


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_saves_and_resumes(unpaired_folders, tmp_path, precision):
    """Plumbing only (CPU): the step runs under autocast and weights stay fp32; bf16 moves them; fp16's scalers
    skip a step whose scaled gradients overflow (this tiny net's generator gradients reach ~1e3, so 2¹⁶ × 1e3 is
    inf in fp16), halve their scale, and are saved and resumed."""
    config = tiny_config(width=4, blocks=1, nce_layers=(0, 4, 8), num_patches=8, steps=1,
                         precision=precision)
    trainer = Trainer(config, *unpaired_folders, tmp_path / "run")
    before = trainer.method.restorer.encoder[1].weight.detach().clone()
    last = trainer.run()
    after = trainer.method.restorer.encoder[1].weight
    assert after.dtype == torch.float32
    assert all(torch.isfinite(torch.tensor(v)) for v in last.losses.values())
    if precision == "bf16":
        assert not torch.equal(before, after)
    else:
        assert torch.equal(before, after) and trainer.scalers["generators"].get_scale() == 2.0 ** 15
    state = torch.load(last.checkpoint / "train_state.pt", weights_only=True)
    assert set(state["scalers"]) == ({"critics", "negatives", "generators"} if precision == "fp16" else set())
    resumed = Trainer(config.replace(steps=2), *unpaired_folders, tmp_path / "run", resume=True)
    if precision == "fp16":
        assert resumed.scalers["generators"].get_scale() == trainer.scalers["generators"].get_scale()
    assert resumed.run().step == 2


def test_a_stop_signal_to_one_rank_stops_all_ranks_at_the_same_step(unpaired_folders, tmp_path):
    """SIGINT to a single worker: the ranks agree (all-reduce) to stop after one step, rank 0 saves, nobody hangs."""
    recipe = tiny_config(steps=10_000, checkpoint_every=10_000, device="cpu").to_dict()
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT),
         "--config", str(tmp_path / "long.yaml"), "--degraded", str(unpaired_folders[0]), "--clean",
         str(unpaired_folders[1]), "--out", str(out), "--log-every", "1000"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "losses.csv").is_file() or len((out / "losses.csv").read_text().splitlines()) < 3:
            assert launcher.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        workers = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True,
                                 check=True).stdout.split()
        assert len(workers) == 2
        os.kill(int(workers[-1]), signal.SIGINT)  # one rank only
        stdout, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, stderr[-3000:]
    stopped = [line for line in stdout.splitlines() if line.startswith("stopped at step")]
    assert len(stopped) == 1
    step = int(stopped[0].split()[3].rstrip(":"))
    assert [p.name for p in list_checkpoints(out)] == [f"step_{step:07d}"]
    assert len(_csv_rows(out)) == step < 10_000
