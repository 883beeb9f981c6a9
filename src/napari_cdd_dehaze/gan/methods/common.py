"""What CDD-GAN and DCD-GAN share: the CycleGAN frame with a dual (cross-encoder) contrast.

Both methods have a ``restorer`` G (degraded → clean), a ``degrader`` F (clean → degraded), a PatchGAN
critic per domain, a projection head on each generator's encoder and (optionally) an EMA of the
restorer — the model users run. :class:`CycleContrastMethod` holds the pieces of their steps that are
the same: the forward of both directions (with the encoder taps the contrast reads), the dual contrast's
queries and keys, the adversarial, cycle and identity terms, and the optimiser/EMA plumbing. Each method
builds its own networks and writes its own ``training_step``, so its update order stays readable.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import nn

from napari_cdd_dehaze.gan.distributed import SINGLE, Replicas
from napari_cdd_dehaze.gan.losses import discriminator_loss, generator_adversarial_loss, l1_loss
from napari_cdd_dehaze.gan.networks import ResnetGenerator
from napari_cdd_dehaze.gan.training_networks import ProjectionHeads, gather_patches, sample_patches


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
class DirectionContrast:
    """One direction's projected queries and (constant) keys per tapped layer, and the key encoder's taps."""

    queries: list[torch.Tensor]
    keys: list[torch.Tensor]
    key_taps: list[torch.Tensor]


def frozen_copy(module: nn.Module) -> nn.Module:
    twin = copy.deepcopy(module)
    twin.requires_grad_(False)
    return twin


@torch.no_grad()
def ema_update(average: nn.Module, live: nn.Module, decay: float) -> None:
    """average ← decay·average + (1 − decay)·live, parameters and buffers alike."""
    for a, b in zip(average.state_dict().values(), live.state_dict().values(), strict=False):
        if a.dtype.is_floating_point:
            a.lerp_(b, 1.0 - decay)
        else:
            a.copy_(b)


class CycleContrastMethod(nn.Module):
    """Base of the methods; subclasses build ``restorer``, ``degrader``, ``critic_clean``, ``critic_degraded``,
    ``heads_restorer``, ``heads_degrader``, ``ema_restorer`` (or None) and the ``steps_done`` buffer."""

    name: str
    restorer: ResnetGenerator
    degrader: ResnetGenerator
    heads_restorer: ProjectionHeads
    heads_degrader: ProjectionHeads
    ema_restorer: ResnetGenerator | None
    replicas: Replicas = SINGLE  # which share of the global batch this process computes; set under torchrun

    def make_optimisers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        return {name: torch.optim.Adam(params, lr=c.lr, betas=c.betas)
                for name, params in self.parameter_groups().items()}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        raise NotImplementedError

    # ------------------------------------------------------------------ forward of both directions
    def translate(self, degraded: torch.Tensor, clean: torch.Tensor) -> Translations:
        """Both directions, their cycles and (if weighted) identities, with the encoder taps the contrast reads.

        Identity images ride in the same batch as the translations (InstanceNorm is per image). Each
        generator sees each image once: G([x, y]), F([y, x]), F(G(x)), G(F(y)).
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

    def dual_contrast(self, out: Translations, rng: torch.Generator) -> list[DirectionContrast]:
        """Projected queries/keys of both directions at shared random positions (degraded→clean first).

        Dual (cross-encoder) contrast: for degraded→clean the key is G's encoding of x, projected by G's
        head, and the query is F's encoding of G(x), projected by F's head — the taps of the passes G(x)
        and F(G(x)) that translation and cycle need anyway. The clean→degraded direction mirrors it.
        Keys are constant targets: projected under ``no_grad``.
        """
        contrasts = []
        for key_taps, query_taps, key_heads, query_heads in (
                (out.taps_degraded, out.taps_fake_clean, self.heads_restorer, self.heads_degrader),
                (out.taps_clean, out.taps_fake_degraded, self.heads_degrader, self.heads_restorer)):
            key_vectors, positions = sample_patches(key_taps, self.config.num_patches, rng)
            query_vectors = gather_patches(query_taps, positions)
            with self._autocast():
                queries = [query_heads(i, v) for i, v in enumerate(query_vectors)]
                with torch.no_grad():
                    keys = [key_heads(i, v) for i, v in enumerate(key_vectors)]
            contrasts.append(DirectionContrast(queries, keys, key_taps))
        return contrasts

    # ------------------------------------------------------------------ terms both methods optimise
    def critics_loss(self, degraded: torch.Tensor, clean: torch.Tensor, out: Translations) -> torch.Tensor:
        """Both critics on real images and on detached outputs, mean of the two."""
        mode = self.config.gan_mode
        return 0.5 * (
            discriminator_loss(self.judge_clean(clean), self.judge_clean(out.fake_clean.detach()), mode)
            + discriminator_loss(self.critic_degraded(degraded), self.critic_degraded(out.fake_degraded.detach()),
                                 mode))

    def adversarial_loss(self, out: Translations) -> torch.Tensor:
        mode = self.config.gan_mode
        return 0.5 * (generator_adversarial_loss(self.judge_clean(out.fake_clean), mode)
                      + generator_adversarial_loss(self.critic_degraded(out.fake_degraded), mode))

    def judge_clean(self, images: torch.Tensor) -> torch.Tensor:
        """The clean-domain critic's verdict on ``images`` (B, C, H, W) in [−1, 1].

        With ``clean_critic_sees: relative`` it sees each image's intensities over their own mean, minus 1:
        a scene at half the light looks the same to it, so it judges contrast and colour, not exposure. Tried
        against the too-bright outputs on dim hazy scenes, it did not fix them on the validation
        suites: their brightness does not come from what this critic sees alone.
        """
        if self.config.clean_critic_sees == "relative":
            unit = (images + 1) / 2
            images = unit / unit.mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3) - 1
        return self.critic_clean(images)

    @staticmethod
    def cycle_loss(out: Translations, degraded: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """½·(‖F(G(x)) − x‖₁ + ‖G(F(y)) − y‖₁)."""
        return 0.5 * (l1_loss(out.cycled_degraded, degraded) + l1_loss(out.cycled_clean, clean))

    @staticmethod
    def identity_loss(out: Translations, degraded: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """½·(‖G(y) − y‖₁ + ‖F(x) − x‖₁), zero when the identity term is off."""
        if out.same_clean is None:
            return torch.zeros((), device=degraded.device)
        return 0.5 * (l1_loss(out.same_clean, clean) + l1_loss(out.same_degraded, degraded))

    def set_critics_trainable(self, trainable: bool) -> None:
        self.critic_clean.requires_grad_(trainable)
        self.critic_degraded.requires_grad_(trainable)

    # ------------------------------------------------------------------ plumbing
    def follow_restorer(self) -> None:
        """EMA step of the shipped restorer, then count the step.

        Warm-up (as in TF's ExponentialMovingAverage): a short run's average is not stuck at the initial weights.
        """
        if self.ema_restorer is not None:
            n = int(self.steps_done)
            ema_update(self.ema_restorer, self.restorer, min(self.config.generator_ema, (1 + n) / (10 + n)))
        self.steps_done += 1

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

    def shipped_restorer(self) -> ResnetGenerator:
        """The weights users run: the EMA of the restorer when kept, else the live restorer."""
        return self.ema_restorer if self.ema_restorer is not None else self.restorer
