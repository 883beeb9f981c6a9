"""The generator of the CUT/CycleGAN family, written for contrastive training and for restoration at any size.

* :class:`GeneratorConfig` — the one declaration of what rebuilds a generator from its weights.
* :class:`ResnetGenerator` — encoder (stem, two stride-2 downsamplings, residual blocks) and decoder
  (two upsamplings, output conv, tanh, or a scattering head). The encoder is one flat ``nn.Sequential`` so that a
  feature tap is named by a layer index: with the default layout, index 0 is the reflection-padded input, 4 the
  first downsampling conv, 8 the second downsampling's norm, 10… the residual blocks (the ``--no_antialias``
  indexing of CUT, so the lineage's layer lists ``0,4,8,12,16`` mean the same thing here).
* :class:`InstanceNorm` — whose statistics can be recorded and imposed (tiles), and :class:`ImageAirlight`,
  the whole image's airlight imposed on a pass over one window of it.

The critic, projection heads and negative generators that only training needs are in
:mod:`~napari_cdd_dehaze.gan.training_networks`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from napari_cdd_dehaze.imaging.primitives import dark_channel, estimate_airlight

OUTPUTS = ("image", "dehaze", "haze", "derain", "rain")
HEAD_MAPS = {"dehaze": 2, "haze": 2, "derain": 3, "rain": 3}  # transmission, airlight (, streaks)
MIN_TRANSMISSION = 0.1  # a dehazing output amplifies the input at most 10× (He et al.'s t0)
# Logit offsets of the scattering head at init: t ≈ 0.89 and a ≈ 0.82, a mild dehaze. Starting nearer the
# identity (t ≈ 0.96, offset 3) left the sigmoid's slope at 0.04 and a run stuck at the identity: the L1
# cycle and identity terms pin both generators there before the adversarial gradient can move them.
TRANSMISSION_OFFSET, AIRLIGHT_OFFSET = 2.0, 1.5
MIN_SIDE = 16  # the smallest input side the engine runs: smaller ones are padded up (two downsamplings, reflect pads)
MIN_ESTIMATE_SIZE = 64  # an estimate_size below this leaves too few pixels for the encoder's two downsamplings
STREAK_OFFSET = -3.0  # streak layer ≈ 0.05 at init: near the identity, with a usable slope (0.045)


# Generator fields of earlier versions, at the value that turned them off (no bundled model used them).
RETIRED_GENERATOR_FIELDS = {"refine": 0, "airlight": "predicted", "dark_target": 0.0}
# The restorer's inference policy: stored with its weights, read by the restore engine, never given to a degrader.
RESTORER_ONLY = {"restorer_only": True}


@dataclass(frozen=True)
class GeneratorConfig:
    """What is needed to rebuild a generator from its weights (stored in every checkpoint and restorer file).

    The one declaration of a generator's fields: checkpoints write and read them, and a training config takes
    them over, from ``dataclasses.fields`` of this class. Fields marked :data:`RESTORER_ONLY` are how a dehazing
    restorer runs (its working scale); the bundled model uses all four.
    """

    channels: int = 3
    width: int = 64
    blocks: int = 9
    upsample: str = "resize"  # "resize" (nearest ×2 then conv: no checkerboard) or "transpose"
    output: str = "image"     # "image" (tanh); the scattering model: "dehaze" (restorer) / "haze" (degrader);
    #                           with an additive streak layer on top: "derain" / "rain"
    dark_patch: int = 0       # scattering heads only: also feed the head the dark channel over this square
    #                           window (odd; 15 is He et al.'s); 0 = none
    # "dehaze" only, at inference: the long side (pixels) at which t and a are estimated; a larger image is shrunk
    # for the estimate and composed at full size (restore/working_scale.py)
    estimate_size: int = field(default=0, metadata=RESTORER_ONLY)
    # with estimate_size: 1 replaces the head's grey airlight map by its mean over the image (over the
    # working-scale copy at inference, over each crop in training)
    pool_airlight: int = field(default=0, metadata=RESTORER_ONLY)
    # with estimate_size: carry t to full size with a fast guided filter of this radius (working-scale pixels;
    # the input's grey as guide); 0 = bilinear
    guided_upsample: int = field(default=0, metadata=RESTORER_ONLY)
    # with estimate_size: compose with at least He et al.'s grey airlight of the input (the working-scale copy at
    # inference, each crop in training; dark channel over this odd window), t changed so that the head's veil
    # a·(1 − t) stays as it was; 0 = the head's airlight (floor_airlight)
    airlight_floor: int = field(default=0, metadata=RESTORER_ONLY)

    def __post_init__(self) -> None:
        if self.channels < 1 or self.width < 1 or self.blocks < 1:
            raise ValueError(f"channels, width and blocks must be positive, got {self}")
        if self.upsample not in ("resize", "transpose"):
            raise ValueError(f"upsample must be 'resize' or 'transpose', got {self.upsample!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if self.dark_patch and (self.output == "image" or self.dark_patch < 0 or self.dark_patch % 2 == 0):
            raise ValueError(f"dark_patch must be 0 or an odd size for a scattering output, got {self.dark_patch} "
                             f"with output {self.output!r}")
        if self.estimate_size and (self.output != "dehaze" or self.estimate_size < MIN_ESTIMATE_SIZE):
            raise ValueError(f"estimate_size must be 0 or at least {MIN_ESTIMATE_SIZE} for the 'dehaze' output, "
                             f"got {self.estimate_size} with output {self.output!r}")
        if self.pool_airlight not in (0, 1) or (self.pool_airlight and not self.estimate_size):
            raise ValueError(f"pool_airlight must be 0 or 1, and 1 only with an estimate_size, "
                             f"got {self.pool_airlight}")
        if self.guided_upsample < 0 or (self.guided_upsample and not self.estimate_size):
            raise ValueError(f"guided_upsample must be 0 or a positive radius, and positive only with an "
                             f"estimate_size, got {self.guided_upsample}")
        floor = self.airlight_floor
        if floor < 0 or (floor and (floor % 2 == 0 or not self.estimate_size)):
            raise ValueError(f"airlight_floor must be 0 or an odd window, and above 0 only with an estimate_size, "
                             f"got {self.airlight_floor}")

    @property
    def head_reach(self) -> int:
        """How far (pixels) the head's output reads beyond its 7×7 conv: the dark channel's window."""
        return self.dark_patch // 2


class InstanceNorm(nn.InstanceNorm2d):
    """InstanceNorm2d (no affine, no running statistics) whose statistics can be recorded and imposed.

    Tiled restoration must normalise every tile with the statistics of the *whole* image, or each tile
    gets its own contrast and colour and the seams show. With ``record`` set, a forward stores the
    per-channel mean and variance it used; with ``imposed`` set, it normalises with those instead of the
    input's own. Neither set (training, whole-image inference): exactly ``nn.InstanceNorm2d``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.record = False
        self.recorded: tuple[torch.Tensor, torch.Tensor] | None = None
        self.imposed: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.imposed is None and not self.record:
            if x.shape[0] == 1 and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
                # one image: batch norm's statistics are its own, and its kernel keeps channels-last (4× faster
                # there, the same maths); exported graphs keep InstanceNormalization
                return F.batch_norm(x, None, None, training=True, eps=self.eps)
            return super().forward(x)
        if self.imposed is not None:
            mean, var = self.imposed
        else:
            var, mean = torch.var_mean(x.float(), dim=(2, 3), keepdim=True, correction=0)
            self.recorded = (mean, var)
        return ((x.float() - mean) * torch.rsqrt(var + self.eps)).to(x.dtype)


def _conv_norm_relu(cin: int, cout: int, **conv_kw) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, **conv_kw), InstanceNorm(cout), nn.ReLU(inplace=True)]


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), *_conv_norm_relu(channels, channels, kernel_size=3),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, kernel_size=3), InstanceNorm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def floor_airlight(unit: torch.Tensor, t: torch.Tensor, a: torch.Tensor, patch: int,
                   bright: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """t' and a' (the shapes of t and a): a' = max(a, the grey mean of He et al.'s airlight of ``unit``
    (B, C, h, w) in [0, 1], dark channel over ``patch``), t' = 1 − a·(1 − t)/a', so that the veil a·(1 − t)
    the output subtracts stays the head's and only the contrast it restores follows the brighter airlight.

    Why: the transplant-trained restorers read the veil's brightness poorly, 0.85–0.87 under a grey airlight
    of 0.7 and 0.95 under one of 1 (validation suites), and under bright haze a low airlight leaves the
    scene dim and flat. He et al.'s estimate (the brightest of the haziest pixels) is right where some pixel
    is nearly all veil and too low where none is (a dim or lightly hazed scene), hence a floor, not a swap:
    on our validation suites the swap lost 3.6 dB on dim scenes, the floor lost none. In training the floor
    is part of the composition (:meth:`ResnetGenerator.scattering_maps`), so t and a learn with it; the
    estimate is a prior of the input, so no gradient flows through it. Applying it twice changes nothing
    (the veil is kept, and a' is already at least the estimate) unless t was clamped.
    """
    if bright is None:  # ``bright`` given: the whole image's estimate, for a pass over one window of it
        with torch.no_grad():
            bright = estimate_airlight(unit.detach().float(), patch).mean(dim=1, keepdim=True)  # (B, 1, 1, 1)
    bright = bright.to(a.dtype)
    floor = torch.maximum(a, bright)
    return (1 - a * (1 - t) / floor).clamp(MIN_TRANSMISSION, 1), floor


@dataclass(frozen=True)
class ImageAirlight:
    """The whole image's airlight terms, imposed on a pass over one window of it (a band, a tile).

    ``pooled`` (1, 1, 1, 1): the mean of the head's airlight map over the image (``pool_airlight``);
    ``estimate`` (1, 1, 1, 1): He et al.'s grey airlight of the image (``airlight_floor``). None: the window's own.
    """

    pooled: torch.Tensor | None = None
    estimate: torch.Tensor | None = None


class ResnetGenerator(nn.Module):
    """Image-to-image ResNet generator; input and output in [-1, 1], spatial size a multiple of 4."""

    def __init__(self, config: GeneratorConfig = GeneratorConfig()) -> None:
        super().__init__()
        self.config = config
        c, w = config.channels, config.width
        encoder: list[nn.Module] = [nn.ReflectionPad2d(3), *_conv_norm_relu(c, w, kernel_size=7)]
        for mult in (1, 2):
            encoder += _conv_norm_relu(w * mult, w * mult * 2, kernel_size=3, stride=2, padding=1)
        encoder += [ResidualBlock(w * 4) for _ in range(config.blocks)]
        self.encoder = nn.Sequential(*encoder)

        decoder: list[nn.Module] = []
        for mult in (4, 2):
            if config.upsample == "resize":
                decoder += [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1),
                            *_conv_norm_relu(w * mult, w * mult // 2, kernel_size=3)]
            else:
                decoder += [nn.ConvTranspose2d(w * mult, w * mult // 2, 3, stride=2, padding=1, output_padding=1),
                            InstanceNorm(w * mult // 2), nn.ReLU(inplace=True)]
        self.head: nn.Sequential | None = None
        if config.output == "image":
            decoder += [nn.ReflectionPad2d(3), nn.Conv2d(w, c, kernel_size=7), nn.Tanh()]
        else:  # transmission, (grey) airlight (and streaks) from the features *and* the input's intensities
            priors = 1 + (config.dark_patch > 0)
            self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(w + c + priors, HEAD_MAPS[config.output], 7))
        self.decoder = nn.Sequential(*decoder)
        # A pass over one window of an image (a band, a tile) composes with the whole image's airlight: the
        # restore engine records or finds it once and imposes it here (see :class:`ImageAirlight`).
        self.imposed_airlight: ImageAirlight | None = None
        self.record_airlight, self.recorded_airlight = False, None

    def decode(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The decoder's output: the image, or the scattering head's maps."""
        decoded = self.decoder(features)
        if self.head is None:
            return decoded
        return self.head(torch.cat([decoded, self.intensity_priors(x)], dim=1))

    def intensity_priors(self, x: torch.Tensor) -> torch.Tensor:
        """What the scattering head sees of the input besides the decoded features.

        The input itself and its per-pixel channel minimum (the dark channel before the spatial minimum).
        Without them the head cannot tell how hazy an image is: the first InstanceNorm removes any affine
        change of intensity, and uniform haze, I = J·t + a·(1 − t), is one. Measured: a head fed only the
        normalised features predicted the same t ≈ 0.98 for hazy and clear images after 400 steps. With
        ``dark_patch``, also the dark channel proper (the channel minimum's minimum over a square window,
        He et al.'s haze statistic), which a linear head cannot compute from the pixels it sees.
        """
        darkest = x.amin(dim=1, keepdim=True)
        if not self.config.dark_patch:
            return torch.cat([x, darkest], dim=1)
        dark = dark_channel(darkest, self.config.dark_patch)
        return torch.cat([x, darkest, dark], dim=1)

    def compose(self, x: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        """The output image from the decoder's maps.

        ``"image"``: the decoder's output itself. The scattering model I = J·t + a·(1 − t) instead ties the
        output to the input pixel by pixel: the decoder predicts a transmission t ∈ [0.1, 1] and a grey
        airlight a ∈ [0, 1] per pixel, and ``"dehaze"`` returns J = (I − a)/t + a, ``"haze"`` returns
        I·t + a·(1 − t). Every channel gets the same affine map, so hue cannot drift; only contrast and
        the veil change. ``"derain"``/``"rain"`` add a third map, a grey
        streak layer s ∈ [0, 1] (rain streaks are bright, additive and colourless): I = (J + s)·t + a·(1 − t),
        the rain synthesis of :func:`~napari_cdd_dehaze.imaging.synthesis.add_rain` with its veil. The offsets start
        the network near the identity.
        """
        output = self.config.output
        if output == "image":
            return decoded
        unit = (x + 1) / 2
        t, a = self.scattering_maps(x, decoded)
        if output == "dehaze":
            y = (unit - a) / t + a
        elif output == "haze":
            y = unit * t + a * (1 - t)
        else:  # rain: streaks s ≥ 0 added to the scene, then the veil: I = (J + s)·t + a·(1 − t)
            streaks = torch.sigmoid(decoded[:, 2:3] + STREAK_OFFSET)
            y = (unit - a) / t + a - streaks if output == "derain" else (unit + streaks) * t + a * (1 - t)
        return y.clamp(0, 1) * 2 - 1

    def scattering_maps(self, x: torch.Tensor, decoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The transmission t (B, 1, H, W) and grey airlight a (B, 1, H, W; (B, 1, 1, 1) pooled) in [0, 1]
        that :meth:`compose` applies, from the head's maps ``decoded`` of input ``x``; with ``airlight_floor``,
        floored on ``x`` (:func:`floor_airlight`)."""
        t = MIN_TRANSMISSION + (1 - MIN_TRANSMISSION) * torch.sigmoid(decoded[:, :1] + TRANSMISSION_OFFSET)
        a = torch.sigmoid(decoded[:, 1:2] + AIRLIGHT_OFFSET)
        imposed = self.imposed_airlight or ImageAirlight()
        if self.config.pool_airlight:  # one atmosphere: one grey airlight per image (per crop in training)
            a = a.mean(dim=(-2, -1), keepdim=True) if imposed.pooled is None else imposed.pooled.to(a)
            if self.record_airlight:
                self.recorded_airlight = a.detach()
        if self.config.airlight_floor:  # at least He et al.'s airlight of this input (working copy, or crop)
            t, a = floor_airlight((x + 1) / 2, t, a, self.config.airlight_floor, imposed.estimate)
        return t, a

    @property
    def airlight_is_global(self) -> bool:
        """Whether the output depends on the whole image's airlight (pooled, or floored by the image's estimate), so
        that a pass over one window of it needs :attr:`imposed_airlight`."""
        return self.head is not None and bool(self.config.pool_airlight or self.config.airlight_floor)

    @contextlib.contextmanager
    def imposing_airlight(self, airlight: ImageAirlight | None) -> Iterator[None]:
        """Within the block every forward composes with ``airlight`` (None: each input's own)."""
        previous, self.imposed_airlight = self.imposed_airlight, airlight
        try:
            yield
        finally:
            self.imposed_airlight = previous

    def layer_channels(self, layers: tuple[int, ...]) -> list[int]:
        """Channel count of the encoder output at each tapped layer index."""
        counts, channels = [], self.config.channels
        for layer in self.encoder:
            if isinstance(layer, nn.Conv2d):
                channels = layer.out_channels
            counts.append(channels)
        self._check_layers(layers)
        return [counts[i] for i in layers]

    def _check_layers(self, layers: tuple[int, ...]) -> None:
        bad = [i for i in layers if not 0 <= i < len(self.encoder)]
        if bad:
            raise ValueError(f"encoder layer indices {bad} out of range: this encoder has layers "
                             f"0..{len(self.encoder) - 1} ({self.config.blocks} residual blocks)")

    def forward(self, x: torch.Tensor,
                layers: tuple[int, ...] = ()) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Translate ``x``; with ``layers``, also return the encoder features tapped at those indices.

        One pass gives both the image and the features, so a contrastive loss never needs a second
        encoder pass over an image that was just translated.
        """
        if not layers:
            return self.compose(x, self.decode(x, self.encoder(x)))
        features = self.encode(x, layers, stop_early=False)
        out = self.compose(x, self.decode(x, features.pop()))
        return out, features

    def forward_with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The output of a scattering generator and the transmission and airlight it composed it with."""
        if self.head is None:
            raise ValueError("forward_with_maps needs a scattering output head, this generator outputs images")
        decoded = self.decode(x, self.encoder(x))
        t, a = self.scattering_maps(x, decoded)
        return self.compose(x, decoded), t, a

    def encode(self, x: torch.Tensor, layers: tuple[int, ...], stop_early: bool = True) -> list[torch.Tensor]:
        """Encoder features at ``layers``; with ``stop_early`` the encoder stops after the last tap.

        Without ``stop_early`` the final encoder output is appended as an extra last element.
        """
        self._check_layers(layers)
        wanted, last = set(layers), max(layers)
        features = []
        for index, layer in enumerate(self.encoder):
            x = layer(x)
            if index in wanted:
                features.append(x)
            if stop_early and index == last:
                break
        if not stop_early:
            features.append(x)
        return features
