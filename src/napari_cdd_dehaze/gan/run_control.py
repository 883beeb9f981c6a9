"""How a training run is driven from a command line: one implementation for ``cdd-dehaze train`` and
``training/train.py`` (no GUI here; the napari widget drives :class:`~.trainer.Trainer` itself).

* :func:`add_config_arguments` / :func:`config_overrides`: one ``--field-name`` option per
  :class:`~.config.TrainConfig` field, so ``--steps 300 --lr 1e-4 --nce-layers 0,4,8`` work in both shells.
* :func:`load_recipe` / :func:`build_config`: several ``--config`` YAML files (a later one overrides an earlier
  one), then the command-line fields on top; a resumed run changes only the run-control fields.
* :func:`run`: the loop both shells run: Ctrl-C or SIGTERM finish the step and save (:class:`StopOnSignals`),
  ``losses.csv`` gets one row per step (:class:`LossLog`), ``--until STEP`` stops there with a checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import yaml

from .checkpoint import RESTORER_FILE
from .config import RETIRED_FIELDS, TrainConfig, drop_retired, preset
from .trainer import RUN_CONTROL_FIELDS, Trainer, TrainEvent, resume_config

EXIT_OK = 0
EXIT_ABORTED = 130  # a second Ctrl-C: what a shell reports for a process ended by SIGINT (128 + 2)
LOSSES_FILE = "losses.csv"

Say = Callable[[str], None]


def _print(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------------ recipe fields on the command line
def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _list_of(kind: type) -> Callable[[str], tuple]:
    """A parser of comma-separated values (``0,4,8``), named so that argparse's errors read well."""
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}") from None
    parse.__name__ = f"comma-separated {kind.__name__} list"
    return parse


def _option_type(default: Any) -> tuple[Callable[[str], Any], str]:
    """The argparse type and metavar of a field, read off its default (the annotations are strings here)."""
    if isinstance(default, bool):  # before int: bool is an int
        return _parse_bool, "BOOL"
    if isinstance(default, tuple):
        kind = type(default[0]) if default else str
        return _list_of(kind), f"{kind.__name__.upper()},..."
    kind = type(default)
    return kind, kind.__name__.upper()


def _field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def add_config_arguments(parser: argparse.ArgumentParser, config_type: type = TrainConfig) -> None:
    """Add ``--<field-name>`` (default None) for every field of ``config_type`` the parser has no option for.

    A shell's own option of the same name (the CLI's ``--steps``, ``--method`` with its choices, ...) is kept:
    it must set the same field (its ``dest`` is the field name), which is checked here.
    """
    groups = {}
    for f in dataclasses.fields(config_type):
        concern = f.metadata.get("group", "recipe")
        if concern not in groups:
            groups[concern] = parser.add_argument_group(
                f"recipe fields: {concern}", "over the recipe (a preset, --config files); tuples as comma-separated "
                                             "lists, e.g. 0,4,8" if not groups else None)
        group = groups[concern]
        option = "--" + f.name.replace("_", "-")
        existing = parser._option_string_actions.get(option)  # argparse has no public look-up
        if existing is not None:
            if existing.dest != f.name:
                raise ValueError(f"{option} is already an option for {existing.dest!r}, not the field {f.name!r}")
            continue
        default = _field_default(f)
        kind, metavar = _option_type(default)
        shown = (",".join(map(str, default)) if isinstance(default, tuple) else str(default)).replace("%", "%%")
        group.add_argument(option, dest=f.name, type=kind, default=None, metavar=metavar,
                           help=f"(TrainConfig default: {shown})")


def config_overrides(args: argparse.Namespace, config_type: type = TrainConfig) -> dict[str, Any]:
    """The fields given on the command line (those not None), by field name."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_type)
            if getattr(args, f.name, None) is not None}


def add_run_arguments(parser: argparse.ArgumentParser, *, config_required: bool = False, log_every: int = 0) -> None:
    """The run-control options both shells share: ``--config``, ``--until``, ``--log-every``, ``--check-sync``."""
    parser.add_argument("--config", action="extend", nargs="+", default=[], required=config_required,
                        metavar="YAML", help="recipe file(s) of TrainConfig fields; repeatable (--config A --config "
                                             "B) or several after one flag; a later file overrides an earlier one, "
                                             "fields given as options override the files")
    parser.add_argument("--until", type=int, metavar="STEP",
                        help="stop after this step with a checkpoint and the restorer file, as Ctrl-C does "
                             "(a run in stages; continue with --resume)")
    parser.add_argument("--log-every", type=int, default=log_every, metavar="N",
                        help=f"print the losses every N steps (default {log_every}; 0: never)")
    parser.add_argument("--check-sync", type=int, default=0, metavar="N",
                        help="every N steps, verify that all ranks hold bit-identical weights (0: never)")


# ------------------------------------------------------------------ recipe files and the run's config
def load_recipe(files: Iterable[str | Path]) -> dict[str, Any]:
    """The fields of the YAML ``files`` merged in order (a later file wins); a bad file or key names itself."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    merged: dict[str, Any] = {}
    for file in files:
        try:
            values = yaml.safe_load(Path(file).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{file}: not valid YAML ({exc})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{file}: a recipe is a mapping of TrainConfig fields, not a {type(values).__name__}")
        values = drop_retired(values, RETIRED_FIELDS, f"recipe ({file})")
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"{file}: unknown configuration key {key!r}{hint}")
        merged.update(values)
    return merged


def _same(a: Any, b: Any) -> bool:
    """Equal as configuration values (YAML gives lists where the config holds tuples)."""
    def plain(v: Any) -> Any:
        return tuple(v) if isinstance(v, (list, tuple)) else v
    return plain(a) == plain(b)


def build_config(run_dir: str | Path, *, resume: bool = False, files: Sequence[str | Path] = (),
                 overrides: dict[str, Any] | None = None, preset_name: str | None = None) -> TrainConfig:
    """The run's config, by the same rules in every shell.

    A new run: the method's preset ``preset_name`` (None: TrainConfig's defaults), then the recipe ``files`` in
    order, then the command-line ``overrides``. A resumed run keeps the config of its newest checkpoint
    (:func:`~.trainer.resume_config`): the files contribute only their run-control fields
    (:data:`~.trainer.RUN_CONTROL_FIELDS`; their other values are the run's recipe, so a differing one is
    reported and ignored), and an override of any other field that differs from the saved value is an error,
    since an option the user typed must not be silently dropped.
    """
    recipe, overrides = load_recipe(files), dict(overrides or {})
    if not resume:
        values = {**recipe, **overrides}
        if preset_name is None:
            return TrainConfig.from_dict(values)
        return preset(preset_name, method=values.pop("method", "cdd-gan"), **values)
    saved = resume_config(run_dir)
    if "method" in overrides and overrides["method"] != saved.method:
        raise ValueError(f"{run_dir} holds a {saved.method} run; it cannot be resumed as {overrides['method']}")
    ignored = [f"{k} {v!r}" for k, v in recipe.items()
               if k not in RUN_CONTROL_FIELDS and not _same(v, getattr(saved, k))]
    if ignored:
        warnings.warn(f"resuming {run_dir}: the checkpoint's recipe is kept, not the files' {', '.join(ignored)} "
                      f"(a resumed run changes only {', '.join(RUN_CONTROL_FIELDS)})", stacklevel=2)
    changes = {k: v for k, v in recipe.items() if k in RUN_CONTROL_FIELDS}
    changes.update({k: v for k, v in overrides.items() if k in RUN_CONTROL_FIELDS or not _same(v, getattr(saved, k))})
    return resume_config(run_dir, **changes)  # refuses the others with the fields a resume can change


# ------------------------------------------------------------------ signals
def _notice(message: str) -> None:
    """Write to stderr from a signal handler: ``print`` there can hit the stream's lock mid-write ("reentrant call")."""
    try:
        os.write(sys.stderr.fileno(), (message + "\n").encode())
    except (OSError, ValueError, AttributeError):  # no real stderr (closed, or a test's capture object)
        pass


class StopOnSignals:
    """While entered, SIGINT (Ctrl-C) and SIGTERM (a scheduler's warning) ask ``trainer`` to stop after the
    current step, which then checkpoints; a second Ctrl-C aborts at once (Python's default handler).

    Under torchrun every rank gets Ctrl-C twice (from the terminal and from the launcher), so a second one
    aborts only a lone process; torchrun itself kills its workers 30 s after its first. The previous handlers
    come back on exit. Off the main thread (Python allows handlers only there) nothing is installed.
    """

    signals = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, trainer: Trainer, quiet: bool = False) -> None:
        self.trainer, self.quiet = trainer, quiet
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)  # None: set outside Python
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        self.trainer.request_stop()
        lone = not self.trainer.replicas.active
        if not self.quiet:
            _notice(f"{signal.Signals(signum).name}: stopping after this step and saving a checkpoint (continue "
                    f"with --resume)" + ("; Ctrl-C again aborts" if lone else ""))
        if lone:
            signal.signal(signal.SIGINT, signal.default_int_handler)


# ------------------------------------------------------------------ losses.csv
class LossLog:
    """``RUN/losses.csv``: one row per step, flushed every step so it can be read while the run goes on.

    Columns: ``step``, ``seconds`` (since this invocation started), ``lr``, ``steps_per_s``, then the loss
    names of the first step. A resumed run (``start_step`` > 0) appends under the file's own header, after
    dropping the rows past ``start_step`` (steps trained after the checkpoint it resumes, which it trains again)
    and a row cut short by a kill. ``enabled=False`` (ranks other than 0) writes nothing.
    """

    fixed = ("step", "seconds", "lr", "steps_per_s")

    def __init__(self, run_dir: str | Path, start_step: int = 0, enabled: bool = True) -> None:
        self.path = Path(run_dir) / LOSSES_FILE
        self.columns: list[str] | None = None
        self._file = None
        self._start = time.perf_counter()
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if start_step > 0 and self.path.is_file():
            self.columns = self._keep_rows_up_to(start_step)
        self._file = open(self.path, "a" if self.columns else "w")

    def _keep_rows_up_to(self, step: int) -> list[str] | None:
        text = self.path.read_text()
        lines = text.splitlines()
        if not lines:
            return None
        columns = lines[0].split(",")

        def kept(line: str) -> bool:
            cells = line.split(",")
            return len(cells) == len(columns) and cells[0].isdigit() and int(cells[0]) <= step
        rows = [line for line in lines[1:] if kept(line)]
        if len(rows) != len(lines) - 1 or not text.endswith("\n"):
            self.path.write_text("\n".join([lines[0], *rows]) + "\n")
        return columns

    def write(self, event: TrainEvent) -> None:
        if self._file is None:
            return
        if self.columns is None:
            self.columns = [*self.fixed, *event.losses]
            self._file.write(",".join(self.columns) + "\n")
        values = {"step": str(event.step), "seconds": f"{time.perf_counter() - self._start:.1f}",
                  "lr": f"{event.lr:.6g}", "steps_per_s": f"{event.steps_per_s:.3f}",
                  **{k: f"{v:.5f}" for k, v in event.losses.items()}}
        self._file.write(",".join(values.get(c, "") for c in self.columns) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> LossLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ------------------------------------------------------------------ the loop
def step_line(event: TrainEvent) -> str:
    losses = " ".join(f"{k} {v:.3f}" for k, v in event.losses.items())
    return (f"step {event.step}/{event.total} {event.steps_per_s:.2f} steps/s eta {event.eta_s / 60:.1f} min "
            f"| {losses}")


def run(trainer: Trainer, out: str | Path | None = None, *, until: int | None = None, log_every: int = 0,
        check_sync: int = 0, progress: Callable[[TrainEvent], None] | None = None, say: Say = _print) -> int:
    """Train until the end, ``until`` (a step) or a stop signal, and return the process's exit code.

    Every step goes to ``out/losses.csv`` (default: the trainer's run folder) and every event to ``progress``
    (a shell's progress bar); rank 0 alone writes and says things: a line every ``log_every`` steps, one per
    checkpoint, the model file at the end. ``check_sync`` > 0 checks every so many steps that all ranks hold
    identical weights (a collective: every rank runs it). Returns 0 when finished or stopped (by ``until``,
    Ctrl-C or SIGTERM, with a checkpoint), :data:`EXIT_ABORTED` after a second Ctrl-C (no checkpoint).
    """
    out = trainer.run_dir if out is None else Path(out)
    talk = say if trainer.is_main else (lambda message: None)
    if until is not None and until <= trainer.step < trainer.config.steps:
        trainer.request_stop()  # already there (a stage repeated): save and stop before another step
    with StopOnSignals(trainer, quiet=not trainer.is_main), \
            LossLog(out, start_step=trainer.step, enabled=trainer.is_main) as log:
        try:
            for event in trainer.events():
                if event.kind == "step":
                    log.write(event)
                    if until is not None and until <= event.step < event.total:
                        trainer.request_stop()  # every rank sees the same step, so all stop after it
                    if check_sync and event.step % check_sync == 0:
                        if not trainer.replicas_identical():
                            raise RuntimeError(f"replicas differ after step {event.step}")
                        talk(f"step {event.step}: weights identical on {trainer.replicas.world_size} rank(s)")
                    if log_every and event.step % log_every == 0:
                        talk(step_line(event))
                else:
                    budget = (f" (time budget of {trainer.config.minutes:g} min reached)"
                              if event.kind == "finished" and trainer.out_of_time else "")
                    talk(f"{event.kind} at step {event.step}{budget}: {event.checkpoint}")
                if progress is not None:
                    progress(event)
        except KeyboardInterrupt:
            talk(f"aborted at step {trainer.step} without saving; --resume continues from the last checkpoint")
            return EXIT_ABORTED
    talk(f"model: {trainer.run_dir / RESTORER_FILE}")
    return EXIT_OK
