"""The CDD-GAN step: every named loss is optimised, and the negative generator plays against the generators."""
import copy

import pytest
import torch
from conftest import tiny_config

from napari_cdd_dehaze.gan.methods import build_method

LOGGED = {"critics", "negative_adversary", "negative_diversity", "gan", "nce", "cycle", "identity", "generators"}


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, 32, 32, generator=g) * 2 - 1, torch.rand(1, 3, 32, 32, generator=g) * 2 - 1


def _method(**changes):
    torch.manual_seed(0)
    return build_method(tiny_config(**changes))


def _params_after_one_step(**changes):
    m = _method(**changes)
    m.training_step(*_batch(), m.make_optimisers(), torch.Generator().manual_seed(1))
    return m


def test_step_logs_every_term_and_the_sum_is_the_weighted_terms():
    m = _method()
    losses = m.training_step(*_batch(), m.make_optimisers(), torch.Generator().manual_seed(1))
    assert set(losses) == LOGGED
    c = m.config
    expected = (c.lambda_gan * losses["gan"] + c.lambda_nce * losses["nce"] + c.lambda_cycle * losses["cycle"]
                + c.lambda_identity * losses["identity"])
    assert losses["generators"] == pytest.approx(expected, rel=1e-5)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())


@pytest.mark.parametrize("weight", ["lambda_gan", "lambda_nce", "lambda_cycle", "lambda_identity"])
def test_each_generator_term_really_moves_the_generators(weight):
    """Changing a term's weight changes the update of G: the term is in the optimised sum."""
    base = _params_after_one_step()
    changed = _params_after_one_step(**{weight: getattr(base.config, weight) * 3 + 1})
    w0, w1 = base.restorer.encoder[1].weight, changed.restorer.encoder[1].weight
    assert not torch.allclose(w0, w1)


def test_diversity_term_moves_the_negative_generators():
    base = _params_after_one_step()
    changed = _params_after_one_step(lambda_diversity=5.0)
    a = base.negatives_restorer.mlps[0][0].weight
    b = changed.negatives_restorer.mlps[0][0].weight
    assert not torch.allclose(a, b)
    # and the critics' update does not depend on it (D is updated first, from the same forward)
    assert torch.equal(base.critic_clean.model[0].weight, changed.critic_clean.model[0].weight)


def _generated_nce(m, degraded, clean):
    """NCE against generated negatives with fixed positions and noise (same seed each call)."""
    rng = torch.Generator().manual_seed(7)
    with torch.no_grad():
        return m.nce_loss(m.contrast_pairs(m.translate(degraded, clean), rng), rng).item()


def test_negative_generator_raises_the_nce_it_is_trained_against_and_the_g_step_lowers_it():
    m = _method(negatives="generated", lr=1e-3)
    opts = m.make_optimisers()
    degraded, clean = _batch()
    before = _generated_nce(m, degraded, clean)

    rng = torch.Generator().manual_seed(7)
    pairs = m.contrast_pairs(m.translate(degraded, clean), rng)
    adversary, diversity = m.negative_losses(pairs, rng)
    m._update(opts["negatives"], adversary + m.config.lambda_diversity * diversity)
    after_negatives = _generated_nce(m, degraded, clean)
    assert after_negatives > before + 1e-3

    rng = torch.Generator().manual_seed(7)
    pairs = m.contrast_pairs(m.translate(degraded, clean), rng)
    m._update(opts["generators"], m.nce_loss(pairs, rng))
    after_generators = _generated_nce(m, degraded, clean)
    assert after_generators < after_negatives - 1e-3


def test_negatives_keep_the_contrast_hard_during_training():
    """DESIGN trap: in public NEGCUT runs the NCE against generated negatives fell to 0 at step 2."""
    m = _method(negatives="generated", lr=1e-3)
    opts, rng = m.make_optimisers(), torch.Generator().manual_seed(1)
    degraded, clean = _batch()
    nce = [m.training_step(degraded, clean, opts, rng)["nce"] for _ in range(12)]
    assert min(nce) > 0.5, nce


def test_momentum_heads_and_generator_ema_follow_slowly():
    m = _method(head_momentum=0.5, generator_ema=0.05)
    heads0 = copy.deepcopy(m.momentum_heads_restorer.state_dict())
    m.training_step(*_batch(), m.make_optimisers(), torch.Generator().manual_seed(1))
    for name, old in heads0.items():
        live, momentum = m.heads_restorer.state_dict()[name], m.momentum_heads_restorer.state_dict()[name]
        assert torch.allclose(momentum, 0.5 * old + 0.5 * live, atol=1e-6)
    assert not any(p.requires_grad for p in m.momentum_heads_restorer.parameters())
    assert m.shipped_restorer() is m.ema_restorer
    assert _method(generator_ema=0).shipped_restorer() is not None


@pytest.mark.parametrize("negatives", ["internal", "generated", "both"])
@pytest.mark.parametrize("gan_mode", ["lsgan", "hinge"])
def test_all_modes_train(negatives, gan_mode):
    m = _method(negatives=negatives, gan_mode=gan_mode, lambda_identity=0 if negatives == "internal" else 1)
    losses = m.training_step(*_batch(), m.make_optimisers(), torch.Generator().manual_seed(1))
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())


def _scattering_method(**changes):
    torch.manual_seed(0)
    return build_method(tiny_config(output="scattering", dark_patch=5, estimate_size=64, pool_airlight=1, **changes))



def test_the_haze_airlight_range_is_checked_and_survives_a_recipe_round_trip():
    from napari_cdd_dehaze.gan.config import TrainConfig

    with pytest.raises(ValueError, match="rehaze_airlight must be"):
        tiny_config(output="scattering", rehaze_airlight=(0.9, 0.8))
    config = tiny_config(output="scattering", lambda_rehaze_cycle=1.0, rehaze_airlight=(0.95, 1.0))
    assert TrainConfig.from_dict(config.to_dict()).rehaze_airlight == (0.95, 1.0)



@pytest.mark.parametrize("term", ["rehaze_cycle", "hazed_clean", "dark_match"])
def test_an_optional_term_is_logged_and_in_the_optimised_sum(term):
    m = _method(**{f"lambda_{term}": 2.0})  # any output: neither needs maps, only a restorer
    losses = m.training_step(*_batch(), m.make_optimisers(), torch.Generator().manual_seed(1))
    c = m.config
    assert set(losses) == LOGGED | {term} and losses[term] > 0
    expected = (c.lambda_gan * losses["gan"] + c.lambda_nce * losses["nce"] + c.lambda_cycle * losses["cycle"]
                + c.lambda_identity * losses["identity"] + 2.0 * losses[term])
    assert losses["generators"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("changes, message", [
    (dict(lambda_rehaze_cycle=-1.0), "lambda_rehaze_cycle must be"),
    (dict(method="dcd-gan", negatives="internal", lambda_rehaze_cycle=1.0), "lambda_rehaze_cycle needs"),
    (dict(lambda_rehaze_cycle=1.0, rehaze_power=(1.0, 0.5)), "rehaze_power must be"),
    (dict(lambda_hazed_clean=-1.0), "lambda_hazed_clean must be"),
    (dict(method="dcd-gan", negatives="internal", lambda_hazed_clean=1.0), "lambda_hazed_clean needs"),
    (dict(lambda_hazed_clean=1.0, hazed_clean_power=(2.0, 0.5)), "hazed_clean_power must be"),
])
def test_the_haze_cycle_and_transplant_terms_check_their_recipe(changes, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**changes)


def test_the_haze_cycle_power_range_survives_a_recipe_round_trip():
    from napari_cdd_dehaze.gan.config import TrainConfig

    config = tiny_config(lambda_rehaze_cycle=1.0, rehaze_power=(0.5, 0.75))
    assert TrainConfig.from_dict(config.to_dict()).rehaze_power == (0.5, 0.75)
    config = tiny_config(lambda_hazed_clean=1.0, hazed_clean_power=(0.5, 2.0))
    assert TrainConfig.from_dict(config.to_dict()).hazed_clean_power == (0.5, 2.0)


def test_the_dark_channel_transmission_reads_the_haze_it_was_given():
    """On a photo hazed with a known depth ramp, the torch DCP transmission is low where the haze is dense."""
    import numpy as np
    from skimage import data

    from napari_cdd_dehaze.imaging.primitives import dark_channel_transmission
    from napari_cdd_dehaze.imaging.synthesis import add_haze, ramp_depth

    photo = data.astronaut()[::4, ::4] / 255.0
    depth = ramp_depth(photo.shape[:2], 0.1, 1.0)
    hazy = add_haze(photo, depth, beta=1.5, airlight=0.9)
    t = dark_channel_transmission(torch.from_numpy(np.asarray(hazy)).float().permute(2, 0, 1)[None])[0, 0].numpy()
    true = np.exp(-1.5 * depth)
    assert t.min() >= 0.1 and t.max() <= 1
    assert t[:32].mean() < t[-32:].mean() - 0.2  # the far top is hazier than the near bottom
    assert np.abs(t - true).mean() < 0.15, np.abs(t - true).mean()


def _as_tensor(image) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(image)).float().permute(2, 0, 1)[None] * 2 - 1


def _train_a_near_identity_restorer(changes: dict, loss_at_step) -> tuple[tuple[float, float], tuple[float, float]]:
    """(squared error against the clear photo, mean t) of a restorer on a hazed photo, before and after 80 Adam
    steps on ``loss_at_step(method, hazy, step, rng)`` alone. The restorer starts near the identity (t ≈ 0.95)."""
    from skimage import data

    from napari_cdd_dehaze.imaging.synthesis import add_haze, ramp_depth

    m = _method(output="scattering", dark_patch=15, **changes)
    with torch.no_grad():
        m.restorer.head[1].bias[0] = 3.0
    photo = data.astronaut()[::4, ::4] / 255.0
    hazy = _as_tensor(add_haze(photo, ramp_depth(photo.shape[:2], 0.3, 1.0), beta=1.2, airlight=0.85))
    clear = _as_tensor(photo)

    def error_and_transmission():
        with torch.no_grad():
            out, t, _ = m.restorer.forward_with_maps(hazy)
        return float(((out - clear) ** 2).mean()), float(t.mean())

    before = error_and_transmission()
    optimiser, rng = torch.optim.Adam(m.restorer.parameters(), lr=1e-3), torch.Generator().manual_seed(0)
    for step in range(80):
        optimiser.zero_grad()
        loss_at_step(m, hazy, step, rng).backward()
        optimiser.step()
    return before, error_and_transmission()


def test_the_haze_cycle_term_alone_teaches_a_restorer_near_the_identity_to_dehaze():
    """Trained on the haze cycle alone, a restorer that starts near the identity removes the haze of a photo it
    never sees clean: the identity does not satisfy the term, unlike the re-haze with G's own t."""
    from napari_cdd_dehaze.gan.methods.common import Translations

    def haze_cycle(m, hazy, step, rng):
        i, j = torch.randint(0, 80, (2,), generator=torch.Generator().manual_seed(step))
        x = hazy[..., i:i + 48, j:j + 48]
        with torch.no_grad():
            out = Translations(m.restorer(x), *[None] * 5, [], [], [], [])
        return m.rehaze_cycle_loss(x, out, rng)

    (error0, t0), (error, t) = _train_a_near_identity_restorer(dict(lambda_rehaze_cycle=1.0), haze_cycle)
    assert error < 0.6 * error0, (error0, error)
    assert t < t0 - 0.15, (t0, t)


def test_the_dark_channel_transmission_can_follow_another_images_edges():
    """Refined on another image's grey, the map keeps the hazy image's density and takes the guide's edges."""
    from napari_cdd_dehaze.imaging.primitives import dark_channel_transmission

    hazy = torch.full((1, 3, 64, 64), 0.5)
    hazy[..., :32, :] = 0.85  # a denser haze over the top half
    hazy[..., 40:44, :] = 0.05  # and a dark object in the near half
    guide = torch.zeros(1, 3, 64, 64)
    guide[..., :, 32:] = 1.0  # the guide's edge runs down the middle
    own, guided = dark_channel_transmission(hazy), dark_channel_transmission(hazy, guide=guide)
    assert guided[..., :20, :].mean() < guided[..., 48:, :].mean() - 0.1  # density layout kept
    assert abs(float(guided.mean()) - float(own.mean())) < 0.05
    across = lambda t: float((t[..., 48:, 33] - t[..., 48:, 30]).abs().mean())  # noqa: E731
    assert across(guided) > across(own)


def test_the_haze_transplant_alone_teaches_a_restorer_near_the_identity_to_dehaze():
    """Trained on the haze transplant alone, with hazy crops of one photo and clean crops of *other* photos, a
    restorer that starts near the identity removes the haze of the hazy photo, whose clear version it never
    sees."""
    from skimage import data

    others = torch.cat([_as_tensor(data.coffee()[::3, ::3][:128, :128] / 255.0),
                        _as_tensor(data.chelsea()[::2, ::2][:128, :128] / 255.0)])

    def transplant(m, hazy, step, rng):
        i, j, u, v = torch.randint(0, 80, (4,), generator=torch.Generator().manual_seed(step))
        return m.hazed_clean_loss(hazy[..., i:i + 48, j:j + 48].expand(2, -1, -1, -1),
                                  others[..., u:u + 48, v:v + 48], rng)

    (error0, t0), (error, t) = _train_a_near_identity_restorer(dict(lambda_hazed_clean=1.0), transplant)
    assert error < 0.6 * error0, (error0, error)
    assert t < t0 - 0.15, (t0, t)


@pytest.mark.parametrize("changes, message", [
    (dict(lambda_dark_match=-0.5), "lambda_dark_match must be"),
    (dict(method="dcd-gan", negatives="internal", lambda_dark_match=1.0), "lambda_dark_match needs"),
])
def test_the_dark_match_term_checks_its_recipe(changes, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**changes)


def test_the_dark_match_term_is_the_difference_of_mean_dark_channels():
    """A uniform grey output of level g against a clean image whose least channel is c everywhere: |g − c|."""
    from napari_cdd_dehaze.gan.methods.common import Translations

    m = _method(lambda_dark_match=1.0)
    restored = torch.full((2, 3, 20, 20), 0.6) * 2 - 1
    clean = torch.stack([torch.tensor([0.2, 0.5, 0.9]), torch.tensor([0.7, 0.8, 0.9])])[..., None, None]
    clean = clean.expand(2, 3, 20, 20) * 2 - 1
    out = Translations(restored, *[None] * 5, [], [], [], [])
    assert float(m.dark_match_loss(clean, out)) == pytest.approx((0.4 + 0.1) / 2, abs=1e-6)



def test_the_dark_match_term_pulls_the_transmission_of_an_under_and_an_over_dehazing_restorer_back():
    """The term's gradient on the head's transmission bias: a restorer that leaves the haze (t ≈ 0.95 on a
    hazy photo) is told to lower t, one that over-dehazes (t < 0.2 on a lightly hazy photo) to raise it.
    The clean images are of *other* scenes. (Alone the term is a global statistic and can be met by any
    darkening, so it is trained beside the adversarial and cycle terms, never on its own.)"""
    import numpy as np
    from skimage import data

    from napari_cdd_dehaze.gan.methods.common import Translations
    from napari_cdd_dehaze.imaging.synthesis import add_haze, ramp_depth

    as_tensor = lambda a: torch.from_numpy(np.asarray(a)).float().permute(2, 0, 1)[None] * 2 - 1  # noqa: E731
    photo = data.astronaut()[::4, ::4][:96, :96] / 255.0
    others = torch.cat([as_tensor(data.coffee()[::4, ::4][:96, :96] / 255.0),
                        as_tensor(data.chelsea()[::3, ::3][:96, :96] / 255.0)])  # two other clear scenes

    def transmission_gradient(bias, beta):
        m = _method(output="scattering", dark_patch=15, estimate_size=128, pool_airlight=1, lambda_dark_match=1.0)
        with torch.no_grad():
            m.restorer.head[1].bias[0] = bias
        hazy = as_tensor(add_haze(photo, ramp_depth(photo.shape[:2], 0.3, 1.0), beta=beta, airlight=0.85))
        hazy = hazy.expand(2, 3, 96, 96)
        out = Translations(m.restorer(hazy), *[None] * 5, [], [], [], [])
        m.dark_match_loss(others, out).backward()
        with torch.no_grad():
            _, t, _ = m.restorer.forward_with_maps(hazy)
        return float(m.restorer.head[1].bias.grad[0]), float(t.mean())

    grad, t = transmission_gradient(3.0, beta=1.5)
    assert t > 0.9 and grad > 0, (t, grad)  # gradient descent lowers the bias, so t
    grad, t = transmission_gradient(-6.0, beta=0.3)
    assert t < 0.2 and grad < 0, (t, grad)


def test_a_relative_clean_critic_does_not_see_the_light_of_a_scene():
    """With ``clean_critic_sees: relative`` the clean critic's verdict on a photo and on the same photo at half
    the light is the same, and so is the generator's adversarial loss; the default critic tells them apart."""
    from napari_cdd_dehaze.gan.methods.common import Translations

    scene = (_batch()[1] + 1) / 2
    dim = scene * 0.5
    as_signed = lambda unit: unit * 2 - 1  # noqa: E731
    for sees, same in (("relative", True), ("image", False)):
        m = _method(clean_critic_sees=sees)
        bright_verdict, dim_verdict = m.judge_clean(as_signed(scene)), m.judge_clean(as_signed(dim))
        assert torch.allclose(bright_verdict, dim_verdict, atol=1e-5) == same, sees
        with torch.no_grad():  # the restored scene at either light; the degraded critic's input stays as it is
            losses = [float(m.adversarial_loss(Translations(as_signed(s), as_signed(scene), *[None] * 4,
                                                            [], [], [], []))) for s in (scene, dim)]
        assert (losses[0] == pytest.approx(losses[1], abs=1e-5)) == same, sees


def test_the_clean_critic_view_is_checked():
    with pytest.raises(ValueError, match="clean_critic_sees must be"):
        tiny_config(clean_critic_sees="exposure")
