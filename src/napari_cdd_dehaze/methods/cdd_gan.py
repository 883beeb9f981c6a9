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
"""
from __future__ import annotations

import copy
import contextlib

import torch
from torch import nn

from ..config import TrainConfig
from ..losses import (diversity_loss, discriminator_loss, generator_adversarial_loss, l1_loss,
                      negative_adversary_loss, patch_nce_loss)
from ..networks import (NegativeGenerator, PatchDiscriminator, ProjectionHeads, ResnetGenerator,
                        gather_patches, init_weights, sample_patches)


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
                      optimisers: dict[str, torch.optim.Optimizer], rng: torch.Generator) -> dict[str, float]:
        """D → N → G/F/heads → EMA on one batch; returns every loss term (unweighted) and the sums."""
        c = self.config
        layers, b = c.nce_layers, degraded.shape[0]
        use_identity = c.lambda_identity > 0

        with self._autocast():
            # Forward both directions; the identity images ride in the same batch (InstanceNorm is per image).
            out, feats_of_degraded = self.restorer(torch.cat([degraded, clean]) if use_identity else degraded, layers)
            fake_clean, same_clean = out[:b], out[b:]
            out, feats_of_clean = self.degrader(torch.cat([clean, degraded]) if use_identity else clean, layers)
            fake_degraded, same_degraded = out[:b], out[b:]
            cycled_degraded, feats_of_fake_clean = self.degrader(fake_clean, layers)
            cycled_clean, feats_of_fake_degraded = self.restorer(fake_degraded, layers)

        # 1. Critics.
        self.critic_clean.requires_grad_(True)
        self.critic_degraded.requires_grad_(True)
        with self._autocast():
            loss_critics = 0.5 * (
                discriminator_loss(self.critic_clean(clean), self.critic_clean(fake_clean.detach()), c.gan_mode)
                + discriminator_loss(self.critic_degraded(degraded), self.critic_degraded(fake_degraded.detach()),
                                     c.gan_mode))
        self._update(optimisers["critics"], loss_critics)

        # Contrast pairs of both directions: keys from the input's encoding (own encoder), queries from the
        # output's encoding by the other generator's encoder, sampled at the same positions.
        directions = []
        for keys_feats, query_feats, key_heads, query_heads, momentum_heads, negatives in (
                (feats_of_degraded, feats_of_fake_clean, self.heads_restorer, self.heads_degrader,
                 self.momentum_heads_restorer, self.negatives_restorer),
                (feats_of_clean, feats_of_fake_degraded, self.heads_degrader, self.heads_restorer,
                 self.momentum_heads_degrader, self.negatives_degrader)):
            keys_feats = [f[:b] for f in keys_feats]
            key_vectors, positions = sample_patches(keys_feats, c.num_patches, rng)
            query_vectors = gather_patches(query_feats, positions)
            with self._autocast():
                keys = [key_heads(i, v) for i, v in enumerate(key_vectors)]
                queries = [query_heads(i, v) for i, v in enumerate(query_vectors)]
                with torch.no_grad():
                    pooled = [momentum_heads(i, f.mean(dim=(2, 3))) for i, f in enumerate(keys_feats)]
            directions.append((queries, keys, pooled, negatives))

        # 2. Negative generators: make the contrast harder for fixed queries/keys, stay diverse.
        loss_adversary, loss_diversity = self._negative_losses(directions, rng, train=True)
        self._update(optimisers["negatives"], loss_adversary + c.lambda_diversity * loss_diversity)

        # 3. Generators and heads, against fresh negatives from the updated (now frozen) negative generators.
        self.critic_clean.requires_grad_(False)
        self.critic_degraded.requires_grad_(False)
        with self._autocast():
            loss_gan = 0.5 * (generator_adversarial_loss(self.critic_clean(fake_clean), c.gan_mode)
                              + generator_adversarial_loss(self.critic_degraded(fake_degraded), c.gan_mode))
            loss_nce = self._nce(directions, rng)
            loss_cycle = 0.5 * (l1_loss(cycled_degraded, degraded) + l1_loss(cycled_clean, clean))
            loss_identity = (0.5 * (l1_loss(same_clean, clean) + l1_loss(same_degraded, degraded))
                             if use_identity else torch.zeros((), device=degraded.device))
            loss_generators = (c.lambda_gan * loss_gan + c.lambda_nce * loss_nce
                               + c.lambda_cycle * loss_cycle + c.lambda_identity * loss_identity)
        self._update(optimisers["generators"], loss_generators)

        # 4. Momentum heads and the shipped restorer follow the live networks.
        ema_update(self.momentum_heads_restorer, self.heads_restorer, c.head_momentum)
        ema_update(self.momentum_heads_degrader, self.heads_degrader, c.head_momentum)
        if self.ema_restorer is not None:
            ema_update(self.ema_restorer, self.restorer, c.generator_ema)

        terms = dict(critics=loss_critics, negative_adversary=loss_adversary, negative_diversity=loss_diversity,
                     gan=loss_gan, nce=loss_nce, cycle=loss_cycle, identity=loss_identity,
                     generators=loss_generators)
        return {name: float(value.detach()) for name, value in terms.items()}

    # ------------------------------------------------------------------ pieces of the step
    def _negative_losses(self, directions, rng: torch.Generator, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over directions and layers of (−PatchNCE with generated negatives, diversity term)."""
        c = self.config
        adversary, diversity, count = 0.0, 0.0, 0
        if c.negatives == "internal":
            zero = torch.zeros((), device=directions[0][1][0].device, requires_grad=train)
            return zero, zero.detach()
        for queries, keys, pooled, negatives in directions:
            for i, (q, k, p) in enumerate(zip(queries, keys, pooled)):
                noise = self._noise(q, rng)
                with self._autocast():
                    generated = negatives(i, p, noise)
                    adversary = adversary + negative_adversary_loss(q, k, generated, c.negatives == "both",
                                                                    c.temperature)
                    diversity = diversity + diversity_loss(generated, noise)
                count += 1
        return adversary / count, diversity / count

    def _nce(self, directions, rng: torch.Generator) -> torch.Tensor:
        """Dual PatchNCE, mean over directions and layers; generated negatives are fresh and constant here."""
        c = self.config
        total, count = 0.0, 0
        for queries, keys, pooled, negatives in directions:
            for i, (q, k, p) in enumerate(zip(queries, keys, pooled)):
                generated = None
                if c.negatives != "internal":
                    with torch.no_grad():
                        generated = negatives(i, p, self._noise(q, rng))
                total = total + patch_nce_loss(q, k, generated, c.negatives != "generated", c.temperature)
                count += 1
        return total / count

    def _noise(self, queries: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        b, k, _ = queries.shape
        return torch.randn(b, k, self.config.noise_dim, generator=rng).to(queries.device)

    def _autocast(self):
        c = self.config
        if c.precision == "fp32":
            return contextlib.nullcontext()
        device_type = next(self.parameters()).device.type
        return torch.autocast(device_type, dtype=torch.bfloat16 if c.precision == "bf16" else torch.float16)

    @staticmethod
    def _update(optimiser: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optimiser.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
        optimiser.step()

    # ------------------------------------------------------------------ the model to ship
    def shipped_restorer(self) -> ResnetGenerator:
        """The weights users run: the EMA of the restorer when kept, else the live restorer."""
        return self.ema_restorer if self.ema_restorer is not None else self.restorer
