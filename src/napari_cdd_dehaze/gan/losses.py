"""Loss terms of CDD-GAN and DCD-GAN, each small enough to check by hand on a 4×4 example.

Conventions: feature vectors are (B, K, D) and already L2-normalised; images are in [-1, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

GAN_MODES = ("lsgan", "hinge")


def discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor, mode: str = "lsgan") -> torch.Tensor:
    """Loss of a discriminator that should score real patches high and generated ones low.

    LSGAN: ½·[mean((D(real) − 1)²) + mean(D(fake)²)]; hinge: ½·[mean(relu(1 − D(real))) + mean(relu(1 + D(fake)))].
    The ½ slows the discriminator relative to the generator, as in the lineage.
    """
    if mode == "lsgan":
        return 0.5 * (((real_scores - 1) ** 2).mean() + (fake_scores ** 2).mean())
    if mode == "hinge":
        return 0.5 * (F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean())
    raise ValueError(f"unknown GAN mode {mode!r}; choose one of {GAN_MODES}")


def generator_adversarial_loss(fake_scores: torch.Tensor, mode: str = "lsgan") -> torch.Tensor:
    """Loss of a generator that wants its outputs scored as real: mean((D(G)−1)²) or −mean(D(G))."""
    if mode == "lsgan":
        return ((fake_scores - 1) ** 2).mean()
    if mode == "hinge":
        return -fake_scores.mean()
    raise ValueError(f"unknown GAN mode {mode!r}; choose one of {GAN_MODES}")


def patch_nce_loss(query: torch.Tensor, key: torch.Tensor, negatives: torch.Tensor | None = None,
                   internal_negatives: bool = True, temperature: float = 0.07) -> torch.Tensor:
    """PatchNCE: each query patch must pick its own key among negatives; mean cross-entropy.

    query, key: (B, K, D). The positive of query i is key i. Negatives are the other K−1 keys of the
    same image (``internal_negatives``, CUT) and/or ``negatives`` (B, M, D), e.g. generated ones
    (NEGCUT/CDD-GAN). Keys are detached. Generated negatives are *not* detached here: in the
    generator step they are made under ``no_grad``; in the negative generator's step their gradient
    is the point.

    The in-image logits come from one batched matrix product ``q·kᵀ`` whose diagonal holds the
    positives, so the target of row i is column i (no K×K×D cosine tensor, no diagonal masking).
    """
    if not internal_negatives and negatives is None:
        raise ValueError("PatchNCE needs negatives: set internal_negatives or pass generated negatives")
    key = key.detach()
    b, k, _ = query.shape
    if internal_negatives:
        logits = torch.bmm(query, key.transpose(1, 2))  # (B, K, K), positives on the diagonal
        target = torch.arange(k, device=query.device)
    else:
        logits = (query * key).sum(-1, keepdim=True)  # (B, K, 1), positive in column 0
        target = torch.zeros(k, dtype=torch.long, device=query.device)
    if negatives is not None:
        logits = torch.cat([logits, torch.bmm(query, negatives.transpose(1, 2))], dim=2)
    logits = logits.float() / temperature
    return F.cross_entropy(logits.flatten(0, 1), target.repeat(b))


def negative_adversary_loss(query: torch.Tensor, key: torch.Tensor, negatives: torch.Tensor,
                            internal_negatives: bool = True, temperature: float = 0.07) -> torch.Tensor:
    """What the negative generator minimises: minus the PatchNCE loss of fixed query/key pairs.

    Query and key are detached, so only the negatives receive gradient; lowering this loss makes
    the negatives harder (more similar to the queries than the positives are).
    """
    return -patch_nce_loss(query.detach(), key, negatives, internal_negatives, temperature)


def diversity_loss(negatives: torch.Tensor, noise: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mode-seeking term against collapse of the negative generator (lower = more diverse).

    Splits the K negatives (B, K, D) and their noise inputs (B, K, Z) into two halves and returns
    1 / (ratio + eps) where ratio = mean|n_a − n_b| / mean|z_a − z_b|: outputs that ignore the noise
    make the ratio small and the loss large. The ratio is taken per image and the loss averaged over
    the batch, like every other term, so that a batch split across processes gives the same gradient.
    """
    half = negatives.shape[1] // 2
    if half == 0:
        return negatives.new_zeros(())
    out_gap = (negatives[:, :half] - negatives[:, half:2 * half]).abs().mean(dim=(1, 2))
    noise_gap = (noise[:, :half] - noise[:, half:2 * half]).abs().mean(dim=(1, 2))
    return (1.0 / (out_gap / (noise_gap + eps) + eps)).mean()


def l1_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference: the cycle (F(G(x)) vs x) and identity (G(y) vs y) terms."""
    return (output - target).abs().mean()
