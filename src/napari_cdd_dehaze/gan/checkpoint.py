"""Checkpoints: safe to load, atomic to write, and explicit about what is wrong with a bad one.

A checkpoint is a folder ``<run>/checkpoints/step_0001000/`` holding

* ``model.safetensors`` — every network's weights (no pickle, safe to load from anyone);
* ``meta.json`` — format version, method, step, the full training config, last losses;
* ``train_state.pt`` — optimiser and scheduler states and RNG states, loaded with ``weights_only=True``.

The folder is written under a hidden temporary name and renamed into place, so a crash mid-save leaves
the previous checkpoint untouched and never a half-written one under a real name. Next to the
checkpoints, ``<run>/restorer.safetensors`` is the model to run: the (EMA) restorer alone, with its
architecture in the safetensors metadata, so that one file is enough to restore images.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from napari_cdd_dehaze.io.image_files import atomic_write_bytes

from .config import TrainConfig, drop_retired
from .networks import RETIRED_GENERATOR_FIELDS, GeneratorConfig, ResnetGenerator

FORMAT = "napari-cdd-dehaze"
FORMAT_VERSION = 1
MODEL_FILE, META_FILE, STATE_FILE = "model.safetensors", "meta.json", "train_state.pt"
RESTORER_FILE = "restorer.safetensors"
# The models bundled with the package, by the name every entry point takes ("default", "derain").
BUNDLED_WEIGHTS = {name: Path(__file__).parent.parent / "weights" / f"{name}.safetensors"
                   for name in ("default", "derain")}
BUNDLED_ROLES = {"default": "the bundled dehazing model", "derain": "the bundled deraining model"}
BUNDLED_FOR_METHOD = {"cdd-gan": "default", "dcd-gan": "derain"}  # the bundled model each method finetunes
DEFAULT_WEIGHTS = BUNDLED_WEIGHTS["default"]


def bundled_weights(spec: str | Path) -> Path | None:
    """The file of a bundled model when ``spec`` names one ("default", "derain"), else None."""
    return BUNDLED_WEIGHTS.get(str(spec))


def bundled_model_available(name: str = "default") -> bool:
    """Whether the bundled model ``name`` is installed (an installation may lack one)."""
    return BUNDLED_WEIGHTS[name].is_file()


def bundled_file(name: str) -> Path:
    """The installed file of the bundled model ``name``, or a :class:`CheckpointError` that says it is missing."""
    file = BUNDLED_WEIGHTS[name]
    if not file.is_file():
        raise CheckpointError(f"no {name!r} model is bundled with this installation ({file} is missing); use 'dcp' "
                              "or 'cap' (no training needed) or give a trained run, checkpoint or .safetensors file")
    return file


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not fit the model it is loaded into."""


# ---------------------------------------------------------------------------------------------- writing
def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """Where checkpoint ``step`` of a run lives."""
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}"


def save_checkpoint(run_dir: str | Path, step: int, model: nn.Module, meta: dict, train_state: dict,
                    keep: int = 2) -> Path:
    """Write checkpoint ``step`` of ``model`` atomically; keep the newest ``keep`` checkpoints."""
    final = checkpoint_path(run_dir, step)
    folder = final.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".tmp-{final.name}-"))
    try:
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch": torch.__version__, **meta}
        _fsync_write(tmp / MODEL_FILE, save_safetensors_bytes(_tensors(model), metadata={"format": FORMAT}))
        _fsync_write(tmp / META_FILE, json.dumps(meta, indent=2).encode())
        buffer = io.BytesIO()
        torch.save(train_state, buffer)
        _fsync_write(tmp / STATE_FILE, buffer.getvalue())
        if final.exists():  # the same step saved again (e.g. stop right after a periodic save)
            old = folder / f".old-{final.name}-{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for stale in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


GENERATOR_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GeneratorConfig)}  # what older files lack
RESTORER_FIELDS = tuple(f.name for f in dataclasses.fields(GeneratorConfig))  # written as text in the metadata


def save_restorer(path: str | Path, restorer: ResnetGenerator, info: dict | None = None) -> Path:
    """Write one self-describing generator file: weights plus architecture (and ``info``) as metadata."""
    metadata = {"format": FORMAT, "kind": "restorer", "info": json.dumps(info or {}),
                **{k: str(getattr(restorer.config, k)) for k in RESTORER_FIELDS}}
    path = Path(path)
    atomic_write_bytes(path, save_safetensors_bytes(_tensors(restorer), metadata=metadata))
    return path


# ---------------------------------------------------------------------------------------------- reading
def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary and half-written folders are hidden)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step_*") if p.is_dir() and (p / META_FILE).is_file())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, or a :class:`CheckpointError` saying what is wrong."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        tensors = load_safetensors_bytes(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8:8 + header_len]).get("__metadata__", {}) or {}
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file (corrupt or truncated: {exc})") from exc
    return tensors, metadata


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file from its header alone (the weights are not read)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            header = f.read(int.from_bytes(f.read(8), "little"))
        return json.loads(header).get("__metadata__", {}) or {}
    except (ValueError, json.JSONDecodeError, MemoryError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file (corrupt or truncated: {exc})") from exc


def stored_config(file: Path, metadata: dict[str, str] | None = None) -> GeneratorConfig:
    """The restorer's network of a model file: from a restorer file's metadata, or from the run config beside a
    checkpoint's weights. ``metadata``: the file's, when the caller has read it already."""
    metadata = read_metadata(file) if metadata is None else metadata
    if metadata.get("kind") == "restorer":
        return restorer_config(metadata, file)
    return TrainConfig.from_dict(read_meta(file.parent)["config"]).generator_config()


def read_meta(checkpoint: Path) -> dict:
    path = checkpoint / META_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{checkpoint}: not a checkpoint folder (no {META_FILE})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt metadata ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer version (format {meta['format_version']}); upgrade")
    return meta


def load_weights(module: nn.Module, tensors: dict[str, torch.Tensor], source: str | Path, strict: bool = True,
                 prefix: str = "") -> list[str]:
    """Copy ``tensors`` (keys under ``prefix``) into ``module`` after checking names and shapes.

    With ``strict`` every weight of the module must be present; otherwise missing ones are left as
    they are and their names returned. A shape mismatch is always an error that names the tensor and
    both shapes.
    """
    own = module.state_dict()
    theirs = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    mismatched = [f"{k}: checkpoint {tuple(theirs[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in own.items() if k in theirs and theirs[k].shape != v.shape]
    if mismatched:
        raise CheckpointError(f"{source}: weights of the wrong shape for this model (was it trained with another "
                              f"width, depth or channel count?) — " + "; ".join(mismatched[:3])
                              + (f"; and {len(mismatched) - 3} more" if len(mismatched) > 3 else ""))
    missing = [k for k in own if k not in theirs]
    if strict and missing:
        raise CheckpointError(f"{source}: {len(missing)} weight(s) missing, e.g. {prefix}{missing[0]}")
    if not any(k in theirs for k in own):
        raise CheckpointError(f"{source}: holds no weights for this network (expected keys under {prefix!r})")
    with torch.no_grad():
        for k, v in own.items():
            if k in theirs:
                v.copy_(theirs[k])
    return missing


def load_train_state(checkpoint: Path) -> dict:
    path = checkpoint / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{checkpoint}: no {STATE_FILE}, cannot resume (weights can still be used with --init)"
                              ) from None
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt training state ({type(exc).__name__}: {exc})") from exc


def resolve_model_path(path: str | Path) -> Path:
    """A run folder, checkpoint folder or safetensors file → the safetensors file to read."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / RESTORER_FILE).is_file():
        return path / RESTORER_FILE
    if (path / MODEL_FILE).is_file():
        return path / MODEL_FILE
    if path.is_dir() and (latest := latest_checkpoint(path)) is not None:
        return latest / MODEL_FILE
    raise CheckpointError(f"{path}: no model found (expected a .safetensors file, a checkpoint folder or a run folder)")


def restorer_config(metadata: dict[str, str], file: Path) -> GeneratorConfig:
    """The network of a restorer file, from its metadata (``file`` names it in errors).

    Fields written only by later versions (all but channels, width and blocks) take :class:`GeneratorConfig`'s
    defaults when absent, which are what older files hold.
    """
    try:
        metadata = drop_retired(metadata, RETIRED_GENERATOR_FIELDS, "model")
        fields = {k: metadata[k] for k in ("channels", "width", "blocks")}
        fields |= {k: metadata[k] for k in RESTORER_FIELDS if k in metadata}
        return GeneratorConfig(**{k: type(GENERATOR_DEFAULTS[k])(v) for k, v in fields.items()})
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{file}: restorer metadata incomplete ({exc})") from exc


def load_restorer(path: str | Path, prefer_ema: bool = True) -> ResnetGenerator:
    """Build and load the restorer stored at ``path`` (any form accepted by :func:`resolve_model_path`)."""
    file = resolve_model_path(path)
    tensors, metadata = read_safetensors(file)
    prefix = ""
    if metadata.get("kind") != "restorer":
        prefix = "ema_restorer." if prefer_ema and any(k.startswith("ema_restorer.") for k in tensors) else "restorer."
    restorer = ResnetGenerator(stored_config(file, metadata))
    load_weights(restorer, tensors, file, strict=True, prefix=prefix)
    return restorer.eval()
