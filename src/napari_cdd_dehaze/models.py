"""One name for every way to restore: built-in methods by name, trained models by path.

``load_model("dcp")`` and ``load_model("cap")`` give classical dehazers (no training, no weights),
``load_model("identity")`` the input unchanged (the baseline row of an evaluation), ``load_model("default")``
the dehazing model bundled with the package, ``load_model("derain")`` the bundled deraining model, and anything
else is a run folder, checkpoint folder or ``.safetensors`` file. A built-in name wins over a folder of the same
name in the working directory: write ``./dcp`` for that.
"""
from __future__ import annotations

from pathlib import Path

from .gan.checkpoint import BUNDLED_WEIGHTS, CheckpointError, bundled_file, bundled_model_available, load_restorer
from .gan.networks import ResnetGenerator
from .restore.classical import CLASSICAL, ClassicalDehazer

BUILTIN_MODELS: dict[str, str] = {
    "default": "bundled CDD-GAN dehazing model",
    **({"derain": "bundled DCD-GAN deraining model"} if bundled_model_available("derain") else {}),
    **{name: dehazer.label for name, dehazer in CLASSICAL.items()},
}


def load_model(spec: str | Path) -> ResnetGenerator | ClassicalDehazer:
    """The restorer named by ``spec``: a name from :data:`BUILTIN_MODELS` or a path to trained weights.

    Raises :class:`~napari_cdd_dehaze.gan.checkpoint.CheckpointError` with a one-line reason when there is
    nothing usable at ``spec``.
    """
    name = str(spec)
    if name in CLASSICAL:
        return CLASSICAL[name]
    if name in BUNDLED_WEIGHTS:
        return load_restorer(bundled_file(name))
    if not Path(spec).exists():
        raise CheckpointError(f"{spec}: no such file or folder, and not a built-in model "
                              f"(built-in: {', '.join(BUILTIN_MODELS)})")
    return load_restorer(spec)


# What each inference field of a model file means, in the words `cdd-dehaze info` and the Restore widget use.
INFERENCE_POLICY = {
    "estimate_size": "haze estimated on a copy shrunk to this long side (px), output composed at full size",
    "pool_airlight": "one grey airlight per image (the mean of the head's map)",
    "guided_upsample": "transmission carried to full size along the image's edges (guided filter radius, px)",
    "airlight_floor": "airlight at least He et al.'s estimate (dark channel window, px)",
}


def describe_model(spec: str | Path) -> list[str]:
    """Lines that say what the model named by ``spec`` is: its network, how it runs (the inference policy its file
    carries; ``RestoreOptions``/``--estimate-size``/``--airlight-floor`` override it) and where it comes from.

    Read from the file's header and run config alone, without loading the weights: cheap enough for a widget to
    call whenever its model choice changes."""
    import json

    from .gan.checkpoint import read_metadata, resolve_model_path, stored_config

    name = str(spec)
    if name in CLASSICAL:
        return [f"{name}: {CLASSICAL[name].label}"]
    file = bundled_file(name) if name in BUNDLED_WEIGHTS else resolve_model_path(spec)
    metadata = read_metadata(file)
    c = stored_config(file, metadata)
    lines = [f"{name}: {file}",
             f"network: ResNet generator, width {c.width}, {c.blocks} residual blocks, {c.channels} channel(s), "
             f"output {c.output!r}" + (f", dark channel over {c.dark_patch} px" if c.dark_patch else "")]
    policy = [f"  {field}: {getattr(c, field)} ({meaning})" for field, meaning in INFERENCE_POLICY.items()
              if getattr(c, field)]
    lines += ["inference:"] + policy if policy else ["inference: full resolution (no working scale)"]
    info = json.loads(metadata.get("info", "{}") or "{}")
    if info:
        lines.append("provenance: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    return lines
