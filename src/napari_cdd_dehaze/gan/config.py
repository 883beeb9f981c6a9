"""Training configuration: one typed record, named presets, validated once and saved with every checkpoint."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .losses import GAN_MODES
from .networks import GeneratorConfig

METHODS = ("cdd-gan", "dcd-gan")
NEGATIVE_MODES = ("internal", "generated", "both")
# fp16 trains with one gradient scaler per optimiser; auto is bf16 where the device computes it natively, else fp32
PRECISIONS = ("fp32", "bf16", "fp16", "auto")


# The concerns a field belongs to, in the order recipes, ``--help`` and the docs list them.
GROUPS = ("model", "inference", "data", "optimisation", "losses", "contrast", "run")


def _field(group: str, default: Any, resumable: bool = False) -> Any:
    """A :class:`TrainConfig` field of ``group``; ``resumable``: a resumed run may change it (how long and where it
    runs, the per-process batch, and how the restorer composes its output: fields without weights of their own)."""
    return dataclasses.field(default=default, metadata={"group": group, "resumable": resumable})


@dataclass
class TrainConfig:
    """Everything that decides what a training run computes, one field per setting, grouped by concern.

    Each field is declared once, here: recipes (YAML), checkpoints and the command line's options are written, read
    and listed from ``dataclasses.fields`` (:meth:`fields_of`), and :meth:`generator_config` takes the model fields
    that :class:`~napari_cdd_dehaze.gan.networks.GeneratorConfig` declares. The defaults are CDD-GAN's ``paper``
    preset (see :data:`PRESETS` for where each value comes from); :func:`preset` gives each method's presets
    (:data:`METHOD_PRESETS`). Fields only CDD-GAN reads: ``lambda_diversity``, ``noise_dim``, ``head_momentum``
    (its negative generators) and the haze terms (``lambda_rehaze_cycle``, ``lambda_hazed_clean``,
    ``lambda_dark_match``).
    """

    # model: what is trained (GeneratorConfig's fields, the critic's width)
    method: str = _field("model", "cdd-gan")
    channels: int = _field("model", 3)
    width: int = _field("model", 64)
    blocks: int = _field("model", 9)
    upsample: str = _field("model", "resize")
    # "image"; "scattering": generators predict transmission and airlight (networks.py); "rain": the same plus an
    # additive streak layer
    output: str = _field("model", "image")
    dark_patch: int = _field("model", 0)  # scattering/rain heads: also see the input's dark channel over this window
    disc_width: int = _field("model", 64)
    # inference: how a scattering restorer runs, stored with its weights (the bundled model uses all four)
    estimate_size: int = _field("inference", 0)  # long side at which t and a are estimated (0: full resolution)
    # 1 = one grey airlight per image, the mean of the head's map (per training crop too: it trains as it runs)
    pool_airlight: int = _field("inference", 0)
    # with estimate_size, at inference only: t carried to full size by a fast guided filter of this radius
    # (working-scale pixels) instead of a bilinear resize
    guided_upsample: int = _field("inference", 0, resumable=True)
    # with estimate_size: compose with at least He et al.'s grey airlight of the input (dark channel over this odd
    # window), the head's veil kept; in training (each crop) and at inference (the working-scale copy)
    airlight_floor: int = _field("inference", 0, resumable=True)
    # data
    crop: int = _field("data", 256)
    load_size: int = _field("data", 0)  # short side rescaled to this before cropping; 0 keeps the image's own size
    batch_size: int = _field("data", 1, resumable=True)  # per process: a run can move to another number of them
    # optimisation
    steps: int = _field("optimisation", 400_000, resumable=True)
    # wall-clock budget of training, over all resumes (checkpoints and waiting excluded); 0: none, ``steps`` only
    minutes: float = _field("optimisation", 0.0, resumable=True)
    lr: float = _field("optimisation", 2e-4)
    betas: tuple[float, float] = _field("optimisation", (0.5, 0.999))
    decay_from: float = _field("optimisation", 0.5)  # fraction of steps after which the lr decays linearly to 0
    gan_mode: str = _field("optimisation", "lsgan")
    clean_critic_sees: str = _field("optimisation", "image")  # or "relative": each image over its own mean light
    generator_ema: float = _field("optimisation", 0.999)  # EMA of the restorer's weights (what ships); 0 disables
    # losses: the objective's weights and the draws of the haze terms
    lambda_gan: float = _field("losses", 1.0)
    lambda_nce: float = _field("losses", 2.0)
    lambda_cycle: float = _field("losses", 10.0)
    lambda_identity: float = _field("losses", 1.0)
    lambda_diversity: float = _field("losses", 0.1)
    rehaze_airlight: tuple[float, float] = _field("losses", (0.6, 1.0))  # grey airlights the haze terms haze with
    lambda_rehaze_cycle: float = _field("losses", 0.0)  # restore the output hazed again with a classical t
    rehaze_power: tuple[float, float] = _field("losses", (0.2, 1.0))  # that t: x's dark-channel t to a power drawn here
    lambda_hazed_clean: float = _field("losses", 0.0)  # restore clean photos hazed with the hazy batch's classical t
    hazed_clean_power: tuple[float, float] = _field("losses", (0.2, 1.0))  # ... to a power drawn here (> 1: denser)
    lambda_dark_match: float = _field("losses", 0.0)  # G(x)'s dark channel against its clean partner's
    # contrast: the PatchNCE terms and the negative generators
    nce_layers: tuple[int, ...] = _field("contrast", (0, 4, 8, 12, 16))
    num_patches: int = _field("contrast", 256)
    temperature: float = _field("contrast", 0.07)
    negatives: str = _field("contrast", "both")  # in-image ("internal"), "generated" by the negative generators, "both"
    head_dim: int = _field("contrast", 256)
    noise_dim: int = _field("contrast", 64)
    head_momentum: float = _field("contrast", 0.999)
    # run
    seed: int = _field("run", 0)
    precision: str = _field("run", "auto")
    device: str = _field("run", "auto", resumable=True)
    checkpoint_every: int = _field("run", 1000, resumable=True)
    keep_checkpoints: int = _field("run", 2, resumable=True)

    @classmethod
    def fields_of(cls, group: str | None = None, resumable: bool | None = None) -> tuple[str, ...]:
        """The names of the fields of ``group`` (all: None), optionally only those a resumed run may change or not."""
        return tuple(f.name for f in dataclasses.fields(cls)
                     if group in (None, f.metadata["group"]) and resumable in (None, f.metadata["resumable"]))

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        self.rehaze_airlight = tuple(float(a) for a in self.rehaze_airlight)
        self.rehaze_power = tuple(float(p) for p in self.rehaze_power)
        self.hazed_clean_power = tuple(float(p) for p in self.hazed_clean_power)
        self.nce_layers = tuple(int(i) for i in self.nce_layers)
        self.validate()

    def validate(self) -> None:
        checks = [
            (self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}"),
            (self.method != "dcd-gan" or self.negatives == "internal",
             f"dcd-gan has no negative generators: negatives must be 'internal', got {self.negatives!r}"),
            (self.gan_mode in GAN_MODES, f"gan_mode must be one of {GAN_MODES}, got {self.gan_mode!r}"),
            (self.clean_critic_sees in ("image", "relative"),
             f"clean_critic_sees must be 'image' or 'relative', got {self.clean_critic_sees!r}"),
            (self.negatives in NEGATIVE_MODES, f"negatives must be one of {NEGATIVE_MODES}, got {self.negatives!r}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}"),
            (self.crop >= 16 and self.crop % 4 == 0, f"crop must be a multiple of 4 and at least 16, got {self.crop}"),
            (self.load_size == 0 or self.load_size >= self.crop,
             f"load_size ({self.load_size}) must be 0 or at least crop ({self.crop})"),
            (self.steps >= 1, f"steps must be at least 1, got {self.steps}"),
            (self.minutes >= 0, f"minutes must be 0 (no time limit) or positive, got {self.minutes}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.num_patches >= 2, f"num_patches must be at least 2, got {self.num_patches}"),
            (0 <= self.decay_from <= 1, f"decay_from must lie in [0, 1], got {self.decay_from}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (len(self.nce_layers) > 0, "nce_layers must name at least one encoder layer"),
            (self.checkpoint_every >= 1, f"checkpoint_every must be at least 1, got {self.checkpoint_every}"),
            (self.keep_checkpoints >= 1, f"keep_checkpoints must be at least 1, got {self.keep_checkpoints}"),
            (len(self.rehaze_airlight) == 2 and 0 < self.rehaze_airlight[0] < self.rehaze_airlight[1] <= 1,
             f"rehaze_airlight must be two values 0 < low < high <= 1, got {self.rehaze_airlight}"),
            (self.lambda_rehaze_cycle >= 0,
             f"lambda_rehaze_cycle must be 0 or positive, got {self.lambda_rehaze_cycle}"),
            (self.lambda_rehaze_cycle == 0 or self.method == "cdd-gan",
             f"lambda_rehaze_cycle needs method cdd-gan, got {self.method!r}"),
            (len(self.rehaze_power) == 2 and 0 < self.rehaze_power[0] <= self.rehaze_power[1],
             f"rehaze_power must be two values 0 < low <= high, got {self.rehaze_power}"),
            (self.lambda_hazed_clean >= 0, f"lambda_hazed_clean must be 0 or positive, got {self.lambda_hazed_clean}"),
            (self.lambda_hazed_clean == 0 or self.method == "cdd-gan",
             f"lambda_hazed_clean needs method cdd-gan, got {self.method!r}"),
            (len(self.hazed_clean_power) == 2 and 0 < self.hazed_clean_power[0] <= self.hazed_clean_power[1],
             f"hazed_clean_power must be two values 0 < low <= high, got {self.hazed_clean_power}"),
            (self.lambda_dark_match >= 0, f"lambda_dark_match must be 0 or positive, got {self.lambda_dark_match}"),
            (self.lambda_dark_match == 0 or self.method == "cdd-gan",
             f"lambda_dark_match needs method cdd-gan, got {self.method!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        encoder_layers = 10 + self.blocks
        bad = [i for i in self.nce_layers if not 0 <= i < encoder_layers]
        if bad:
            raise ValueError(f"nce_layers {bad} lie outside the encoder (layers 0..{encoder_layers - 1} "
                             f"for {self.blocks} residual blocks)")
        self.generator_config()  # validates channels/width/blocks/upsample

    def generator_config(self, role: str = "restore") -> GeneratorConfig:
        """The restorer's (``role="restore"``) or the degrader's (``"degrade"``) network configuration."""
        if self.output not in RUN_OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(RUN_OUTPUTS)}, got {self.output!r}")
        restorer = role == "restore"
        values = {f.name: getattr(self, f.name) if restorer or not f.metadata.get("restorer_only") else f.default
                  for f in dataclasses.fields(GeneratorConfig) if f.name != "output"}
        return GeneratorConfig(output=RUN_OUTPUTS[self.output][0 if restorer else 1], **values)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"], d["nce_layers"] = list(self.betas), list(self.nce_layers)
        d["rehaze_airlight"] = list(self.rehaze_airlight)
        d["rehaze_power"] = list(self.rehaze_power)
        d["hazed_clean_power"] = list(self.hazed_clean_power)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The config saved as ``d``; fields of earlier versions that no longer exist are accepted at the value
        that meant "off" (so older runs resume) and refused with a message at any other."""
        d = drop_retired(d, RETIRED_FIELDS, "run")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# Fields earlier versions had, at the value that turned them off (none of the bundled models used them).
RETIRED_FIELDS = {"refine": 0, "airlight": "predicted", "dark_target": 0.0, "lambda_rehaze": 0.0,
                  "dark_match_statistic": "mean"}


def drop_retired(values: dict, retired: dict, what: str) -> dict:
    """``values`` without the ``retired`` keys, which must hold their "off" value (compared as text, since file
    metadata holds strings); a ValueError names a key that holds another."""
    live = [k for k in retired if k in values and str(values[k]) != str(retired[k])
            and not (isinstance(retired[k], float) and _as_float(values[k]) == retired[k])]
    if live:
        raise ValueError(f"this {what} uses {', '.join(f'{k}={values[k]!r}' for k in live)}, an option this version "
                         f"no longer has; an earlier release of napari-cdd-dehaze can still run it")
    return {k: v for k, v in values.items() if k not in retired}


def _as_float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# A run's ``output`` → its (restorer, degrader) generator outputs (networks.GeneratorConfig.output).
RUN_OUTPUTS = {"image": ("image", "image"), "scattering": ("dehaze", "haze"), "rain": ("derain", "rain")}


PRESETS: dict[str, dict] = {
    # The lineage's values (CUT/NEGCUT/DCLGAN): width 64, 9 blocks, 256² crops, Adam 2e-4 (0.5, 0.999),
    # τ 0.07, 256 patches, layers 0,4,8,12,16, λ_GAN 1, λ_NCE 2 and λ_idt 1 (DCLGAN), λ_cyc 10 (CycleGAN,
    # whose framework CDD-GAN names), constant lr for half the run then linear decay. Deviation:
    # resize-then-convolve upsampling instead of transposed convolutions (no checkerboard texture).
    "paper": {},
    # Laptop/CPU finetuning: width 32, 6 blocks, 128² crops, 128 patches; layer 16 does not exist with
    # 6 blocks, so the deepest tap is the last residual block (15).
    "cpu": dict(width=32, blocks=6, crop=128, num_patches=128, nce_layers=(0, 4, 8, 12, 15), steps=5000,
                disc_width=32, checkpoint_every=250),
    # The bundled default model's recipe (training/configs/default.yaml, which a test keeps equal to this):
    # the "cpu" network with the scattering-model head (fed the input's 15×15 dark channel too), trained on whole
    # images at 96 pixels with the haze transplant, the haze cycle and the dark-channel match, a clean critic
    # that sees relative light, and the airlight floor; and how it runs (the haze estimated on a 128-pixel copy,
    # one airlight per image, t carried to full size along the image's edges). The shipped weights trained their
    # first 1600 steps without the floor (see that file). Finetuning the default model with this preset
    # continues its recipe.
    "default": dict(width=32, blocks=6, crop=96, load_size=96, batch_size=2, num_patches=128,
                    nce_layers=(0, 4, 8, 12, 15), steps=3200, disc_width=32, checkpoint_every=200,
                    keep_checkpoints=4, output="scattering", dark_patch=15, lambda_gan=4.0, lambda_nce=1.0,
                    lambda_cycle=1.0, lambda_identity=0.5, estimate_size=128, pool_airlight=1, guided_upsample=8,
                    lambda_hazed_clean=16.0, lambda_rehaze_cycle=4.0, lambda_dark_match=4.0,
                    clean_critic_sees="relative", airlight_floor=3, precision="fp32"),
}
# Finetuning a model on a user's two folders for a wall-clock budget (``--init MODEL``; the network is the start
# model's). The bundled model's recipe ("default": its losses keep the output a scattering-model inversion, so colour
# cannot drift) at a constant learning rate, so a run stopped by its budget, by the user or at any checkpoint ends at
# a model as good as its steps, not one waiting for the decay. How it was chosen: docs/training.md ("Finetuning").
# Precision "auto" (the shipped weights trained in fp32, before bf16 was measured to train the same curve).
PRESETS["finetune"] = {**PRESETS["default"], "precision": "auto", "decay_from": 1.0, "steps": 2000,
                       "minutes": 10.0, "checkpoint_every": 50, "keep_checkpoints": 2}


DCD_PRESETS: dict[str, dict] = {
    # DCD-GAN's public release (cschenxiang/DCD-GAN, options and dcd_model.py): Adam 1e-4 (0.5, 0.999),
    # hinge GAN, images loaded at 512 and cropped to 256, layers 4,8,12,16, 256 patches, τ 0.07, λ_NCE 2,
    # λ_idt 1 (L1), constant lr for half the run then linear decay. Its cycle term is declared with weight
    # 1 (``cyc_L1``) but never added to the objective; here it is optimised, with that weight. Deviations:
    # the load resizes the short side to 512 keeping the aspect (the release squashes to 512×512);
    # plain stride-2 downsampling and resize-then-convolve upsampling (the release anti-aliases both);
    # N(0, 0.02) initialisation (the release uses Xavier); an EMA of the restorer is shipped (not in the
    # release); its unused L1-to-unpaired-target and FFT terms are left out (they were never optimised).
    "paper": {"method": "dcd-gan", "negatives": "internal", "lr": 1e-4, "gan_mode": "hinge", "load_size": 512,
              "nce_layers": (4, 8, 12, 16), "lambda_nce": 2.0, "lambda_identity": 1.0, "lambda_cycle": 1.0},
    # Laptop/CPU: as "paper" at the sizes of CDD-GAN's "cpu" preset (width 32, 6 blocks, 128² crops, 128
    # patches, deepest tap the last block, 15). Images keep their own size (no 512 load): shrinking a
    # photo thins its rain streaks below a pixel, and a finetuned model runs at the images' own scale.
    # Deviation: the rain output head (networks.py: a grey additive streak layer and a veil, I = (J + s)·t +
    # a·(1 − t)) instead of a free image. In 120-step test runs (3 seeds) the free image fell *below* the
    # rainy input (13.9–14.7 dB against 16.1) while the rain head rose above it (18.3–18.6 dB).
    "cpu": {"method": "dcd-gan", "negatives": "internal", "lr": 1e-4, "gan_mode": "hinge",
            "nce_layers": (4, 8, 12, 15), "lambda_nce": 2.0, "lambda_identity": 1.0, "lambda_cycle": 1.0,
            "width": 32, "blocks": 6, "crop": 128, "num_patches": 128, "steps": 5000, "disc_width": 32,
            "checkpoint_every": 250, "output": "rain"},
}
DCD_PRESETS["finetune"] = {**DCD_PRESETS["cpu"], "decay_from": 1.0, "steps": 2000, "minutes": 10.0,
                           "checkpoint_every": 50, "keep_checkpoints": 2}

METHOD_PRESETS: dict[str, dict[str, dict]] = {"cdd-gan": PRESETS, "dcd-gan": DCD_PRESETS}


def preset(name: str, method: str = "cdd-gan", **overrides) -> TrainConfig:
    """Preset ``name`` of ``method`` with ``overrides`` applied (``None`` values are ignored).

    Every method has a ``paper`` preset (the lineage's values) and a ``cpu`` preset (laptop-sized).
    """
    if method not in METHOD_PRESETS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHOD_PRESETS)}")
    presets = METHOD_PRESETS[method]
    if name not in presets:
        raise ValueError(f"unknown preset {name!r} for {method}; choose one of {sorted(presets)}")
    values = {**presets[name], **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig(**{"method": method, **values})
