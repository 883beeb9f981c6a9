"""Checkpoints: bitwise round trip, atomic under a crash, exact resume, clear errors."""
import json

import pytest
import torch
from conftest import tiny_config
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from napari_cdd_dehaze.gan import checkpoint as ckpt
from napari_cdd_dehaze.gan.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_restorer,
    save_restorer,
)
from napari_cdd_dehaze.gan.networks import GeneratorConfig, ResnetGenerator
from napari_cdd_dehaze.gan.trainer import Trainer, resume_config


def _trainer(folders, run, **changes):
    return Trainer(tiny_config(**changes), *folders, run)


def test_round_trip_is_bitwise(unpaired_folders, tmp_path):
    t = _trainer(unpaired_folders, tmp_path / "run", steps=2, checkpoint_every=100)
    last = t.run()
    assert last.kind == "finished" and last.checkpoint == latest_checkpoint(tmp_path / "run")
    resumed = Trainer(None, *unpaired_folders, tmp_path / "run", resume=True)
    assert resumed.step == 2
    for (name, a), b in zip(t.method.state_dict().items(), resumed.method.state_dict().values(), strict=False):
        assert torch.equal(a, b), name
    # the shipped model file holds the EMA restorer and rebuilds itself from its metadata
    restorer = load_restorer(tmp_path / "run" / "restorer.safetensors")
    for a, b in zip(restorer.state_dict().values(), t.method.ema_restorer.state_dict().values(), strict=False):
        assert torch.equal(a, b)


def test_resume_equals_an_uninterrupted_run(unpaired_folders, tmp_path):
    straight = _trainer(unpaired_folders, tmp_path / "a", steps=4, checkpoint_every=100)
    straight.run()

    first = _trainer(unpaired_folders, tmp_path / "b", steps=4, checkpoint_every=100)
    for event in first.events():
        if event.step == 2 and event.kind == "step":
            first.request_stop()
    assert latest_checkpoint(tmp_path / "b").name == "step_0000002"
    second = Trainer(None, *unpaired_folders, tmp_path / "b", resume=True)
    assert second.step == 2
    last = second.run()
    assert last.step == 4
    for (name, a), b in zip(straight.method.state_dict().items(), second.method.state_dict().values(), strict=False):
        assert torch.equal(a, b), name
    lr_a = straight.optimisers["generators"].param_groups[0]["lr"]
    assert second.optimisers["generators"].param_groups[0]["lr"] == lr_a


def test_a_fixed_seed_repeats_and_another_seed_differs(unpaired_folders, tmp_path):
    runs = [_trainer(unpaired_folders, tmp_path / str(i), steps=2, seed=s, checkpoint_every=100)
            for i, s in enumerate([3, 3, 4])]
    for r in runs:
        r.run()
    w = [r.method.restorer.encoder[1].weight for r in runs]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])


def test_stop_saves_a_checkpoint_and_says_so(unpaired_folders, tmp_path):
    t = _trainer(unpaired_folders, tmp_path / "run", steps=50, checkpoint_every=100)
    t.request_stop()
    last = t.run()
    assert last.kind == "stopped" and last.step == 0 and last.checkpoint.is_dir()


def test_a_crash_mid_save_keeps_the_last_good_checkpoint(unpaired_folders, tmp_path, monkeypatch):
    run = tmp_path / "run"
    t = _trainer(unpaired_folders, run, steps=1, checkpoint_every=100)
    t.run()
    good = latest_checkpoint(run)
    t.config.steps, t.step = 2, 1

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(ckpt.torch, "save", crash)  # dies after the weights and meta were written
    with pytest.raises(OSError, match="simulated"):
        t.save()
    monkeypatch.undo()
    assert list_checkpoints(run) == [good]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]  # no debris left
    assert Trainer(None, *unpaired_folders, run, resume=True).step == 1


def test_checkpoints_are_pruned_and_meta_is_readable(unpaired_folders, tmp_path):
    t = _trainer(unpaired_folders, tmp_path / "run", steps=6, checkpoint_every=1, keep_checkpoints=2)
    events = [e for e in t.events() if e.kind != "step"]
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6]
    names = [p.name for p in list_checkpoints(tmp_path / "run")]
    assert names == ["step_0000005", "step_0000006"]
    meta = json.loads((tmp_path / "run/checkpoints/step_0000006/meta.json").read_text())
    assert meta["step"] == 6 and meta["method"] == "cdd-gan" and meta["config"]["width"] == 8
    assert set(meta["losses"]) >= {"gan", "nce", "cycle", "identity"}


def test_progress_events_carry_rate_eta_and_losses(unpaired_folders, tmp_path):
    seen = []
    _trainer(unpaired_folders, tmp_path / "run", steps=3, checkpoint_every=100).run(seen.append)
    steps = [e for e in seen if e.kind == "step"]
    assert [e.step for e in steps] == [1, 2, 3] and all(e.total == 3 for e in steps)
    assert all(e.steps_per_s > 0 and e.eta_s >= 0 and "nce" in e.losses for e in steps)
    assert seen[-1].kind == "finished"


def test_corrupt_and_wrong_shape_checkpoints_say_what_is_wrong(unpaired_folders, tmp_path):
    run = tmp_path / "run"
    _trainer(unpaired_folders, run, steps=1, checkpoint_every=100).run()
    model = latest_checkpoint(run) / "model.safetensors"
    # a network of a different width cannot take these weights
    wider = Trainer(tiny_config(width=16), *unpaired_folders, tmp_path / "wider")
    with pytest.raises(CheckpointError, match="wrong shape.*width"):
        ckpt.load_weights(wider.method, ckpt.read_safetensors(model)[0], model, strict=False)
    # a truncated file
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        Trainer(None, *unpaired_folders, run, resume=True)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Trainer(None, *unpaired_folders, tmp_path / "empty", resume=True)
    (latest_checkpoint(run) / "train_state.pt").write_bytes(b"junk")
    model.write_bytes(data)
    with pytest.raises(CheckpointError, match="corrupt training state"):
        Trainer(None, *unpaired_folders, run, resume=True)


def test_resume_may_extend_a_run_but_not_change_it(unpaired_folders, tmp_path):
    run = tmp_path / "run"
    _trainer(unpaired_folders, run, steps=1, checkpoint_every=100).run()
    longer = Trainer(resume_config(run, steps=2), *unpaired_folders, run, resume=True)
    assert longer.run().step == 2
    with pytest.raises(CheckpointError, match="width"):
        Trainer(tiny_config(width=16, steps=3), *unpaired_folders, run, resume=True)
    with pytest.raises(ValueError, match="can change only"):
        resume_config(run, lr=1.0)


def test_init_from_a_restorer_file_finetunes_with_fresh_optimisers(unpaired_folders, tmp_path):
    run = tmp_path / "run"
    first = _trainer(unpaired_folders, run, steps=1, checkpoint_every=100)
    first.run()
    tuned = Trainer(tiny_config(), *unpaired_folders, tmp_path / "tuned", init_from=run / "restorer.safetensors")
    assert tuned.step == 0
    assert torch.equal(tuned.method.restorer.encoder[1].weight, first.method.ema_restorer.encoder[1].weight)


def test_scattering_restorer_round_trips_through_a_run(unpaired_folders, tmp_path):
    degraded, clean = unpaired_folders
    trainer = Trainer(tiny_config(steps=2, output="scattering"), degraded, clean, tmp_path / "run")
    trainer.run()
    assert trainer.method.restorer.config.output == "dehaze" and trainer.method.degrader.config.output == "haze"
    for source in (tmp_path / "run", tmp_path / "run" / "restorer.safetensors"):
        restorer = load_restorer(source)
        assert restorer.config.output == "dehaze"
        x = torch.rand(1, 3, 32, 32) * 2 - 1
        with torch.no_grad():
            assert torch.allclose(restorer(x), trainer.method.shipped_restorer().eval()(x), atol=1e-6)


def test_rain_head_run_round_trips_and_finetunes_with_its_head(rainy_folders, tmp_path):
    trainer = Trainer(tiny_config(method="dcd-gan", steps=1, output="rain"), *rainy_folders, tmp_path / "run")
    trainer.run()
    assert trainer.method.restorer.config.output == "derain" and trainer.method.degrader.config.output == "rain"
    assert load_restorer(tmp_path / "run" / "restorer.safetensors").config.output == "derain"
    tuned = Trainer(tiny_config(method="dcd-gan", output="image"), *rainy_folders, tmp_path / "tuned",
                    init_from=tmp_path / "run" / "restorer.safetensors")
    assert tuned.config.output == "rain"


def test_finetuning_takes_the_network_of_the_model_it_starts_from(unpaired_folders, tmp_path):
    """A scattering-head restorer of width 8 finetuned with a preset that says width 16, image output."""
    trainer = Trainer(tiny_config(steps=1, output="scattering"), *unpaired_folders, tmp_path / "run")
    trainer.run()
    with pytest.warns(UserWarning, match=r"width 8 \(recipe: 16\), output 'scattering' \(recipe: 'image'\)"):
        tuned = Trainer(tiny_config(width=16, output="image", lr=1e-5), *unpaired_folders, tmp_path / "tuned",
                        init_from=tmp_path / "run" / "restorer.safetensors")
    assert (tuned.config.width, tuned.config.output, tuned.config.lr) == (8, "scattering", 1e-5)
    assert torch.equal(tuned.method.restorer.head[1].weight, trainer.method.ema_restorer.head[1].weight)
    bundled = Trainer(tiny_config(), *unpaired_folders, tmp_path / "tuned3", init_from="default")
    assert (bundled.config.width, bundled.config.blocks, bundled.config.output) == (32, 6, "scattering")
    from_checkpoint = Trainer(tiny_config(width=16), *unpaired_folders, tmp_path / "tuned2", init_from=tmp_path / "run")
    assert (from_checkpoint.config.width, from_checkpoint.config.output) == (8, "scattering")


def test_head_options_round_trip_and_older_files_load_without_them(unpaired_folders, tmp_path):
    trainer = Trainer(tiny_config(steps=1, output="scattering", dark_patch=7), *unpaired_folders, tmp_path / "run")
    trainer.run()
    for source in (tmp_path / "run", tmp_path / "run" / "restorer.safetensors"):
        assert load_restorer(source).config.dark_patch == 7
    tuned = Trainer(tiny_config(output="scattering"), *unpaired_folders, tmp_path / "tuned",
                    init_from=tmp_path / "run" / "restorer.safetensors")
    assert tuned.config.dark_patch == 7  # the head of the model it finetunes
    # a restorer file written before the field existed loads, and finetunes, without a dark channel
    plain = Trainer(tiny_config(steps=1, output="scattering"), *unpaired_folders, tmp_path / "plain")
    plain.run()
    tensors = load_file(tmp_path / "plain" / "restorer.safetensors")
    with safe_open(tmp_path / "plain" / "restorer.safetensors", "pt") as f:
        metadata = {k: v for k, v in f.metadata().items() if k != "dark_patch"}
    save_file(tensors, tmp_path / "old.safetensors", metadata=metadata)
    assert load_restorer(tmp_path / "old.safetensors").config.dark_patch == 0
    older = Trainer(tiny_config(output="scattering", dark_patch=7), *unpaired_folders, tmp_path / "t2",
                    init_from=tmp_path / "old.safetensors")
    assert older.config.dark_patch == 0


def test_options_of_earlier_versions_load_when_off_and_are_refused_when_on(tmp_path):
    """A file that still records a retired option loads when the option was off (as in every bundled model) and
    names the option otherwise; the same for a run's saved config."""
    from napari_cdd_dehaze.gan.config import TrainConfig

    g = ResnetGenerator(GeneratorConfig(width=8, blocks=1, output="dehaze"))
    save_restorer(tmp_path / "new.safetensors", g)
    tensors = load_file(tmp_path / "new.safetensors")
    with safe_open(tmp_path / "new.safetensors", "pt") as f:
        metadata = f.metadata()
    save_file(tensors, tmp_path / "off.safetensors",
              metadata=metadata | {"refine": "0", "airlight": "predicted", "dark_target": "0.0"})
    assert load_restorer(tmp_path / "off.safetensors").config == g.config
    save_file(tensors, tmp_path / "on.safetensors", metadata=metadata | {"refine": "5"})
    with pytest.raises(CheckpointError, match="refine='5'.*no longer has"):
        load_restorer(tmp_path / "on.safetensors")
    saved = tiny_config().to_dict()
    assert TrainConfig.from_dict(saved | {"lambda_rehaze": 0.0, "dark_match_statistic": "mean"}) == tiny_config()
    with pytest.raises(ValueError, match="lambda_rehaze=1.0"):
        TrainConfig.from_dict(saved | {"lambda_rehaze": 1.0})
