"""One name for every way to restore: built-in methods by name, trained models by path.

``load_model("dcp")`` and ``load_model("cap")`` give classical dehazers (no training, no weights),
``load_model("identity")`` the input unchanged (the baseline row of an evaluation), ``load_model("default")``
the model bundled with the package, and anything else is a run folder, checkpoint folder or ``.safetensors``
file. A built-in name wins over a folder of the same name in the working directory: write ``./dcp`` for that.
"""
from __future__ import annotations

from pathlib import Path

from .gan.checkpoint import CheckpointError, load_restorer
from .gan.networks import ResnetGenerator
from .restore.classical import CLASSICAL, ClassicalDehazer

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "default.safetensors"

BUILTIN_MODELS: dict[str, str] = {
    "default": "bundled CDD-GAN dehazing model",
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
    if name == "default":
        if not DEFAULT_WEIGHTS.is_file():
            raise CheckpointError("no default model is bundled with this version yet; use 'dcp' or 'cap' "
                                  "(no training needed) or give a trained run, checkpoint or .safetensors file")
        return load_restorer(DEFAULT_WEIGHTS)
    if not Path(spec).exists():
        raise CheckpointError(f"{spec}: no such file or folder, and not a built-in model "
                              f"(built-in: {', '.join(BUILTIN_MODELS)})")
    return load_restorer(spec)
