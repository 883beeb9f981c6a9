"""The short model card a run folder carries (``MODEL_CARD.md``): what was trained on what, from what, how long.

It is rewritten with every checkpoint, so a stopped, resumed or time-limited run always describes the weights
that ``restorer.safetensors`` holds beside it. The same facts go into that file's metadata (``info``).
"""
from __future__ import annotations

from pathlib import Path

from napari_cdd_dehaze.io.image_files import atomic_write_bytes

from .checkpoint import BUNDLED_ROLES, BUNDLED_WEIGHTS

CARD_FILE = "MODEL_CARD.md"


def describe_start(init_from: str | Path | None, saved_meta: dict | None = None) -> str:
    """What a run's weights start from: the saved answer on resume, else the ``init_from`` it was given."""
    if saved_meta is not None:
        return str(saved_meta.get("start_model", "unknown (a run saved before start models were recorded)"))
    if init_from is None:
        return "none (trained from scratch)"
    for name, file in BUNDLED_WEIGHTS.items():
        if str(init_from) == name or Path(init_from).resolve() == file.resolve():
            return f"{name} ({BUNDLED_ROLES[name]})"
    return str(Path(init_from).resolve())


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def render_card(facts: dict) -> str:
    """Markdown for ``facts`` (the trainer's ``_card()``: one value per row of the table below)."""
    budget = f", budget {facts['minutes']:g} min" if facts["minutes"] else ""
    lines = [
        f"# {facts['name']}",
        "",
        f"A {facts['method']} restorer trained with napari-cdd-dehaze {facts['version']}. "
        f"Restore with it: `cdd-dehaze apply IMAGES --model {facts['run_dir']} --out OUT`, or pick the run folder in "
        "the Restore widget.",
        "",
        "| | |",
        "|---|---|",
        f"| start model | {facts['start_model']} |",
        f"| degraded images | {facts['degraded_count']} in `{facts['degraded']}` |",
        f"| clean images | {facts['clean_count']} in `{facts['clean']}` |",
        f"| steps | {facts['step']} of {facts['steps']}{budget} |",
        f"| training time | {format_duration(facts['trained_s'])} |",
        f"| device | {facts['device']} × {facts['world_size']} process(es), {facts['precision']} |",
        f"| network | width {facts['width']}, {facts['blocks']} blocks, output {facts['output']} |",
        f"| crops | {facts['crop']} px{facts['load']}, batch {facts['global_batch']} |",
        f"| learning rate | {facts['lr']:g} |",
        f"| saved | {facts['saved_at']} |",
        "",
        "The full recipe is in the checkpoints' `meta.json` (`config`); the losses of every step are in `losses.csv`.",
        "",
    ]
    return "\n".join(lines)


def write_run_card(run_dir: str | Path, facts: dict) -> Path:
    path = Path(run_dir) / CARD_FILE
    atomic_write_bytes(path, render_card(facts).encode())
    return path
