"""CDD-GAN: contrastive disentanglement in a CycleGAN framework, with negative generators.

Domains: *degraded* (X, hazy) and *clean* (Y). Networks:

* ``restorer`` G: degraded → clean (the model users run) and ``degrader`` F: clean → degraded;
* ``critic_clean`` D_Y and ``critic_degraded`` D_X (PatchGAN);
* ``heads_restorer`` / ``heads_degrader``: projection heads on G's / F's encoder features, and a
  momentum (EMA) copy of each that the negative generators read;
* ``negatives_restorer`` / ``negatives_degrader``: hard-negative generators for the contrast of the
  degraded→clean and clean→degraded direction.

The contrast is *dual* (cross-encoder): the query of G(x) is F's encoding of G(x) — which the cycle
pass F(G(x)) computes anyway — and its key is G's encoding of x — which the pass G(x) computes anyway.
So a step runs each generator over each image once: G([x, y]), F([y, x]), F(G(x)), G(F(y)).
Every term is the mean of its two directions.

Data parallelism (see :mod:`..distributed`): ``self.replicas`` says which share of the global batch
this process computes. Gradients are averaged over replicas right before each optimiser step, and
the step's own randomness (patch positions, noise) comes from a generator that is identical on every
rank, with noise drawn for the whole global batch and sliced. Every loss is a mean over samples of a
per-sample term, so the averaged gradient is the gradient of the global batch: R ranks × batch b
compute the update of one process with batch R·b, up to float rounding.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..config import TrainConfig
from ..distributed import SINGLE, Replicas
from ..losses import (diversity_loss, discriminator_loss, generator_adversarial_loss, l1_loss,
                      negative_adversary_loss, patch_nce_loss)
from ..networks import (NegativeGenerator, PatchDiscriminator, ProjectionHeads, ResnetGenerator,
                        gather_patches, init_weights, sample_patches)


@dataclass
class Translations:
    """Everything one forward of both directions produces (``same_*`` are None without identity loss)."""

    fake_clean: torch.Tensor
    fake_degraded: torch.Tensor
    cycled_degraded: torch.Tensor
    cycled_clean: torch.Tensor
    same_clean: torch.Tensor | None
    same_degraded: torch.Tensor | None
    taps_degraded: list[torch.Tensor]       # G's encoder on the degraded input (keys, degraded→clean)
    taps_clean: list[torch.Tensor]          # F's encoder on the clean input (keys, clean→degraded)
    taps_fake_clean: list[torch.Tensor]     # F's encoder on G(x) (queries, degraded→clean)
    taps_fake_degraded: list[torch.Tensor]  # G's encoder on F(y) (queries, clean→degraded)


@dataclass
class ContrastPairs:
    """One direction's projected queries and keys per layer, pooled momentum keys, and its negative generator."""

    queries: list[torch.Tensor]
    keys: list[torch.Tensor]
    pooled: list[torch.Tensor]
    generator: NegativeGenerator


def _frozen_copy(module: nn.Module) -> nn.Module:
    twin = copy.deepcopy(module)
    twin.requires_grad_(False)
    return twin


@torch.no_grad()
def ema_update(average: nn.Module, live: nn.Module, decay: float) -> None:
    """average ← decay·average + (1 − decay)·live, parameters and buffers alike."""
    for a, b in zip(average.state_dict().values(), live.state_dict().values()):
        if a.dtype.is_floating_point:
            a.lerp_(b, 1.0 - decay)
        else:
            a.copy_(b)


class CDDGAN(nn.Module):
    name = "cdd-gan"

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.config = c = config
        gen = c.generator_config()
        self.restorer, self.degrader = ResnetGenerator(gen), ResnetGenerator(gen)
        self.critic_clean = PatchDiscriminator(c.channels, c.disc_width)
        self.critic_degraded = PatchDiscriminator(c.channels, c.disc_width)
        tapped = self.restorer.layer_channels(c.nce_layers)
        self.heads_restorer = ProjectionHeads(tapped, c.head_dim)
        self.heads_degrader = ProjectionHeads(tapped, c.head_dim)
        self.negatives_restorer = NegativeGenerator(len(tapped), c.head_dim, c.noise_dim)
        self.negatives_degrader = NegativeGenerator(len(tapped), c.head_dim, c.noise_dim)
        init_weights(self)
        self.momentum_heads_restorer = _frozen_copy(self.heads_restorer)
        self.momentum_heads_degrader = _frozen_copy(self.heads_degrader)
        self.ema_restorer = _frozen_copy(self.restorer) if c.generator_ema > 0 else None
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.replicas: Replicas = SINGLE  # set by the trainer under torchrun

    # ------------------------------------------------------------------ parameter groups
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The networks each optimiser updates, in step order."""
        return {
            "critics": [*self.critic_clean.parameters(), *self.critic_degraded.parameters()],
            "negatives": [*self.negatives_restorer.parameters(), *self.negatives_degrader.parameters()],
            "generators": [*self.restorer.parameters(), *self.degrader.parameters(),
                           *self.heads_restorer.parameters(), *self.heads_degrader.parameters()],
        }

    def make_optimisers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        return {name: torch.optim.Adam(params, lr=c.lr, betas=c.betas)
                for name, params in self.parameter_groups().items()}

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
        self.critic_clean.requires_grad_(True)
        self.critic_degraded.requires_grad_(True)
        with self._autocast():
            loss_critics = 0.5 * (
                discriminator_loss(self.critic_clean(clean), self.critic_clean(out.fake_clean.detach()), c.gan_mode)
                + discriminator_loss(self.critic_degraded(degraded), self.critic_degraded(out.fake_degraded.detach()),
                                     c.gan_mode))
        self._update(optimisers["critics"], loss_critics, scalers.get("critics"))

        # 2. Negative generators: make the contrast harder for fixed queries/keys, and stay diverse.
        pairs = self.contrast_pairs(out, rng)
        loss_adversary, loss_diversity = self.negative_losses(pairs, rng)
        self._update(optimisers["negatives"], loss_adversary + c.lambda_diversity * loss_diversity,
                     scalers.get("negatives"))

        # 3. Generators and heads, against fresh negatives from the updated (now frozen) negative generators.
        self.critic_clean.requires_grad_(False)
        self.critic_degraded.requires_grad_(False)
        with self._autocast():
            loss_gan = 0.5 * (generator_adversarial_loss(self.critic_clean(out.fake_clean), c.gan_mode)
                              + generator_adversarial_loss(self.critic_degraded(out.fake_degraded), c.gan_mode))
            loss_nce = self.nce_loss(pairs, rng)
            loss_cycle = 0.5 * (l1_loss(out.cycled_degraded, degraded) + l1_loss(out.cycled_clean, clean))
            loss_identity = (0.5 * (l1_loss(out.same_clean, clean) + l1_loss(out.same_degraded, degraded))
                             if out.same_clean is not None else torch.zeros((), device=degraded.device))
            loss_generators = (c.lambda_gan * loss_gan + c.lambda_nce * loss_nce
                               + c.lambda_cycle * loss_cycle + c.lambda_identity * loss_identity)
        self._update(optimisers["generators"], loss_generators, scalers.get("generators"))

        # 4. Momentum heads and the shipped restorer follow the live networks.
        ema_update(self.momentum_heads_restorer, self.heads_restorer, c.head_momentum)
        ema_update(self.momentum_heads_degrader, self.heads_degrader, c.head_momentum)
        if self.ema_restorer is not None:
            # Warm-up (as in TF's ExponentialMovingAverage): a short run's average is not stuck at the initial weights.
            n = int(self.steps_done)
            ema_update(self.ema_restorer, self.restorer, min(c.generator_ema, (1 + n) / (10 + n)))
        self.steps_done += 1

        terms = dict(critics=loss_critics, negative_adversary=loss_adversary, negative_diversity=loss_diversity,
                     gan=loss_gan, nce=loss_nce, cycle=loss_cycle, identity=loss_identity,
                     generators=loss_generators)
        return {name: float(value.detach()) for name, value in terms.items()}

    # ------------------------------------------------------------------ pieces of the step
    def translate(self, degraded: torch.Tensor, clean: torch.Tensor) -> Translations:
        """Both directions, their cycles and (if weighted) identities, with the encoder taps the contrast reads.

        Identity images ride in the same batch as the translations (InstanceNorm is per image).
        """
        layers, b = self.config.nce_layers, degraded.shape[0]
        identity = self.config.lambda_identity > 0
        with self._autocast():
            out, taps_degraded = self.restorer(torch.cat([degraded, clean]) if identity else degraded, layers)
            fake_clean, same_clean = out[:b], (out[b:] if identity else None)
            out, taps_clean = self.degrader(torch.cat([clean, degraded]) if identity else clean, layers)
            fake_degraded, same_degraded = out[:b], (out[b:] if identity else None)
            cycled_degraded, taps_fake_clean = self.degrader(fake_clean, layers)
            cycled_clean, taps_fake_degraded = self.restorer(fake_degraded, layers)
        return Translations(fake_clean, fake_degraded, cycled_degraded, cycled_clean, same_clean, same_degraded,
                            [t[:b] for t in taps_degraded], [t[:b] for t in taps_clean],
                            taps_fake_clean, taps_fake_degraded)

    def contrast_pairs(self, out: Translations, rng: torch.Generator) -> list[ContrastPairs]:
        """Projected queries/keys of both directions at shared random positions, plus pooled momentum keys.

        Direction degraded→clean: keys are G's encoding of x, queries F's encoding of G(x) (dual contrast);
        the clean→degraded direction mirrors it.
        """
        pairs = []
        for key_taps, query_taps, key_heads, query_heads, momentum_heads, negatives in (
                (out.taps_degraded, out.taps_fake_clean, self.heads_restorer, self.heads_degrader,
                 self.momentum_heads_restorer, self.negatives_restorer),
                (out.taps_clean, out.taps_fake_degraded, self.heads_degrader, self.heads_restorer,
                 self.momentum_heads_degrader, self.negatives_degrader)):
            key_vectors, positions = sample_patches(key_taps, self.config.num_patches, rng)
            query_vectors = gather_patches(query_taps, positions)
            with self._autocast():
                queries = [query_heads(i, v) for i, v in enumerate(query_vectors)]
                with torch.no_grad():  # keys are targets, never trained through; pool, then project
                    keys = [key_heads(i, v) for i, v in enumerate(key_vectors)]
                    pooled = [momentum_heads(i, t.mean(dim=(2, 3))) for i, t in enumerate(key_taps)]
            pairs.append(ContrastPairs(queries, keys, pooled, negatives))
        return pairs

    def negative_losses(self, pairs: list[ContrastPairs], rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over directions and layers of (−PatchNCE against generated negatives, diversity term)."""
        c = self.config
        if c.negatives == "internal":
            zero = torch.zeros((), device=pairs[0].keys[0].device)
            return zero, zero
        adversary, diversity, count = 0.0, 0.0, 0
        for p in pairs:
            for i, (q, k, pooled) in enumerate(zip(p.queries, p.keys, p.pooled)):
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
            for i, (q, k, pooled) in enumerate(zip(p.queries, p.keys, p.pooled)):
                generated = None
                if c.negatives != "internal":
                    with torch.no_grad(), self._autocast():
                        generated = p.generator(i, pooled, self._noise(q, rng))
                with self._autocast():
                    total = total + patch_nce_loss(q, k, generated, c.negatives != "generated", c.temperature)
                count += 1
        return total / count

    def _noise(self, queries: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """This rank's rows of noise drawn for the whole global batch (so it does not depend on the split)."""
        b, k, _ = queries.shape
        noise = torch.randn(b * self.replicas.world_size, k, self.config.noise_dim, generator=rng)
        return noise[self.replicas.batch_slice(b)].to(queries.device)

    def _autocast(self):
        c = self.config
        if c.precision == "fp32":
            return contextlib.nullcontext()
        device_type = next(self.parameters()).device.type
        return torch.autocast(device_type, dtype=torch.bfloat16 if c.precision == "bf16" else torch.float16)

    def _update(self, optimiser: torch.optim.Optimizer, loss: torch.Tensor,
                scaler: torch.amp.GradScaler | None = None) -> None:
        """Backward, average the gradients over replicas, step (through the fp16 scaler if there is one).

        With a scaler, the averaged gradients are identical on every rank, so every rank finds the
        same inf/NaN, skips the same steps and keeps the same scale.
        """
        optimiser.zero_grad(set_to_none=True)
        if loss.requires_grad:
            (scaler.scale(loss) if scaler is not None else loss).backward()
        self.replicas.average_gradients(p for group in optimiser.param_groups for p in group["params"])
        if scaler is None or not loss.requires_grad:
            optimiser.step()
        else:
            scaler.step(optimiser)
            scaler.update()

    # ------------------------------------------------------------------ the model to ship
    def shipped_restorer(self) -> ResnetGenerator:
        """The weights users run: the EMA of the restorer when kept, else the live restorer."""
        return self.ema_restorer if self.ema_restorer is not None else self.restorer
