"""The training configuration: every field declared once, in one concern, and the generator's taken from it."""
import dataclasses

import pytest

from napari_cdd_dehaze.gan.config import GROUPS, PRESETS, TrainConfig, preset
from napari_cdd_dehaze.gan.networks import GeneratorConfig
from napari_cdd_dehaze.gan.trainer import RUN_CONTROL_FIELDS


def test_every_field_has_one_concern_and_the_generator_fields_are_the_model_and_inference_ones():
    fields = dataclasses.fields(TrainConfig)
    assert {f.metadata["group"] for f in fields} == set(GROUPS)
    assert sorted(sum((TrainConfig.fields_of(g) for g in GROUPS), ())) == sorted(f.name for f in fields)
    generator = {f.name: f.default for f in dataclasses.fields(GeneratorConfig)}
    train = {f.name: f.default for f in fields}
    # the generator's fields, with the same defaults (output names the run's pair, not one generator's head)
    assert all(train[name] == default for name, default in generator.items() if name != "output")
    assert set(generator) - {"output"} <= set(TrainConfig.fields_of("model") + TrainConfig.fields_of("inference"))
    assert set(TrainConfig.fields_of("inference")) == {f.name for f in dataclasses.fields(GeneratorConfig)
                                                       if f.metadata.get("restorer_only")}


def test_what_a_resumed_run_may_change_is_declared_at_the_fields():
    assert set(RUN_CONTROL_FIELDS) == {"steps", "minutes", "checkpoint_every", "keep_checkpoints", "device",
                                       "batch_size", "airlight_floor", "guided_upsample"}


def test_the_generators_of_a_run_take_its_fields_and_the_degrader_no_inference_policy():
    config = preset("default")
    restorer, degrader = config.generator_config("restore"), config.generator_config("degrade")
    assert (restorer.output, degrader.output) == ("dehaze", "haze")
    assert (restorer.width, restorer.dark_patch, restorer.estimate_size, restorer.airlight_floor) == (32, 15, 128, 3)
    assert (degrader.width, degrader.dark_patch, degrader.estimate_size, degrader.airlight_floor) == (32, 15, 0, 0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_a_recipe(name):
    config = preset(name)
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_auto_precision_trains_in_bf16_only_where_the_device_computes_it_natively(unpaired_folders, tmp_path,
                                                                                   monkeypatch):
    from conftest import tiny_config

    from napari_cdd_dehaze.gan import trainer as engine

    monkeypatch.setattr(engine, "native_bf16", lambda device: False)
    assert engine.Trainer(tiny_config(precision="auto"), *unpaired_folders, tmp_path / "a").config.precision == "fp32"
    monkeypatch.setattr(engine, "native_bf16", lambda device: True)
    run = engine.Trainer(tiny_config(precision="auto", steps=1), *unpaired_folders, tmp_path / "b")
    assert run.config.precision == "bf16"  # and saved so: the checkpoint says what ran
    run.run()
    assert all(v == v for v in run.last_losses.values())  # a bf16 step gives finite losses


def test_auto_is_the_default_precision_of_training_but_the_bundled_recipe_stays_as_it_ran():
    assert TrainConfig().precision == "auto"
    assert all(preset(name).precision == "auto" for name in ("cpu", "paper", "finetune"))
    assert all(preset(name, method="dcd-gan").precision == "auto" for name in ("cpu", "paper", "finetune"))
    assert preset("default").precision == "fp32"  # the shipped weights trained in fp32


def _loss_curves(config, folders, out) -> dict[str, list[float]]:
    from napari_cdd_dehaze.gan.trainer import Trainer
    rows = [e.losses for e in Trainer(config, *folders, out).events() if e.kind == "step"]
    return {name: [r[name] for r in rows[len(rows) // 2:]] for name in rows[0]}  # the second half of the run


def test_bf16_training_follows_the_fp32_loss_curve_within_the_noise_of_a_seed(unpaired_folders, tmp_path):
    """What lets "auto" pick bf16 for training: from the same start, a bf16 run's losses (means over the second half
    of 60 steps) differ from the fp32 run's by no more than the noise: what another seed moves them by (two other
    seeds), or three standard errors of the difference of the two means."""
    import numpy as np
    from conftest import tiny_config

    def curves(precision, seed):
        config = tiny_config(precision=precision, seed=seed, steps=60, checkpoint_every=1000)
        found = _loss_curves(config, unpaired_folders, tmp_path / f"{precision}{seed}")
        return {name: np.array(values) for name, values in found.items()}

    fp32, bf16 = curves("fp32", 0), curves("bf16", 0)
    others = [curves("fp32", seed) for seed in (1, 2)]
    for name, values in fp32.items():
        seed_gap = max(abs(other[name].mean() - values.mean()) for other in others)
        standard_error = np.sqrt(values.var() / len(values) + bf16[name].var() / len(bf16[name]))
        assert abs(bf16[name].mean() - values.mean()) <= max(seed_gap, 3 * standard_error), name
