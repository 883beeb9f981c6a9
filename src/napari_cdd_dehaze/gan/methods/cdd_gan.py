"""CDD-GAN: contrastive disentanglement in a CycleGAN framework, with negative generators.

Domains: *degraded* (X, hazy) and *clean* (Y). Networks:

* ``restorer`` G: degraded → clean (the model users run) and ``degrader`` F: clean → degraded;
* ``critic_clean`` D_Y and ``critic_degraded`` D_X (PatchGAN);
* ``heads_restorer`` / ``heads_degrader``: projection heads on G's / F's encoder features, and a
  momentum (EMA) copy of each that the negative generators read;
* ``negatives_restorer`` / ``negatives_degrader``: hard-negative generators for the contrast of the
  degraded→clean and clean→degraded direction.

The contrast is *dual* (cross-encoder, :meth:`CycleContrastMethod.dual_contrast`): the query of G(x) is
F's encoding of G(x) — which the cycle pass F(G(x)) computes anyway — and its key is G's encoding of x —
which the pass G(x) computes anyway. Every term is the mean of its two directions.

Data parallelism (see :mod:`..distributed`): ``self.replicas`` says which share of the global batch
this process computes. Gradients are averaged over replicas right before each optimiser step, and
the step's own randomness (patch positions, noise) comes from a generator that is identical on every
rank, with noise drawn for the whole global batch and sliced. Every loss is a mean over samples of a
per-sample term, so the averaged gradient is the gradient of the global batch: R ranks × batch b
compute the update of one process with batch R·b, up to float rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from napari_cdd_dehaze.gan.config import TrainConfig
from napari_cdd_dehaze.gan.losses import diversity_loss, negative_adversary_loss, patch_nce_loss
from napari_cdd_dehaze.gan.networks import MIN_TRANSMISSION, ResnetGenerator
from napari_cdd_dehaze.gan.training_networks import NegativeGenerator, PatchDiscriminator, ProjectionHeads, init_weights
from napari_cdd_dehaze.imaging.primitives import dark_channel, dark_channel_transmission

from .common import CycleContrastMethod, Translations, ema_update, frozen_copy


@dataclass
class ContrastPairs:
    """One direction's projected queries and keys per layer, pooled momentum keys, and its negative generator."""

    queries: list[torch.Tensor]
    keys: list[torch.Tensor]
    pooled: list[torch.Tensor]
    generator: NegativeGenerator


class CDDGAN(CycleContrastMethod):
    name = "cdd-gan"

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.config = c = config
        self.restorer = ResnetGenerator(c.generator_config("restore"))
        self.degrader = ResnetGenerator(c.generator_config("degrade"))
        self.critic_clean = PatchDiscriminator(c.channels, c.disc_width)
        self.critic_degraded = PatchDiscriminator(c.channels, c.disc_width)
        tapped = self.restorer.layer_channels(c.nce_layers)
        self.heads_restorer = ProjectionHeads(tapped, c.head_dim)
        self.heads_degrader = ProjectionHeads(tapped, c.head_dim)
        self.negatives_restorer = NegativeGenerator(len(tapped), c.head_dim, c.noise_dim)
        self.negatives_degrader = NegativeGenerator(len(tapped), c.head_dim, c.noise_dim)
        init_weights(self)
        self.momentum_heads_restorer = frozen_copy(self.heads_restorer)
        self.momentum_heads_degrader = frozen_copy(self.heads_degrader)
        self.ema_restorer = frozen_copy(self.restorer) if c.generator_ema > 0 else None
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The networks each optimiser updates, in step order."""
        return {
            "critics": [*self.critic_clean.parameters(), *self.critic_degraded.parameters()],
            "negatives": [*self.negatives_restorer.parameters(), *self.negatives_degrader.parameters()],
            "generators": [*self.restorer.parameters(), *self.degrader.parameters(),
                           *self.heads_restorer.parameters(), *self.heads_degrader.parameters()],
        }

    # ------------------------------------------------------------------ one training step
    def training_step(self, degraded: torch.Tensor, clean: torch.Tensor,
                      optimisers: dict[str, torch.optim.Optimizer], rng: torch.Generator,
                      scalers: dict[str, torch.amp.GradScaler] | None = None) -> dict[str, float]:
        """D → N → G/F/heads → EMA on one batch; returns every loss term (unweighted) and the sums.

        ``rng`` must be in the same state on every replica. ``scalers`` (fp16 only): one gradient
        scaler per optimiser.
        """
        c = self.config
        scalers = scalers or {}
        out = self.translate(degraded, clean)

        # 1. Critics, on detached outputs.
        self.set_critics_trainable(True)
        with self._autocast():
            loss_critics = self.critics_loss(degraded, clean, out)
        self._update(optimisers["critics"], loss_critics, scalers.get("critics"))

        # 2. Negative generators: make the contrast harder for fixed queries/keys, and stay diverse.
        pairs = self.contrast_pairs(out, rng)
        loss_adversary, loss_diversity = self.negative_losses(pairs, rng)
        self._update(optimisers["negatives"], loss_adversary + c.lambda_diversity * loss_diversity,
                     scalers.get("negatives"))

        # 3. Generators and heads, against fresh negatives from the updated (now frozen) negative generators.
        self.set_critics_trainable(False)
        with self._autocast():
            loss_gan = self.adversarial_loss(out)
            loss_nce = self.nce_loss(pairs, rng)
            loss_cycle = self.cycle_loss(out, degraded, clean)
            loss_identity = self.identity_loss(out, degraded, clean)
            loss_generators = (c.lambda_gan * loss_gan + c.lambda_nce * loss_nce
                               + c.lambda_cycle * loss_cycle + c.lambda_identity * loss_identity)
        extra = {}
        if c.lambda_rehaze_cycle > 0:
            extra["rehaze_cycle"] = self.rehaze_cycle_loss(degraded, out, rng)
            loss_generators = loss_generators + c.lambda_rehaze_cycle * extra["rehaze_cycle"]
        if c.lambda_hazed_clean > 0:
            extra["hazed_clean"] = self.hazed_clean_loss(degraded, clean, rng)
            loss_generators = loss_generators + c.lambda_hazed_clean * extra["hazed_clean"]
        if c.lambda_dark_match > 0:
            extra["dark_match"] = self.dark_match_loss(clean, out)
            loss_generators = loss_generators + c.lambda_dark_match * extra["dark_match"]
        self._update(optimisers["generators"], loss_generators, scalers.get("generators"))

        # 4. Momentum heads and the shipped restorer follow the live networks.
        ema_update(self.momentum_heads_restorer, self.heads_restorer, c.head_momentum)
        ema_update(self.momentum_heads_degrader, self.heads_degrader, c.head_momentum)
        self.follow_restorer()

        terms = dict(critics=loss_critics, negative_adversary=loss_adversary, negative_diversity=loss_diversity,
                     gan=loss_gan, nce=loss_nce, cycle=loss_cycle, identity=loss_identity, **extra,
                     generators=loss_generators)
        return {name: float(value.detach()) for name, value in terms.items()}

    # ------------------------------------------------------------------ pieces of the step
    def contrast_pairs(self, out: Translations, rng: torch.Generator) -> list[ContrastPairs]:
        """The dual contrast's queries/keys of both directions, plus pooled momentum keys for the negatives."""
        pairs = []
        for contrast, momentum_heads, negatives in zip(
                self.dual_contrast(out, rng),
                (self.momentum_heads_restorer, self.momentum_heads_degrader),
                (self.negatives_restorer, self.negatives_degrader), strict=False):
            with self._autocast(), torch.no_grad():  # pool, then project: one vector per image and layer
                pooled = [momentum_heads(i, t.mean(dim=(2, 3))) for i, t in enumerate(contrast.key_taps)]
            pairs.append(ContrastPairs(contrast.queries, contrast.keys, pooled, negatives))
        return pairs

    def negative_losses(self, pairs: list[ContrastPairs], rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over directions and layers of (−PatchNCE against generated negatives, diversity term)."""
        c = self.config
        if c.negatives == "internal":
            zero = torch.zeros((), device=pairs[0].keys[0].device)
            return zero, zero
        adversary, diversity, count = 0.0, 0.0, 0
        for p in pairs:
            for i, (q, k, pooled) in enumerate(zip(p.queries, p.keys, p.pooled, strict=False)):
                noise = self._noise(q, rng)
                with self._autocast():
                    generated = p.generator(i, pooled, noise)
                    adversary = adversary + negative_adversary_loss(q, k, generated, c.negatives == "both",
                                                                    c.temperature)
                    diversity = diversity + diversity_loss(generated, noise)
                count += 1
        return adversary / count, diversity / count

    def nce_loss(self, pairs: list[ContrastPairs], rng: torch.Generator) -> torch.Tensor:
        """Dual PatchNCE, mean over directions and layers; generated negatives are fresh and constant here."""
        c = self.config
        total, count = 0.0, 0
        for p in pairs:
            for i, (q, k, pooled) in enumerate(zip(p.queries, p.keys, p.pooled, strict=False)):
                generated = None
                if c.negatives != "internal":
                    with torch.no_grad(), self._autocast():
                        generated = p.generator(i, pooled, self._noise(q, rng))
                with self._autocast():
                    total = total + patch_nce_loss(q, k, generated, c.negatives != "generated", c.temperature)
                count += 1
        return total / count

    def rehaze_cycle_loss(self, degraded: torch.Tensor, out: Translations, rng: torch.Generator) -> torch.Tensor:
        """Haze cycle: the restorer must take back a haze it did not make, from its own output.

        J = G(x) is hazed again, I* = J·t* + A*·(1 − t*), with a grey airlight A* drawn from
        ``rehaze_airlight`` and t* = t_DCP(x)^p: He et al.'s dark-channel transmission of the hazy input
        (guided-filtered, so it follows x's depth edges) raised to a power p drawn from ``rehaze_power``
        (p < 1: lighter than x's own haze, p > 1: denser), floored at the restorer's own least transmission
        so that G can undo it everywhere. G(I*) must give back J (L1, J detached). Unlike asking for J
        back from G's *own* transmission (whose trivial minimum is t = 1 everywhere, the identity: a width-8
        restorer trained on that alone reached a mean t of 0.99 in 50 steps), t* owes nothing to G, so the
        identity does not satisfy it: G must undo exactly the haze that was
        added, its level (over- and under-dehazing both fail) and its airlight. Hazy images alone make
        the target; nothing here sees a clean image.
        """
        with torch.no_grad():
            prior = dark_channel_transmission((degraded.float() + 1) / 2)
        transmission, airlight = self._drawn_haze(prior, self.config.rehaze_power, rng)
        scene = out.fake_clean.detach().float()
        rehazed = ((scene + 1) / 2 * transmission + airlight * (1 - transmission)) * 2 - 1
        with self._autocast():
            restored = self.restorer(rehazed)
        return (restored.float() - scene).abs().mean()

    def hazed_clean_loss(self, degraded: torch.Tensor, clean: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """Haze transplant: the restorer must take off a real image's haze laid over a clean photo.

        A clean photo y of the batch is hazed, I* = y·t* + A*·(1 − t*), with t* = t_DCP(x)^p, He et al.'s
        dark-channel transmission of the hazy image x beside it (where the haze is dense and where light)
        refined on y's own grey so that it changes at y's edges, p drawn from ``hazed_clean_power`` (> 1:
        denser than x's own haze) and a grey A* from ``rehaze_airlight``; G(I*) must give back y (L1). The haze
        cycle asks G to give back its own output J, which may still hold haze, so it rewards taking off *only*
        the haze that was added; here the target is a photo without haze, so the term asks for all of it, with
        the haze layout of the degraded domain rather than of a synthesis chosen by hand. The two sets stay
        unpaired: x only lends its haze field, y has no hazy counterpart in the data.
        """
        clear = (clean.float() + 1) / 2
        with torch.no_grad():
            prior = dark_channel_transmission((degraded.float() + 1) / 2, guide=clear)
        transmission, airlight = self._drawn_haze(prior, self.config.hazed_clean_power, rng)
        hazed = (clear * transmission + airlight * (1 - transmission)) * 2 - 1
        with self._autocast():
            restored = self.restorer(hazed)
        return (restored.float() - clean.float()).abs().mean()

    def _drawn_haze(self, prior: torch.Tensor, power: tuple[float, float],
                    rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A haze to add, per image of the batch: ``prior`` (B, 1, H, W) raised to a power drawn uniformly from
        ``power`` and floored at the restorer's least transmission, and a grey airlight drawn from
        ``rehaze_airlight``, (B, 1, 1, 1). Drawn for the global batch and sliced, as every draw of the step."""
        b = prior.shape[0]
        draws = torch.rand(b * self.replicas.world_size, 2, 1, 1, generator=rng)[self.replicas.batch_slice(b)]
        draws = draws.to(prior.device)
        (low_a, high_a), (low_p, high_p) = self.config.rehaze_airlight, power
        airlight = low_a + (high_a - low_a) * draws[:, :1]
        transmission = (prior ** (low_p + (high_p - low_p) * draws[:, 1:])).clamp_min(MIN_TRANSMISSION)
        return transmission, airlight

    def dark_match_loss(self, clean: torch.Tensor, out: Translations) -> torch.Tensor:
        """Haze level: each restored image's dark channel against that of the clean image beside it.

        The dark channel (He et al.'s statistic; ``dark_patch`` window, 15 if unset) is near 0 for a clear
        scene and rises with haze. On our validation pairs the restorers' outputs kept its mean near one level
        whatever the scene: 0.25 on average against the clear photos' 0.17 (spread 0.09), the excess largest
        where the scene itself is darkest. The target is an *unpaired* clean image, so the
        term is a per-sample L1 whose minimiser is the median of the clean images' statistic: it pulls the
        restored images' haze level to that of clear photos, in either direction, and says nothing about
        where in the image. Gradients reach G through the output, t and a alike.
        """
        patch = self.config.dark_patch or 15
        restored = dark_channel((out.fake_clean.float() + 1) / 2, patch).flatten(1)
        with torch.no_grad():
            target = dark_channel((clean.float() + 1) / 2, patch).flatten(1)
        return (restored.mean(dim=1) - target.mean(dim=1)).abs().mean()

    def _noise(self, queries: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        b, k, _ = queries.shape
        noise = torch.randn(b * self.replicas.world_size, k, self.config.noise_dim, generator=rng)
        return noise[self.replicas.batch_slice(b)].to(queries.device)
