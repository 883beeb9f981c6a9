"""The training engine shared by the CLI, the napari widget and ``training/train.py``.

It knows nothing of any GUI: it yields :class:`TrainEvent` records (or calls a plain callback with
them), checks a stop flag every step, checkpoints every ``checkpoint_every`` steps, on stop and at the
end, and resumes a run exactly where it left off (step, learning-rate schedule, optimiser moments,
every random stream).

Under ``torchrun`` the same engine trains data-parallel (:mod:`.distributed`): every rank holds an
identical copy of all networks, computes ``batch_size`` samples of a global batch of
``batch_size × world_size``, and averages gradients before each optimiser step; rank 0 alone writes
checkpoints while the others wait. What a step computes depends only on (seed, step, global batch):
the data of sample i of step t is seeded by (seed, t, i) and the step's randomness comes from one
generator that is identical on every rank. So a checkpoint resumes exactly in any world size that
keeps the global batch (e.g. 2 ranks × batch 1 → 1 rank × batch 2), and validly (a different but
well-defined global batch) in any other.
"""
from __future__ import annotations

import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from napari_cdd_dehaze import __version__
from napari_cdd_dehaze.imaging.devices import native_bf16, pick_device

from .checkpoint import (
    GENERATOR_DEFAULTS,
    MODEL_FILE,
    RESTORER_FIELDS,
    RESTORER_FILE,
    CheckpointError,
    bundled_file,
    bundled_weights,
    checkpoint_path,
    latest_checkpoint,
    load_train_state,
    load_weights,
    read_meta,
    read_metadata,
    read_safetensors,
    resolve_model_path,
    restorer_config,
    save_checkpoint,
    save_restorer,
)
from .config import RUN_OUTPUTS, TrainConfig
from .data import ImageFolder, UnpairedBatches
from .distributed import replicas_from_environment
from .methods import build_method
from .run_card import describe_start, write_run_card

# What a resumed run may change: how long and where it runs, and how the restorer composes its output (fields
# without weights of their own; a run resumed with ``airlight_floor`` trains with the floor from there on, as
# the bundled model's second stage did). batch_size is here so that a run can move to another number of
# processes and keep its global batch (batch_size × world_size).
RUN_CONTROL_FIELDS = TrainConfig.fields_of(resumable=True)


def resume_config(run_dir: str | Path, **changes) -> TrainConfig:
    """The config of the newest checkpoint in ``run_dir`` with run-control ``changes`` (``None`` ignored)."""
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise CheckpointError(f"nothing to resume: {run_dir} holds no checkpoint")
    unknown = set(changes) - set(RUN_CONTROL_FIELDS)
    if unknown:
        raise ValueError(f"a resumed run can change only {', '.join(RUN_CONTROL_FIELDS)}, "
                         f"not {', '.join(sorted(unknown))}")
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
    trained_s: float = 0.0  # seconds of training so far, over all resumes


def _linear_decay(total: int, decay_from: float) -> Callable[[int], float]:
    start = int(total * decay_from)

    def factor(step: int) -> float:
        if step < start:
            return 1.0
        return max(0.0, (total - step) / max(1, total - start))
    return factor


ARCHITECTURE_FIELDS = RESTORER_FIELDS  # what a restorer file records of its network
# What run folders written before these fields existed hold.
ARCHITECTURE_DEFAULTS = GENERATOR_DEFAULTS  # what run folders written before a field existed hold


def architecture_of(source: str | Path) -> dict:
    """The network fields of the model at ``source`` (a restorer file, or a checkpoint of any run).

    Finetuning takes them from the model it starts from, whatever preset chose the other settings: the
    bundled default (width 32, 6 blocks, scattering head) can be finetuned with the ``cpu`` preset's
    learning rate and crops without the user matching its architecture by hand.
    """
    file = resolve_model_path(source)
    metadata = read_metadata(file)
    if metadata.get("kind") == "restorer":
        cfg = restorer_config(metadata, file)
        fields = {k: getattr(cfg, k) for k in ARCHITECTURE_FIELDS}
        # a restorer records its own role; the run's field names the pair
        fields["output"] = next(run for run, pair in RUN_OUTPUTS.items() if cfg.output in pair)
        return fields
    saved = read_meta(file.parent)["config"]
    return {**ARCHITECTURE_DEFAULTS, **{k: saved[k] for k in ARCHITECTURE_FIELDS if k in saved}}


def _take_network_of(config: TrainConfig, init_from: str | Path) -> TrainConfig:
    """``config`` with the network fields of the model it finetunes, saying which of its own values give way.

    Silently replaced values misled once: a recipe that set ``pool_airlight: 0`` to finetune the bundled model
    without a pooled airlight trained with one, because the bundled model has it.
    """
    network = architecture_of(init_from)
    replaced = [f"{key} {value!r} (recipe: {getattr(config, key)!r})" for key, value in network.items()
                if getattr(config, key) != value]
    if replaced:
        warnings.warn(f"finetuning {init_from}: the run keeps that model's network fields, " + ", ".join(replaced),
                      stacklevel=3)
    return config.replace(**network)


class Trainer:
    """Train ``config.method`` on two unpaired folders, writing checkpoints under ``run_dir``.

    ``resume=True`` continues the newest checkpoint in ``run_dir`` with its saved config (``config``
    None), or with ``config`` if that differs from it only in :data:`RUN_CONTROL_FIELDS` (see
    :func:`resume_config`; e.g. more steps to extend a run). ``init_from``
    starts from the weights of another run or model file (finetuning) with fresh optimisers.

    Launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) it joins the process group and
    trains data-parallel; see the module docstring. ``is_main`` is true on the rank that should log.
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
        self.start_model = describe_start(init_from, meta)  # what the run's weights started from, for its card
        if bundled_weights(init_from) is not None:  # a bundled model, by name as everywhere else
            init_from = bundled_file(str(init_from))
        if init_from is not None and checkpoint is None:  # finetuning keeps the starting model's network
            config = _take_network_of(config, init_from)
        self.config = config
        self.replicas, device = replicas_from_environment(config.device)
        self.device = pick_device(device)
        if config.precision == "auto":  # bf16 where the device computes it natively, else fp32; saved as resolved
            config = config.replace(precision="bf16" if native_bf16(self.device) else "fp32")
            self.config = config
        # Data first: a bad folder fails before any network is built.
        self.data = UnpairedBatches(ImageFolder(degraded_dir, config.channels), ImageFolder(clean_dir, config.channels),
                                    config.crop, config.batch_size, config.load_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.method = build_method(config)
        self.method.to(self.device)
        self.method.replicas = self.replicas
        self.optimisers = self.method.make_optimisers()
        decay = _linear_decay(config.steps, config.decay_from)  # of this run's total: an extended run decays later
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, decay) for name, opt in self.optimisers.items()}
        # fp16 needs loss scaling against underflow; bf16 has fp32's range and needs none.
        self.scalers = ({name: torch.amp.GradScaler(self.device.type) for name in self.optimisers}
                        if config.precision == "fp16" else {})
        self.rng = torch.Generator().manual_seed(config.seed)  # the step's randomness: identical on every rank
        self.step = 0
        self.trained_s = 0.0  # seconds spent in training steps, over all resumes (what ``minutes`` limits)
        self.last_losses: dict[str, float] = {}
        self._stop = threading.Event()
        if checkpoint is not None:
            self._restore(checkpoint, meta)
        elif init_from is not None:
            self._initialise_from(init_from)
        self.replicas.broadcast_module(self.method)  # identical start on every rank, whatever happened above

    @property
    def is_main(self) -> bool:
        """True on the one process that should log and report (always, without torchrun)."""
        return self.replicas.is_main

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.replicas.world_size

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

    @property
    def out_of_time(self) -> bool:
        """Whether the run has spent its ``minutes`` (never, when that is 0)."""
        return 0 < self.config.minutes * 60 <= self.trained_s

    def _eta(self, rate: float) -> float:
        """Seconds left: the steps left at ``rate``, or the time budget left if that ends first."""
        eta = (self.config.steps - self.step) / rate if rate > 0 else float("inf")
        if self.config.minutes > 0:
            eta = min(eta, max(0.0, self.config.minutes * 60 - self.trained_s))
        return eta

    def events(self) -> Iterator[TrainEvent]:
        c, total = self.config, self.config.steps
        self.method.train()
        rate, last_time = 0.0, time.perf_counter()
        while self.step < total:
            if self.replicas.any(self._stop.is_set(), self.device):  # all ranks stop at the same step
                self._stop.clear()  # the trainer can be continued later by iterating again
                yield TrainEvent("stopped", self.step, total, self.last_losses, rate, checkpoint=self.save(),
                                 trained_s=self.trained_s)
                return
            # the budget ends the run as its last step would (resume with more minutes to go on); every rank
            # ends at the same step, whatever its own clock says
            if c.minutes > 0 and self.replicas.any(self.out_of_time, self.device):
                break
            started = time.perf_counter()
            mine = range(self.global_batch)[self.replicas.batch_slice(c.batch_size)]
            degraded, clean = self.data.samples_at(c.seed, self.step, mine)
            losses = self.method.training_step(degraded.to(self.device), clean.to(self.device), self.optimisers,
                                               self.rng, self.scalers)
            losses = self.replicas.average_values(losses, self.device)  # the global batch's losses
            for scheduler in self.schedulers.values():
                scheduler.step()
            self.step += 1
            now = time.perf_counter()
            self.trained_s += now - started
            instant = 1.0 / max(now - last_time, 1e-9)
            rate = instant if rate == 0.0 else 0.9 * rate + 0.1 * instant
            last_time = now
            lr = self.optimisers["generators"].param_groups[0]["lr"]
            self.last_losses = losses
            yield TrainEvent("step", self.step, total, losses, rate, self._eta(rate), lr, trained_s=self.trained_s)
            if self.step % c.checkpoint_every == 0 and self.step < total:
                yield TrainEvent("checkpoint", self.step, total, losses, rate, checkpoint=self.save(),
                                 trained_s=self.trained_s)
        yield TrainEvent("finished", self.step, total, self.last_losses, rate, 0.0,
                         checkpoint=self.save(), trained_s=self.trained_s)

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        """Checkpoint the current state and refresh ``run_dir/restorer.safetensors``.

        Called on every rank; rank 0 writes (replicas are identical, so its state is everyone's) and
        the others wait for it, so no rank runs ahead of a checkpoint being written.
        """
        c = self.config
        path = checkpoint_path(self.run_dir, self.step)
        if self.is_main:
            meta = {"method": c.method, "config": c.to_dict(), "losses": self.last_losses,
                    "world_size": self.replicas.world_size, "global_batch": self.global_batch,
                    "trained_s": round(self.trained_s, 3), "start_model": self.start_model}
            train_state = {
                "optimisers": {k: v.state_dict() for k, v in self.optimisers.items()},
                "schedulers": {k: v.state_dict() for k, v in self.schedulers.items()},
                "scalers": {k: v.state_dict() for k, v in self.scalers.items()},
                # The only random stream the step draws from (the data is seeded by step); the same on every rank.
                "rng": {"engine": self.rng.get_state()},
            }
            path = save_checkpoint(self.run_dir, self.step, self.method, meta, train_state, c.keep_checkpoints)
            save_restorer(self.run_dir / RESTORER_FILE, self.method.shipped_restorer(),
                          {"method": c.method, "step": self.step, "checkpoint": path.name,
                           "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "version": __version__,
                           "start_model": self.start_model, "trained_s": round(self.trained_s, 1)})
            write_run_card(self.run_dir, self._card())
        self.replicas.barrier()
        return path

    def _card(self) -> dict:
        """The facts of :mod:`.run_card`'s model card for the state just saved."""
        c = self.config
        return {"name": self.run_dir.resolve().name, "run_dir": str(self.run_dir), "method": c.method,
                "version": __version__, "start_model": self.start_model,
                "degraded": str(self.data.degraded.folder), "degraded_count": len(self.data.degraded),
                "clean": str(self.data.clean.folder), "clean_count": len(self.data.clean),
                "step": self.step, "steps": c.steps, "minutes": c.minutes, "trained_s": self.trained_s,
                "device": str(self.device), "world_size": self.replicas.world_size, "precision": c.precision,
                "width": c.width, "blocks": c.blocks, "output": c.output, "crop": c.crop,
                "load": f" of images shrunk to {c.load_size} px" if c.load_size else "",
                "global_batch": self.global_batch, "lr": c.lr, "saved_at": time.strftime("%Y-%m-%d %H:%M %Z")}

    def replicas_identical(self) -> bool:
        """Whether every rank holds bit-identical weights and buffers (all networks, momentum heads, EMA).

        A check for tests and for ``--check-sync``: it hashes every tensor, so it costs a copy to the CPU.
        """
        return len(set(self.replicas.fingerprints(self.method, self.device))) == 1

    @staticmethod
    def _resumed_config(meta: dict, requested: TrainConfig | None) -> TrainConfig:
        """The saved config, or ``requested`` if it differs only in :data:`RUN_CONTROL_FIELDS`."""
        saved = TrainConfig.from_dict(meta["config"])
        if requested is None:
            return saved
        changed = [k for k, v in saved.to_dict().items() if k not in RUN_CONTROL_FIELDS and requested.to_dict()[k] != v]
        if changed:
            raise CheckpointError(f"cannot resume with a different configuration ({', '.join(changed)} differ from "
                                  f"the checkpoint); resume with the saved one, or start a new run with --init")
        return requested

    def _restore(self, checkpoint: Path, meta: dict) -> None:
        tensors, _ = read_safetensors(checkpoint / MODEL_FILE)
        load_weights(self.method, tensors, checkpoint / MODEL_FILE, strict=True)
        state = load_train_state(checkpoint)
        try:
            for name, opt in self.optimisers.items():
                opt.load_state_dict(state["optimisers"][name])
            for name, scheduler in self.schedulers.items():
                scheduler.load_state_dict(state["schedulers"][name])
            for name, scaler in self.scalers.items():
                if name in state.get("scalers", {}):  # absent when the run was saved without fp16
                    scaler.load_state_dict(state["scalers"][name])
            self.rng.set_state(state["rng"]["engine"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{checkpoint}: training state does not fit this run ({exc})") from exc
        self.step = int(meta["step"])
        self.trained_s = float(meta.get("trained_s", 0.0))  # absent in runs saved before the time budget existed
        saved_batch = int(meta.get("global_batch", TrainConfig.from_dict(meta["config"]).batch_size))
        if saved_batch != self.global_batch and self.is_main:
            warnings.warn(f"resuming a run trained with a global batch of {saved_batch} with a global batch of "
                          f"{self.global_batch} ({self.replicas.world_size} process(es) × batch_size "
                          f"{self.config.batch_size}); set batch_size to keep it", stacklevel=3)

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
