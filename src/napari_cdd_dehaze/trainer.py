"""The training engine shared by the CLI, the napari widget and ``training/train.py``.

It knows nothing of any GUI: it yields :class:`TrainEvent` records (or calls a plain callback with
them), checks a stop flag every step, checkpoints every ``checkpoint_every`` steps, on stop and at the
end, and resumes a run exactly where it left off (step, learning-rate schedule, optimiser moments,
every random stream).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from .checkpoint import (MODEL_FILE, RESTORER_FILE, CheckpointError, latest_checkpoint, load_train_state, load_weights,
                         read_meta, read_safetensors, resolve_model_path, save_checkpoint, save_restorer)
from .config import TrainConfig
from .data import ImageFolder, UnpairedBatches
from .devices import pick_device
from .methods import build_method

RUN_CONTROL_FIELDS = ("steps", "checkpoint_every", "keep_checkpoints", "device")


def resume_config(run_dir: str | Path, **changes) -> TrainConfig:
    """The config of the newest checkpoint in ``run_dir`` with run-control ``changes`` (``None`` ignored)."""
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise CheckpointError(f"nothing to resume: {run_dir} holds no checkpoint")
    unknown = set(changes) - set(RUN_CONTROL_FIELDS)
    if unknown:
        raise ValueError(f"a resumed run can change only {', '.join(RUN_CONTROL_FIELDS)}, not {', '.join(sorted(unknown))}")
    saved = TrainConfig.from_dict(read_meta(checkpoint)["config"])
    return saved.replace(**{k: v for k, v in changes.items() if v is not None})


@dataclass
class TrainEvent:
    """One report from the engine. ``kind`` is "step", "checkpoint", "stopped" or "finished"."""

    kind: str
    step: int
    total: int
    losses: dict[str, float] = field(default_factory=dict)
    steps_per_s: float = 0.0
    eta_s: float = float("nan")
    lr: float = 0.0
    checkpoint: Path | None = None


def _linear_decay(total: int, decay_from: float) -> Callable[[int], float]:
    start = int(total * decay_from)

    def factor(step: int) -> float:
        if step < start:
            return 1.0
        return max(0.0, (total - step) / max(1, total - start))
    return factor


class Trainer:
    """Train ``config.method`` on two unpaired folders, writing checkpoints under ``run_dir``.

    ``resume=True`` continues the newest checkpoint in ``run_dir`` with its saved config (``config``
    None), or with ``config`` if that differs from it only in :data:`RUN_CONTROL_FIELDS` (see
    :func:`resume_config`; e.g. more steps to extend a run). ``init_from``
    starts from the weights of another run or model file (finetuning) with fresh optimisers.
    """

    def __init__(self, config: TrainConfig | None, degraded_dir: str | Path, clean_dir: str | Path, run_dir: str | Path,
                 resume: bool = False, init_from: str | Path | None = None) -> None:
        self.run_dir = Path(run_dir)
        checkpoint = meta = None
        if resume:
            checkpoint = latest_checkpoint(self.run_dir)
            if checkpoint is None:
                raise CheckpointError(f"nothing to resume: {self.run_dir} holds no checkpoint")
            meta = read_meta(checkpoint)
            config = self._resumed_config(meta, config)
        if config is None:
            raise ValueError("a config is needed unless resuming")
        self.config = config
        self.device = pick_device(config.device)
        # Data first: a bad folder fails before any network is built.
        self.data = UnpairedBatches(ImageFolder(degraded_dir, config.channels), ImageFolder(clean_dir, config.channels),
                                    config.crop, config.batch_size, config.load_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.method = build_method(config)
        self.method.to(self.device)
        self.optimisers = self.method.make_optimisers()
        decay = _linear_decay(config.steps, config.decay_from)  # of this run's total: an extended run decays later
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, decay) for name, opt in self.optimisers.items()}
        self.rng = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.last_losses: dict[str, float] = {}
        self._stop = threading.Event()
        if checkpoint is not None:
            self._restore(checkpoint, int(meta["step"]))
        elif init_from is not None:
            self._initialise_from(init_from)

    # ------------------------------------------------------------------ control
    def request_stop(self) -> None:
        """Ask the loop to stop after the current step; it saves a checkpoint and reports "stopped"."""
        self._stop.set()

    def run(self, callback: Callable[[TrainEvent], None] | None = None) -> TrainEvent:
        """Train to the end (or until stopped); every event goes to ``callback``; returns the last one."""
        event = None
        for event in self.events():
            if callback is not None:
                callback(event)
        return event

    def events(self) -> Iterator[TrainEvent]:
        c, total = self.config, self.config.steps
        self.method.train()
        rate, last_time = 0.0, time.perf_counter()
        while self.step < total:
            if self._stop.is_set():
                self._stop.clear()  # the trainer can be continued later by iterating again
                yield TrainEvent("stopped", self.step, total, self.last_losses, rate, checkpoint=self.save())
                return
            degraded, clean = self.data.sample(self.rng)
            losses = self.method.training_step(degraded.to(self.device), clean.to(self.device), self.optimisers,
                                               self.rng)
            for scheduler in self.schedulers.values():
                scheduler.step()
            self.step += 1
            now = time.perf_counter()
            instant = 1.0 / max(now - last_time, 1e-9)
            rate = instant if rate == 0.0 else 0.9 * rate + 0.1 * instant
            last_time = now
            lr = self.optimisers["generators"].param_groups[0]["lr"]
            self.last_losses = losses
            yield TrainEvent("step", self.step, total, losses, rate, (total - self.step) / rate, lr)
            if self.step % c.checkpoint_every == 0 and self.step < total:
                yield TrainEvent("checkpoint", self.step, total, losses, rate, checkpoint=self.save())
        yield TrainEvent("finished", self.step, total, self.last_losses, rate, 0.0,
                         checkpoint=self.save())

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        """Checkpoint the current state and refresh ``run_dir/restorer.safetensors``."""
        c = self.config
        meta = {"method": c.method, "config": c.to_dict(), "losses": self.last_losses}
        train_state = {
            "optimisers": {k: v.state_dict() for k, v in self.optimisers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.schedulers.items()},
            "rng": {"engine": self.rng.get_state()},  # the only random stream training draws from
        }
        path = save_checkpoint(self.run_dir, self.step, self.method, meta, train_state, c.keep_checkpoints)
        save_restorer(self.run_dir / RESTORER_FILE, self.method.shipped_restorer(),
                      {"method": c.method, "step": self.step, "checkpoint": path.name})
        return path

    @staticmethod
    def _resumed_config(meta: dict, requested: TrainConfig | None) -> TrainConfig:
        """The saved config, or ``requested`` if it differs only in how long and where the run goes on."""
        saved = TrainConfig.from_dict(meta["config"])
        if requested is None:
            return saved
        changed = [k for k, v in saved.to_dict().items() if k not in RUN_CONTROL_FIELDS and requested.to_dict()[k] != v]
        if changed:
            raise CheckpointError(f"cannot resume with a different configuration ({', '.join(changed)} differ from "
                                  f"the checkpoint); resume with the saved one, or start a new run with --init")
        return requested

    def _restore(self, checkpoint: Path, step: int) -> None:
        tensors, _ = read_safetensors(checkpoint / MODEL_FILE)
        load_weights(self.method, tensors, checkpoint / MODEL_FILE, strict=True)
        state = load_train_state(checkpoint)
        try:
            for name, opt in self.optimisers.items():
                opt.load_state_dict(state["optimisers"][name])
            for name, scheduler in self.schedulers.items():
                scheduler.load_state_dict(state["schedulers"][name])
            self.rng.set_state(state["rng"]["engine"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{checkpoint}: training state does not fit this run ({exc})") from exc
        self.step = step

    def _initialise_from(self, source: str | Path) -> None:
        """Load whatever networks ``source`` holds (a whole checkpoint, or a restorer alone)."""
        file = resolve_model_path(source)
        tensors, metadata = read_safetensors(file)
        if metadata.get("kind") == "restorer":
            load_weights(self.method.restorer, tensors, file, strict=True)
            if self.method.ema_restorer is not None:
                self.method.ema_restorer.load_state_dict(self.method.restorer.state_dict())
            return
        meta = read_meta(file.parent)
        saved = TrainConfig.from_dict(meta["config"])
        if saved.method != self.config.method:
            raise CheckpointError(f"{file}: a {saved.method} checkpoint cannot initialise a {self.config.method} run")
        load_weights(self.method, tensors, file, strict=False)
