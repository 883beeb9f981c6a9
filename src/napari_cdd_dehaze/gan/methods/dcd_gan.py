"""DCD-GAN: unpaired deraining with dual contrastive learning (two generators, two critics, two heads).

Domains: *degraded* (X, rainy) and *clean* (Y). Networks:

* ``restorer`` G: degraded → clean (the model users run) and ``degrader`` F: clean → degraded;
* ``critic_clean`` D_Y and ``critic_degraded`` D_X (PatchGAN);
* ``heads_restorer`` / ``heads_degrader``: one projection head per generator's encoder.

The dual contrast is cross-encoder (:meth:`CycleContrastMethod.dual_contrast`): for degraded→clean, the
key of a patch of x is G's encoding of x (G's head) and its query is *F's* encoding of G(x) (F's head);
the other patches of the same image are the negatives (no negative generators — that is CDD-GAN).
Unlike the public release, the cycle term is really in the optimised sum, with weight ``lambda_cycle``.
An EMA of the restorer (``generator_ema``) is the shipped model: GAN weights swing from step to step.
"""
from __future__ import annotations

import torch
from torch import nn

from napari_cdd_dehaze.gan.config import TrainConfig
from napari_cdd_dehaze.gan.losses import patch_nce_loss
from napari_cdd_dehaze.gan.networks import ResnetGenerator
from napari_cdd_dehaze.gan.training_networks import PatchDiscriminator, ProjectionHeads, init_weights

from .common import CycleContrastMethod, DirectionContrast, frozen_copy


class DCDGAN(CycleContrastMethod):
    name = "dcd-gan"

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
        init_weights(self)
        self.ema_restorer = frozen_copy(self.restorer) if c.generator_ema > 0 else None
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The networks each optimiser updates, in step order."""
        return {
            "critics": [*self.critic_clean.parameters(), *self.critic_degraded.parameters()],
            "generators": [*self.restorer.parameters(), *self.degrader.parameters(),
                           *self.heads_restorer.parameters(), *self.heads_degrader.parameters()],
        }

    def training_step(self, degraded: torch.Tensor, clean: torch.Tensor,
                      optimisers: dict[str, torch.optim.Optimizer], rng: torch.Generator,
                      scalers: dict[str, torch.amp.GradScaler] | None = None) -> dict[str, float]:
        """D → G/F/heads → EMA on one batch; returns every loss term (unweighted) and the sums.

        ``rng`` must be in the same state on every replica; ``scalers`` (fp16 only): one per optimiser.
        """
        c = self.config
        scalers = scalers or {}
        out = self.translate(degraded, clean)

        # 1. Critics, on detached outputs.
        self.set_critics_trainable(True)
        with self._autocast():
            loss_critics = self.critics_loss(degraded, clean, out)
        self._update(optimisers["critics"], loss_critics, scalers.get("critics"))

        # 2. Generators and heads: adversarial + dual contrast + cycle + identity, all in the optimised sum.
        self.set_critics_trainable(False)
        contrasts = self.dual_contrast(out, rng)
        with self._autocast():
            loss_gan = self.adversarial_loss(out)
            loss_nce = self.nce_loss(contrasts)
            loss_cycle = self.cycle_loss(out, degraded, clean)
            loss_identity = self.identity_loss(out, degraded, clean)
            loss_generators = (c.lambda_gan * loss_gan + c.lambda_nce * loss_nce
                               + c.lambda_cycle * loss_cycle + c.lambda_identity * loss_identity)
        self._update(optimisers["generators"], loss_generators, scalers.get("generators"))

        # 3. The shipped restorer follows the live one.
        self.follow_restorer()

        terms = {"critics": loss_critics, "gan": loss_gan, "nce": loss_nce, "cycle": loss_cycle,
                 "identity": loss_identity, "generators": loss_generators}
        return {name: float(value.detach()) for name, value in terms.items()}

    def nce_loss(self, contrasts: list[DirectionContrast]) -> torch.Tensor:
        """Dual PatchNCE with in-image negatives, mean over both directions and all tapped layers."""
        losses = [patch_nce_loss(q, k, None, True, self.config.temperature)
                  for contrast in contrasts for q, k in zip(contrast.queries, contrast.keys, strict=False)]
        return torch.stack(losses).mean()
