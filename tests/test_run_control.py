"""The run control both shells share: recipe fields as options, recipe files, resume rules, signals, losses.csv."""
import argparse
import dataclasses
import signal
import threading

import pytest
import yaml
from conftest import tiny_config

from napari_cdd_dehaze.gan.checkpoint import list_checkpoints
from napari_cdd_dehaze.gan.config import TrainConfig
from napari_cdd_dehaze.gan.run_control import (
    EXIT_ABORTED,
    LossLog,
    StopOnSignals,
    add_config_arguments,
    add_run_arguments,
    build_config,
    config_overrides,
    load_recipe,
    run,
)
from napari_cdd_dehaze.gan.trainer import Trainer, TrainEvent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    add_config_arguments(parser)
    return parser


def _as_text(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def test_every_config_field_is_an_option_that_reads_its_own_default_back():
    parser = _parser()
    fields = dataclasses.fields(TrainConfig)
    assert config_overrides(parser.parse_args([])) == {}  # nothing given, nothing overridden
    argv = [arg for f in fields for arg in ("--" + f.name.replace("_", "-"), _as_text(f.default))]
    assert config_overrides(parser.parse_args(argv)) == {f.name: f.default for f in fields}
    given = config_overrides(parser.parse_args(["--steps", "300", "--lr", "1e-4", "--nce-layers", "0,4,8",
                                                "--betas", "0.4,0.9", "--gan-mode", "hinge"]))
    assert given == {"steps": 300, "lr": 1e-4, "nce_layers": (0, 4, 8), "betas": (0.4, 0.9), "gan_mode": "hinge"}
    assert type(given["steps"]) is int and type(given["betas"][0]) is float
    with pytest.raises(SystemExit):
        parser.parse_args(["--nce-layers", "0,four"])


def test_a_shells_own_options_are_kept_and_booleans_parse():
    @dataclasses.dataclass
    class Config:
        steps: int = 1
        ema: bool = False
        name: str = "x"

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, choices=[5, 10])  # the shell's own, for the same field
    add_config_arguments(parser, Config)
    args = parser.parse_args(["--steps", "5", "--ema", "yes"])
    assert config_overrides(args, Config) == {"steps": 5, "ema": True}
    assert config_overrides(parser.parse_args(["--ema", "off"]), Config) == {"ema": False}
    with pytest.raises(SystemExit):
        parser.parse_args(["--steps", "7"])  # still the shell's choices
    clashing = argparse.ArgumentParser()
    clashing.add_argument("--name", dest="label")  # same option, another meaning: refused when the parser is built
    with pytest.raises(ValueError, match="--name"):
        add_config_arguments(clashing, Config)


def test_recipe_files_merge_in_order_and_options_override_them(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(tiny_config(lambda_gan=1.5, crop=48).to_dict()))
    (tmp_path / "b.yaml").write_text("lambda_gan: 3.0\nnce_layers: [0, 4]\n")
    parser = _parser()
    repeated = parser.parse_args(["--config", str(tmp_path / "a.yaml"), "--config", str(tmp_path / "b.yaml"),
                                  "--crop", "64"])
    several = parser.parse_args(["--config", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"), "--crop", "64"])
    assert repeated.config == several.config == [str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")]
    config = build_config(tmp_path / "run", files=repeated.config, overrides=config_overrides(repeated))
    assert (config.lambda_gan, config.nce_layers, config.crop, config.width) == (3.0, (0, 4), 64, 8)
    on_a_preset = build_config(tmp_path / "run", files=[tmp_path / "b.yaml"], overrides={"crop": 64},
                               preset_name="cpu")
    assert (on_a_preset.width, on_a_preset.lambda_gan, on_a_preset.crop) == (32, 3.0, 64)


def test_an_unknown_recipe_key_names_its_file_and_key(tmp_path):
    (tmp_path / "good.yaml").write_text("steps: 10\n")
    (tmp_path / "typo.yaml").write_text("lamda_gan: 2.0\n")
    with pytest.raises(ValueError, match=r"typo\.yaml: unknown configuration key 'lamda_gan'.*'lambda_gan'"):
        load_recipe([tmp_path / "good.yaml", tmp_path / "typo.yaml"])
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match=r"list\.yaml"):
        load_recipe([tmp_path / "list.yaml"])


@pytest.fixture
def sentinel_sigterm():
    """A SIGTERM handler of the test's own while it runs, so that a handler not installed cannot kill pytest."""
    caught = []
    sentinel = lambda signum, frame: caught.append(signum)  # noqa: E731
    previous = signal.signal(signal.SIGTERM, sentinel)
    yield sentinel, caught
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_a_resume_appends(unpaired_folders, tmp_path,
                                                                           sentinel_sigterm):
    sentinel, caught = sentinel_sigterm
    degraded, clean = unpaired_folders
    out = tmp_path / "run"
    trainer = Trainer(tiny_config(steps=50, checkpoint_every=100), degraded, clean, out)

    def progress(event: TrainEvent) -> None:
        if event.kind == "step" and event.step == 2:
            signal.raise_signal(signal.SIGTERM)  # as a scheduler does: the step is done, the run saves and ends

    assert run(trainer, out, progress=progress) == 0
    assert caught == [] and signal.getsignal(signal.SIGTERM) is sentinel  # ours handled it, then the old one is back
    assert [p.name for p in list_checkpoints(out)] == ["step_0000002"] and (out / "restorer.safetensors").is_file()
    rows = (out / "losses.csv").read_text().splitlines()
    assert rows[0].startswith("step,seconds,lr,steps_per_s,critics,") and [r[0] for r in rows[1:]] == ["1", "2"]

    # resume rules: run control may change, other fields only to what they were; files keep the saved recipe
    with pytest.raises(ValueError, match="can change only"):
        build_config(out, resume=True, overrides={"lr": 1e-3})
    with pytest.raises(ValueError, match="cannot be resumed as dcd-gan"):
        build_config(out, resume=True, overrides={"method": "dcd-gan"})
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(tiny_config(steps=50, lambda_gan=2.0).to_dict()))
    with pytest.warns(UserWarning, match="lambda_gan 2.0"):
        config = build_config(out, resume=True, files=[tmp_path / "other.yaml"], overrides={"steps": 3, "width": 8})
    assert (config.steps, config.lambda_gan) == (3, 1.0)
    resumed = Trainer(config, degraded, clean, out, resume=True)
    assert run(resumed, out, until=10) == 0  # past the end: finishes at 3
    assert [r.split(",")[0] for r in (out / "losses.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]


def test_a_second_ctrl_c_aborts_without_saving_and_handlers_come_back(unpaired_folders, tmp_path, sentinel_sigterm):
    degraded, clean = unpaired_folders
    trainer = Trainer(tiny_config(steps=50, checkpoint_every=100), degraded, clean, tmp_path / "run")
    before = signal.getsignal(signal.SIGINT)

    def progress(event: TrainEvent) -> None:
        signal.raise_signal(signal.SIGINT)  # the first asks to stop after this step, the second aborts
        signal.raise_signal(signal.SIGINT)

    assert run(trainer, progress=progress) == EXIT_ABORTED
    assert list_checkpoints(tmp_path / "run") == []
    assert signal.getsignal(signal.SIGINT) is before and signal.getsignal(signal.SIGTERM) is sentinel_sigterm[0]


def test_off_the_main_thread_no_handler_is_installed(sentinel_sigterm):
    seen = []
    thread = threading.Thread(target=lambda: seen.append(StopOnSignals(trainer=None).__enter__()._previous))
    thread.start()
    thread.join()
    assert seen == [{}] and signal.getsignal(signal.SIGTERM) is sentinel_sigterm[0]


def test_a_resumed_log_drops_the_rows_past_its_checkpoint_and_a_cut_row(tmp_path):
    (tmp_path / "losses.csv").write_text("step,seconds,critics\n1,0.1,0.5\n2,0.2,0.4\n3,0.3,0.3\n4,0.4")
    with LossLog(tmp_path, start_step=2) as log:  # an older file's columns: the rows follow its header
        log.write(TrainEvent("step", 3, 5, {"critics": 0.25, "gan": 1.0}, 2.0, lr=1e-4))
    written = (tmp_path / "losses.csv").read_text()
    assert written.splitlines()[1:] == ["1,0.1,0.5", "2,0.2,0.4", "3,0.0,0.25000"]
    with LossLog(tmp_path, start_step=0, enabled=False) as log:  # another rank: writes nothing
        log.write(TrainEvent("step", 1, 5, {"critics": 0.25}))
    assert (tmp_path / "losses.csv").read_text() == written
