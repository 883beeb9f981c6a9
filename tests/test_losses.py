"""Each loss on a case small enough to work out by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from napari_cdd_dehaze.gan.losses import (
    discriminator_loss,
    diversity_loss,
    generator_adversarial_loss,
    l1_loss,
    negative_adversary_loss,
    patch_nce_loss,
)


def test_lsgan():
    real, fake = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # D: ½·[mean((r−1)²) + mean(f²)] = ½·[(0+1)/2 + (0+1)/2] = 0.5
    assert discriminator_loss(real, fake, "lsgan").item() == pytest.approx(0.5)
    # G: mean((f−1)²) = (1 + 0)/2
    assert generator_adversarial_loss(fake, "lsgan").item() == pytest.approx(0.5)
    assert discriminator_loss(torch.ones(3), torch.zeros(3), "lsgan").item() == 0


def test_hinge():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # D: ½·[mean(relu(1−r)) + mean(relu(1+f))] = ½·[(0 + 0.5)/2 + (0 + 1)/2] = 0.375
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(0.375)
    assert generator_adversarial_loss(fake, "hinge").item() == pytest.approx(1.0)  # −mean(f)
    with pytest.raises(ValueError, match="unknown GAN mode"):
        discriminator_loss(real, fake, "wgan")


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float), dim=-1)[None]


def test_patch_nce_in_image_negatives_by_hand():
    # two patches; query i equals key i, and the two keys are orthogonal
    q = k = _unit([1, 0], [0, 1])
    tau = 0.5
    # each row: logits [1/τ, 0] → CE = log(1 + e^{−1/τ})
    expected = math.log(1 + math.exp(-1 / tau))
    assert patch_nce_loss(q, k, temperature=tau).item() == pytest.approx(expected, rel=1e-6)
    # swapping the keys makes every query pick the wrong key: CE = log(1 + e^{1/τ})
    assert patch_nce_loss(q, k.flip(1), temperature=tau).item() == pytest.approx(math.log(1 + math.exp(1 / tau)))


def test_patch_nce_with_generated_negatives_by_hand():
    q = k = _unit([1, 0], [0, 1])
    negs = _unit([1, 0])  # one generated negative equal to query 0
    tau = 1.0
    # generated only: row 0 logits [1, 1] → log 2; row 1 logits [1, 0] → log(1 + e^{−1})
    expected = (math.log(2) + math.log(1 + math.exp(-1))) / 2
    assert patch_nce_loss(q, k, negs, internal_negatives=False, temperature=tau).item() == pytest.approx(expected)
    # both: row 0 logits [1, 0, 1]; row 1 logits [0, 1, 0]
    both = (math.log(2 + math.exp(-1)) + math.log(1 + 2 * math.exp(-1))) / 2
    assert patch_nce_loss(q, k, negs, internal_negatives=True, temperature=tau).item() == pytest.approx(both)
    with pytest.raises(ValueError, match="needs negatives"):
        patch_nce_loss(q, k, None, internal_negatives=False)


def test_patch_nce_trains_the_query_only():
    q = _unit([1, 0.2], [0.3, 1]).requires_grad_()
    k = _unit([1, 0], [0, 1]).requires_grad_()
    patch_nce_loss(q, k).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None


def test_negative_adversary_is_minus_nce_and_moves_only_negatives():
    q, k = _unit([1, 0], [0, 1]), _unit([1, 0], [0, 1])
    negs = _unit([0, 1], [1, 0]).requires_grad_()
    loss = negative_adversary_loss(q.requires_grad_(), k, negs, internal_negatives=False, temperature=1.0)
    assert loss.item() == pytest.approx(-patch_nce_loss(q, k, negs, False, 1.0).item())
    loss.backward()
    assert q.grad is None and negs.grad.abs().sum() > 0


def test_diversity_loss_prefers_outputs_that_follow_the_noise():
    noise = torch.tensor([[[0.0], [1.0]]])  # two halves: z_a = 0, z_b = 1
    collapsed = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]])
    spread = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    # ratio = mean|n_a − n_b| / mean|z_a − z_b|: 0 for collapsed (loss 1/eps), 1 for spread (loss ≈ 1)
    assert diversity_loss(spread, noise).item() == pytest.approx(1.0, rel=1e-3)
    assert diversity_loss(collapsed, noise).item() > 1e4


def test_l1():
    assert l1_loss(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])).item() == 0.5
