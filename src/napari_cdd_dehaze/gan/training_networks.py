"""The networks only training needs, beside the generator: the PatchGAN critic, the contrastive projection heads
and the negative generators, and the lineage's initialisation.

* :class:`PatchDiscriminator` — the 70×70 PatchGAN.
* :class:`ProjectionHeads` — one 2-layer MLP per tapped layer, built eagerly from known channel counts
  (lazy creation on the first batch breaks optimiser construction, weight loading and DDP wrapping).
* :class:`NegativeGenerator` — per tapped layer, maps (pooled key feature, Gaussian noise) to K
  L2-normalised negatives in the heads' output space.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """70×70 PatchGAN: a map of real/fake scores, one per overlapping 70×70 patch."""

    def __init__(self, channels: int = 3, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < layers else 1
            seq += [nn.Conv2d(width * prev, width * mult, 4, stride=stride, padding=1),
                    nn.InstanceNorm2d(width * mult), nn.LeakyReLU(0.2, inplace=True)]
        seq += [nn.Conv2d(width * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _mlp(cin: int, hidden: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, cout))


class ProjectionHeads(nn.Module):
    """One 2-layer MLP per tapped encoder layer; outputs are L2-normalised."""

    def __init__(self, in_channels: list[int], dim: int = 256) -> None:
        super().__init__()
        self.mlps = nn.ModuleList(_mlp(c, dim, dim) for c in in_channels)

    def forward(self, layer: int, vectors: torch.Tensor) -> torch.Tensor:
        """Project ``vectors`` (..., C) of tapped layer number ``layer`` (position in the tap list)."""
        return F.normalize(self.mlps[layer](vectors), dim=-1)


def sample_patches(features: list[torch.Tensor], count: int, generator: torch.Generator | None = None,
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Pick ``count`` random spatial positions per layer (the same for every image in the batch).

    Returns the picked feature vectors, shape (B, K, C) per layer, and the flat indices used, so that
    the same positions can be read from another feature map of equal size.
    """
    picked, indices = [], []
    for feat in features:
        b, c, h, w = feat.shape
        k = min(count, h * w)
        idx = torch.randperm(h * w, generator=generator)[:k].to(feat.device)
        picked.append(feat.flatten(2)[:, :, idx].transpose(1, 2))
        indices.append(idx)
    return picked, indices


def gather_patches(features: list[torch.Tensor], indices: list[torch.Tensor]) -> list[torch.Tensor]:
    """Read the feature vectors at ``indices`` (from :func:`sample_patches`), shape (B, K, C)."""
    return [feat.flatten(2)[:, :, idx].transpose(1, 2) for feat, idx in zip(features, indices, strict=False)]


class NegativeGenerator(nn.Module):
    """Hard-negative generator ("negative adversary") of NEGCUT/CDD-GAN.

    For each tapped layer it takes one pooled, projected key vector per image, repeats it K times,
    appends K fresh Gaussian noise vectors and maps each through a small MLP to a unit vector, i.e.
    K negatives per image that live in the projection heads' output space.
    """

    def __init__(self, layers: int, dim: int = 256, noise_dim: int = 64, hidden: int = 256) -> None:
        super().__init__()
        self.noise_dim = noise_dim
        self.mlps = nn.ModuleList(_mlp(dim + noise_dim, hidden, dim) for _ in range(layers))

    def forward(self, layer: int, pooled: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``pooled`` (B, D) and ``noise`` (B, K, noise_dim) → negatives (B, K, D), unit length."""
        k = noise.shape[1]
        x = torch.cat([pooled[:, None, :].expand(-1, k, -1), noise], dim=-1)
        return F.normalize(self.mlps[layer](x), dim=-1)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """The lineage's N(0, 0.02) initialisation for conv and linear weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
