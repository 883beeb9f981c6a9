import numpy as np
import pytest
import torch

from napari_cdd_dehaze.gan.networks import GeneratorConfig, ResnetGenerator
from napari_cdd_dehaze.gan.training_networks import (
    NegativeGenerator,
    PatchDiscriminator,
    ProjectionHeads,
    gather_patches,
    sample_patches,
)
from napari_cdd_dehaze.imaging.primitives import estimate_airlight, guided_filter, image_guided_filter


@pytest.mark.parametrize("upsample", ["resize", "transpose"])
def test_generator_keeps_shape_and_range(upsample):
    g = ResnetGenerator(GeneratorConfig(channels=3, width=8, blocks=2, upsample=upsample))
    x = torch.rand(2, 3, 36, 44) * 2 - 1
    y = g(x)
    assert y.shape == x.shape
    assert y.abs().max() <= 1


def test_encoder_layer_indexing_follows_the_lineage():
    # Layout (CUT --no_antialias): 0 padded input, 1-3 stem conv/norm/relu, 4-6 down 1, 7-9 down 2, 10.. blocks.
    g = ResnetGenerator(GeneratorConfig(width=8, blocks=9))
    layers = (0, 4, 8, 12, 16)
    assert g.layer_channels(layers) == [3, 16, 32, 32, 32]
    x = torch.rand(1, 3, 64, 64)
    taps = g.encode(x, layers)
    assert [tuple(t.shape[1:]) for t in taps] == [(3, 70, 70), (16, 32, 32), (32, 16, 16), (32, 16, 16), (32, 16, 16)]
    assert torch.equal(taps[0][..., 3:-3, 3:-3], x)  # layer 0 is the reflection-padded image itself
    # forward with taps gives the same image and the same features as separate passes
    out, taps_fwd = g(x, layers)
    assert torch.allclose(out, g(x), atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(taps, taps_fwd, strict=False))


def test_bad_layer_index_is_a_clear_error():
    g = ResnetGenerator(GeneratorConfig(width=8, blocks=2))
    with pytest.raises(ValueError, match="out of range"):
        g.encode(torch.rand(1, 3, 32, 32), (0, 16))


def test_patch_discriminator_is_70px_patchgan():
    d = PatchDiscriminator(3, 8)
    assert d(torch.rand(1, 3, 256, 256)).shape == (1, 1, 30, 30)  # the 70×70 PatchGAN's map at 256²
    # receptive field of one score, from the conv stack (InstanceNorm aside, which is image-wide)
    field = 1
    for conv in reversed([m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]):
        field = field * conv.stride[0] + conv.kernel_size[0] - conv.stride[0]
    assert field == 70


def test_heads_are_built_eagerly_and_normalise():
    heads = ProjectionHeads([3, 16, 32], dim=24)
    assert sum(p.numel() for p in heads.parameters()) > 0  # no lazy creation on the first batch
    v = heads(1, torch.randn(2, 5, 16))
    assert v.shape == (2, 5, 24)
    assert torch.allclose(v.norm(dim=-1), torch.ones(2, 5), atol=1e-5)


def test_negative_generator_gives_k_unit_negatives_that_depend_on_noise():
    n = NegativeGenerator(layers=2, dim=24, noise_dim=8)
    pooled = torch.nn.functional.normalize(torch.randn(3, 24), dim=-1)
    negs = n(1, pooled, torch.randn(3, 10, 8))
    assert negs.shape == (3, 10, 24)
    assert torch.allclose(negs.norm(dim=-1), torch.ones(3, 10), atol=1e-5)
    assert not torch.allclose(negs, n(1, pooled, torch.randn(3, 10, 8)))


def test_patch_sampling_reads_the_same_positions():
    feats = [torch.arange(2 * 4 * 6 * 6, dtype=torch.float).reshape(2, 4, 6, 6)]
    picked, idx = sample_patches(feats, 5, torch.Generator().manual_seed(0))
    assert picked[0].shape == (2, 5, 4)
    again = gather_patches([feats[0] + 1], idx)
    assert torch.equal(again[0], picked[0] + 1)
    # fewer positions than asked for: all of them
    picked, _ = sample_patches([torch.rand(1, 4, 2, 2)], 16)
    assert picked[0].shape == (1, 4, 4)


def test_scattering_outputs_invert_each_other_and_keep_grey_grey():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16) * 0.4 + 0.5   # unit range, hazy-looking values: nothing clips
    decoded = torch.randn(2, 2, 16, 16) * 0.5
    dehaze = ResnetGenerator(GeneratorConfig(width=8, blocks=1, output="dehaze"))
    haze = ResnetGenerator(GeneratorConfig(width=8, blocks=1, output="haze"))
    clear = (dehaze.compose(x * 2 - 1, decoded) + 1) / 2
    assert not torch.allclose(clear, x, atol=1e-3)
    assert torch.allclose((haze.compose(clear * 2 - 1, decoded) + 1) / 2, x, atol=1e-5)
    # one affine map for every channel: a grey input stays grey, whatever the network predicts
    grey = x[:, :1].expand(-1, 3, -1, -1) * 2 - 1
    out = dehaze(grey)
    assert out.shape == grey.shape and torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])
    # near the identity at initialisation (t ≈ 0.89): training starts from "change little"
    fresh = ResnetGenerator(GeneratorConfig(width=8, blocks=1, output="dehaze"))
    assert (fresh(x * 2 - 1) - (x * 2 - 1)).abs().mean() < 0.1


def test_rain_outputs_invert_each_other_and_match_the_rain_synthesis():
    """``rain`` is I = (J + s)·t + a·(1 − t) with a grey streak layer s; ``derain`` undoes it."""
    torch.manual_seed(0)
    clear = torch.rand(2, 3, 16, 16) * 0.4 + 0.2
    decoded = torch.randn(2, 3, 16, 16) * 0.5
    rain = ResnetGenerator(GeneratorConfig(width=8, blocks=1, output="rain"))
    derain = ResnetGenerator(GeneratorConfig(width=8, blocks=1, output="derain"))
    assert rain.head[-1].out_channels == 3 and derain.head[-1].out_channels == 3
    rainy = (rain.compose(clear * 2 - 1, decoded) + 1) / 2
    assert torch.allclose((derain.compose(rainy * 2 - 1, decoded) + 1) / 2, clear, atol=1e-5)
    # with the veil fully open (t → 1) it is the additive streaks alone, the same on every channel
    no_veil = decoded.clone()
    no_veil[:, 0] = 50
    added = (rain.compose(clear * 2 - 1, no_veil) + 1) / 2 - clear
    assert (added >= 0).all() and torch.allclose(added[:, 0], added[:, 1], atol=1e-6)
    # near the identity at initialisation (t ≈ 0.89, streaks ≈ 0.05): training starts from "change little"
    fresh = ResnetGenerator(GeneratorConfig(width=8, blocks=1, output="derain"))
    assert ((fresh(clear * 2 - 1) + 1) / 2 - clear).abs().mean() < 0.12


def test_image_output_keeps_its_architecture():
    g = ResnetGenerator(GeneratorConfig(width=8, blocks=1))
    assert g.decoder[-1].__class__.__name__ == "Tanh" and g.decoder[-2].out_channels == 3
    s = ResnetGenerator(GeneratorConfig(width=8, blocks=1, output="haze"))
    assert s.head[-1].out_channels == 2 and s.head[-1].in_channels == 8 + 3 + 1  # features, input, its minimum


def test_dark_channel_prior_input_is_the_windowed_channel_minimum():
    g = ResnetGenerator(GeneratorConfig(width=8, blocks=1, output="dehaze", dark_patch=5))
    x = torch.ones(1, 3, 12, 12)
    x[0, 1, 6, 6] = -1.0  # one dark pixel in one channel
    priors = g.intensity_priors(x)
    assert priors.shape == (1, 5, 12, 12) and g.head[1].in_channels == 8 + 5
    dark = priors[0, 4]
    assert dark[4:9, 4:9].eq(-1).all() and dark.eq(-1).sum() == 25  # the window's reach, borders included
    assert torch.equal(priors[0, 3], x.amin(dim=1)[0])
    assert ResnetGenerator(GeneratorConfig(width=8, blocks=1, output="dehaze")).head[1].in_channels == 8 + 4
    with pytest.raises(ValueError, match="dark_patch"):
        GeneratorConfig(width=8, blocks=1, output="dehaze", dark_patch=4)  # even: no centre
    with pytest.raises(ValueError, match="dark_patch"):
        GeneratorConfig(width=8, blocks=1, output="image", dark_patch=15)


def test_estimated_airlight_is_the_brightest_of_the_haziest_pixels():
    unit = torch.zeros(2, 3, 40, 50)
    unit[0, :, 20:30, 30:45] = torch.tensor([0.8, 0.7, 0.6])[:, None, None]  # a hazy patch (high dark channel)
    unit[0, :, 25, 40] = torch.tensor([0.9, 0.8, 0.75])  # its brightest pixel
    unit[0, :, 2, 2] = 1.0  # a white speck: bright, but its dark channel over the window is 0
    unit[1] = 0.3  # flat: every pixel ties; the first in raster order is taken
    a = estimate_airlight(unit, patch=5)
    assert a.shape == (2, 3, 1, 1)
    assert torch.allclose(a[0].flatten(), torch.tensor([0.9, 0.8, 0.75]))
    assert torch.allclose(a[1].flatten(), torch.full((3,), 0.3))



def test_the_guided_filter_in_float32_is_the_float64_one_of_the_classical_methods():
    torch.manual_seed(0)
    guide, source = torch.rand(1, 1, 37, 53), torch.rand(1, 1, 37, 53)
    for radius in (1, 6, 30):  # 30: windows wider than the image, cut off at its borders
        expected = image_guided_filter(guide[0, 0].numpy(), source[0, 0].numpy(), radius, 1e-3)
        assert guided_filter(guide, source, radius).dtype == torch.float32
        assert np.abs(guided_filter(guide, source, radius)[0, 0].numpy() - expected).max() < 1e-5


