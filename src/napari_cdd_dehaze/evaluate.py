"""Evaluate restoration methods on paired and unpaired folders and write a Markdown and a JSON report.

* A **paired** folder holds ``hazy/`` (or ``rainy/``, ``degraded/``) and ``clear/`` (or ``clean/``) with the
  same file names; the extension may differ (``hazy/12.jpg`` pairs with ``clear/12.png``) and sub-folders are matched by
  their relative path. Each method restores the hazy image and is scored against the clear one: PSNR, SSIM,
  CIEDE2000 (:mod:`~napari_cdd_dehaze.imaging.metrics`). Files without a partner are listed in the report.
* An **unpaired** folder is read recursively; each image is scored without reference: the mean dark channel
  of the input and of each method's output.

Methods are anything :func:`~napari_cdd_dehaze.models.load_model` accepts (``identity``, ``dcp``, ``cap``,
``default`` or a path) and run through :func:`~napari_cdd_dehaze.restore.engine.restore_array`, exactly as
``cdd-dehaze apply`` runs them: learned models in tiles where the image is large, classical ones whole, the
output in the input's dtype (so an 8-bit input is scored on the 8-bit result a user would get). Scores are
computed in float [0, 1] RGB (grey repeated, alpha dropped). A clear image a few pixels larger or smaller
than its hazy partner is cropped (top-left aligned) to the common size, and the report says so.

A method that cannot be loaded, or an image that cannot be read or restored, is reported and the rest goes on.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .imaging import metrics

if TYPE_CHECKING:
    from .restore.engine import RestoreOptions
from .io.image_files import IMAGE_SUFFIXES, IntensityMap, read_image

HAZY_NAMES, CLEAR_NAMES = ("hazy", "rainy", "degraded"), ("clear", "clean")
MAX_CROP = 16  # pixels a pair may differ in height or width before it is an error rather than a crop
PAIRED_MEASURES = ("psnr", "ssim", "ciede2000")
UNPAIRED_MEASURES = ("dark_channel_in", "dark_channel_out")
MEASURE_LABELS = {"psnr": "PSNR dB ↑", "ssim": "SSIM ↑", "ciede2000": "CIEDE2000 ↓",
                  "dark_channel_in": "dark channel in", "dark_channel_out": "dark channel out ↓"}


class EvaluationError(ValueError):
    """Arguments that make an evaluation impossible (no such folder, no method could be loaded)."""


@dataclass
class SetResult:
    """Scores of every method on one folder: ``scores[method][image] = {measure: value, "seconds": s}``."""

    name: str
    kind: str  # "paired" or "unpaired"
    folder: str
    images: list[str] = field(default_factory=list)
    scores: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)   # crops, unmatched or skipped files
    errors: list[str] = field(default_factory=list)  # images that could not be read or restored

    @property
    def measures(self) -> tuple[str, ...]:
        return PAIRED_MEASURES if self.kind == "paired" else UNPAIRED_MEASURES

    def means(self, method: str) -> dict[str, float]:
        """Mean of each measure (and of seconds per image) over the images this method restored."""
        rows = list(self.scores.get(method, {}).values())
        if not rows:
            return {}
        return {key: float(np.mean([r[key] for r in rows])) for key in (*self.measures, "seconds")} | {
            "images": len(rows)}


@dataclass
class Report:
    methods: dict[str, str]        # name → description, in the order given
    method_errors: dict[str, str]  # name → why it could not be loaded
    sets: list[SetResult]
    seconds: float = 0.0

    @property
    def failures(self) -> int:
        return len(self.method_errors) + sum(len(s.errors) for s in self.sets)

    def summary_table(self) -> str:
        """Methods as rows, sets as columns; paired cells PSNR / SSIM / CIEDE2000, unpaired the dark channel."""
        header = ["method"] + [f"{s.name} ({len(s.images)}, {s.kind})" for s in self.sets]
        rows = [[name] + [_summary_cell(s, name) for s in self.sets] for name in self.methods]
        return _table(header, rows)

    def to_markdown(self) -> str:
        lines = ["# Dehazing evaluation", "",
                 ("Paired sets: PSNR (dB, higher is better) / SSIM (higher is better) / CIEDE2000 (mean colour "
                 "difference, lower is better), mean over images. Unpaired sets: mean dark channel of the output "
                 "(15-pixel patches; a no-reference haze density, lower is less haze; the `identity` row is the "
                 f"input). PSNR of identical images is capped at {metrics.PSNR_CAP_DB:.0f} dB."), "",
                 "## Summary", "", self.summary_table(), "",
                 f"Total time {self.seconds:.1f} s.", "", "## Methods", ""]
        lines += [f"* `{name}`: {label}" for name, label in self.methods.items()]
        lines += [f"* `{name}`: **not run** — {why}" for name, why in self.method_errors.items()]
        for s in self.sets:
            lines += ["", f"## {s.name} ({s.kind}, {len(s.images)} images, `{s.folder}`)", ""]
            lines += [f"* {note}" for note in s.notes] + [f"* **error**: {e}" for e in s.errors]
            if s.notes or s.errors:
                lines.append("")
            lines.append(_per_image_table(s, list(self.methods)))
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        return {"total_seconds": round(self.seconds, 2), "psnr_cap_db": metrics.PSNR_CAP_DB,
                "methods": self.methods, "method_errors": self.method_errors,
                "sets": [{"name": s.name, "kind": s.kind, "folder": s.folder, "images": s.images,
                          "notes": s.notes, "errors": s.errors,
                          "means": {m: s.means(m) for m in self.methods},
                          "per_image": s.scores} for s in self.sets]}

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``report.md`` and ``report.json`` into ``out_dir``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        md, js = out_dir / "report.md", out_dir / "report.json"
        md.write_text(self.to_markdown(), encoding="utf-8")
        js.write_text(json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        return md, js


def _fmt(measure: str, value: float) -> str:
    return f"{value:.3f}" if measure in ("ssim", "dark_channel_in", "dark_channel_out") else f"{value:.2f}"


def _summary_cell(s: SetResult, method: str) -> str:
    means = s.means(method)
    if not means:
        return "—"
    cell = (" / ".join(_fmt(m, means[m]) for m in PAIRED_MEASURES) if s.kind == "paired"
            else _fmt("dark_channel_out", means["dark_channel_out"]))
    return cell if means["images"] == len(s.images) else f"{cell} ({means['images']} of {len(s.images)})"


def _per_image_table(s: SetResult, methods: list[str]) -> str:
    shown = [m for m in methods if m in s.scores]
    if s.kind == "paired":
        header = ["image"] + [f"{m}: PSNR / SSIM / ΔE00" for m in shown]
        cell = lambda r: " / ".join(_fmt(k, r[k]) for k in PAIRED_MEASURES)
    else:
        header = ["image", "input"] + [m for m in shown]
        cell = lambda r: _fmt("dark_channel_out", r["dark_channel_out"])
    rows = []
    for image in s.images:
        row = [image]
        if s.kind == "unpaired":
            first = next((s.scores[m][image] for m in shown if image in s.scores[m]), None)
            row.append(_fmt("dark_channel_in", first["dark_channel_in"]) if first else "—")
        row += [cell(s.scores[m][image]) if image in s.scores[m] else "failed" for m in shown]
        rows.append(row)
    seconds = ["seconds per image"] + ([""] if s.kind == "unpaired" else []) + [
        f"{s.means(m)['seconds']:.2f}" if s.means(m) else "—" for m in shown]
    return _table(header, rows + [seconds])


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


# ----------------------------------------------------------------------------------------------- images
def unit_rgb(array: np.ndarray, imap: IntensityMap | None = None) -> np.ndarray:
    """A single image as float32 (H, W, 3) in [0, 1]: grey repeated, alpha dropped."""
    if array.ndim == 3 and array.shape[-1] > 4 or array.ndim > 3:
        raise ValueError(f"expected one 2-D grey or colour image, got an array of shape {array.shape} (a stack?)")
    unit = (imap or IntensityMap.for_array(array)).to_unit(np.asarray(array))
    if unit.ndim == 2:
        unit = unit[..., None]
    if unit.shape[-1] in (2, 4):
        unit = unit[..., :-1]
    return np.repeat(unit, 3, axis=-1) if unit.shape[-1] == 1 else unit


def _image_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Images under ``folder`` keyed by relative path without extension, and files skipped as not images."""
    found, skipped = {}, []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        key = path.relative_to(folder).with_suffix("").as_posix()
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(f"{path.relative_to(folder).as_posix()} (not PNG, JPEG or TIFF)")
        elif key in found:
            skipped.append(f"{path.relative_to(folder).as_posix()} (same name as {found[key].name})")
        else:
            found[key] = path
    return found, skipped


def _paired_dirs(folder: Path) -> tuple[Path, Path]:
    hazy = next((folder / n for n in HAZY_NAMES if (folder / n).is_dir()), None)
    clear = next((folder / n for n in CLEAR_NAMES if (folder / n).is_dir()), None)
    if hazy is None or clear is None:
        raise EvaluationError(f"{folder}: a paired folder needs {' or '.join(HAZY_NAMES)}/ and "
                              f"{' or '.join(CLEAR_NAMES)}/ sub-folders")
    return hazy, clear


def _common_size(hazy: tuple[int, ...], clear: tuple[int, ...], name: str, notes: list[str]) -> tuple[int, int]:
    """The (height, width) both images are cropped to; a note when that is a crop."""
    (h1, w1), (h2, w2) = hazy[:2], clear[:2]
    if abs(h1 - h2) > MAX_CROP or abs(w1 - w2) > MAX_CROP:
        raise ValueError(f"{name}: hazy {w1}×{h1} and clear {w2}×{h2} differ by more than {MAX_CROP} pixels")
    h, w = min(h1, h2), min(w1, w2)
    if (h1, w1) != (h2, w2):
        notes.append(f"{name}: hazy {w1}×{h1} and clear {w2}×{h2} cropped to {w}×{h} (top-left aligned)")
    return h, w


# ------------------------------------------------------------------------------------------- evaluation
def evaluate(paired: list[str | Path], unpaired: list[str | Path], methods: list[str], device: str = "auto",
             tile: int | None = None, log: Callable[[str], None] | None = None,
             estimate_size: int | None = None, airlight_floor: int | None = None) -> Report:
    """Run every method on every image of every folder and collect the scores (see the module docstring).

    ``tile``, ``estimate_size`` and ``airlight_floor`` apply to every learned model (see
    :class:`~napari_cdd_dehaze.restore.engine.RestoreOptions`).
    """
    from .gan.checkpoint import CheckpointError
    from .imaging.devices import pick_device
    from .models import load_model
    from .restore.classical import ClassicalDehazer
    from .restore.engine import RestoreOptions, with_airlight_floor

    log = log or (lambda message: None)
    folders = [(Path(f), "paired") for f in paired] + [(Path(f), "unpaired") for f in unpaired]
    if not folders:
        raise EvaluationError("give at least one paired or unpaired folder")
    for folder, kind in folders:
        if not folder.is_dir():
            raise EvaluationError(f"{folder}: no such folder")
        if kind == "paired":
            _paired_dirs(folder)
    loaded, labels, method_errors = {}, {}, {}
    for spec in dict.fromkeys(methods):  # in order, once each
        try:
            loaded[spec] = load_model(spec)
            if not isinstance(loaded[spec], ClassicalDehazer):  # a floor it cannot take is this method's error
                loaded[spec] = with_airlight_floor(loaded[spec], airlight_floor)
            labels[spec] = getattr(loaded[spec], "label", None) or _describe_learned(loaded[spec], spec)
        except (CheckpointError, ValueError, OSError) as exc:
            method_errors[spec] = str(exc)
            log(f"error: method {spec}: {exc}")
    if not loaded:
        raise EvaluationError("no method could be loaded: " + "; ".join(method_errors.values()))
    if any(not isinstance(m, ClassicalDehazer) for m in loaded.values()):
        device = pick_device(device)  # an absent device is one error here, not one per image

    start = time.perf_counter()
    names = [f.name for f, _ in folders]
    sets = []
    for folder, kind in folders:
        name = folder.name if names.count(folder.name) == 1 else f"{folder.parent.name}/{folder.name}"
        result = SetResult(name, kind, str(folder))
        log(f"{name}: {kind} set in {folder}")
        options = RestoreOptions(device=device, tile=tile, estimate_size=estimate_size)
        _evaluate_set(result, folder, loaded, options, log)
        sets.append(result)
    return Report(labels, method_errors, sets, time.perf_counter() - start)


def _describe_learned(restorer, spec: str) -> str:
    c = restorer.config
    return f"learned restorer from {spec} (width {c.width}, {c.blocks} blocks, {c.channels} channels)"


def _evaluate_set(result: SetResult, folder: Path, methods: dict, options: RestoreOptions, log) -> None:
    from .restore.engine import restore_array

    if result.kind == "paired":
        hazy_dir, clear_dir = _paired_dirs(folder)
        hazy, skipped_h = _image_files(hazy_dir)
        clear, skipped_c = _image_files(clear_dir)
        for key in sorted(set(hazy) - set(clear)):
            result.notes.append(f"unmatched: {hazy_dir.name}/{hazy[key].relative_to(hazy_dir).as_posix()} has no "
                                f"partner in {clear_dir.name}/")
        for key in sorted(set(clear) - set(hazy)):
            result.notes.append(f"unmatched: {clear_dir.name}/{clear[key].relative_to(clear_dir).as_posix()} has "
                                f"no partner in {hazy_dir.name}/")
        skipped = [f"{hazy_dir.name}/{s}" for s in skipped_h] + [f"{clear_dir.name}/{s}" for s in skipped_c]
        keys = sorted(set(hazy) & set(clear), key=_natural)
    else:
        hazy, skipped = _image_files(folder)
        keys = sorted(hazy, key=_natural)
    result.notes += [f"skipped: {s}" for s in skipped]
    for key in keys:
        label = hazy[key].relative_to(hazy_dir if result.kind == "paired" else folder).as_posix()
        try:
            source = read_image(hazy[key])
            imap = IntensityMap.for_array(source)
            source_rgb = unit_rgb(source, imap)
            reference = unit_rgb(read_image(clear[key])) if result.kind == "paired" else None
            h, w = (_common_size(source_rgb.shape, reference.shape, label, result.notes) if reference is not None
                    else source_rgb.shape[:2])
        except (ValueError, OSError) as exc:
            result.errors.append(str(exc) if str(hazy[key]) in str(exc) else f"{label}: {exc}")
            log(f"error: {result.errors[-1]}")
            continue
        result.images.append(label)
        for spec, model in methods.items():
            try:
                began = time.perf_counter()
                restored = unit_rgb(restore_array(model, source, options), imap)
                seconds = time.perf_counter() - began
                if reference is not None:
                    restored, clear_rgb = restored[:h, :w], reference[:h, :w]
                    scores = {"psnr": metrics.psnr(clear_rgb, restored), "ssim": metrics.ssim(clear_rgb, restored),
                              "ciede2000": metrics.ciede2000(clear_rgb, restored)}
                else:
                    scores = {"dark_channel_in": metrics.mean_dark_channel(source_rgb),
                              "dark_channel_out": metrics.mean_dark_channel(restored)}
            except (ValueError, RuntimeError, MemoryError) as exc:
                result.errors.append(f"{label} with {spec}: {exc}")
                log(f"error: {result.errors[-1]}")
                continue
            result.scores.setdefault(spec, {})[label] = {k: round(v, 5) for k, v in scores.items()} | {
                "seconds": round(seconds, 3)}
            log(f"{result.name}/{label} {spec}: " + ", ".join(f"{k} {_fmt(k, v)}" for k, v in scores.items())
                + f" ({seconds:.2f} s)")


def _natural(key: str) -> tuple:
    """Sort '2' before '10'."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key))

