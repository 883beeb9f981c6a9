"""The DCD-GAN step: every term is optimised (the cycle term too, unlike the public release), the contrast
is cross-encoder, and the method trains, checkpoints, resumes and ships its restorer like CDD-GAN."""
import pytest
import torch
from conftest import tiny_config

from napari_cdd_dehaze.gan.checkpoint import CheckpointError, latest_checkpoint, load_restorer, read_meta
from napari_cdd_dehaze.gan.methods import DCDGAN, build_method
from napari_cdd_dehaze.gan.trainer import Trainer
from napari_cdd_dehaze.gan.training_networks import gather_patches, sample_patches

LOGGED = {"critics", "gan", "nce", "cycle", "identity", "generators"}


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, 32, 32, generator=g) * 2 - 1, torch.rand(1, 3, 32, 32, generator=g) * 2 - 1


def _method(**changes):
    torch.manual_seed(0)
    return build_method(tiny_config(method="dcd-gan", **changes))


def _after_one_step(**changes):
    m = _method(**changes)
    m.training_step(*_batch(), m.make_optimisers(), torch.Generator().manual_seed(1))
    return m


def test_builds_two_generators_critics_and_heads_and_no_negative_generators():
    m = _method()
    assert isinstance(m, DCDGAN) and m.config.gan_mode == "hinge" and m.config.lr == 1e-4
    names = {name for name, _ in m.named_children()}
    assert names == {"restorer", "degrader", "critic_clean", "critic_degraded", "heads_restorer", "heads_degrader",
                     "ema_restorer"}
    assert set(m.make_optimisers()) == {"critics", "generators"}
    with pytest.raises(ValueError, match="no negative generators"):
        tiny_config(method="dcd-gan", negatives="both")


def test_step_logs_every_term_and_the_sum_is_the_weighted_terms():
    m = _method()
    losses = m.training_step(*_batch(), m.make_optimisers(), torch.Generator().manual_seed(1))
    assert set(losses) == LOGGED
    c = m.config
    expected = (c.lambda_gan * losses["gan"] + c.lambda_nce * losses["nce"] + c.lambda_cycle * losses["cycle"]
                + c.lambda_identity * losses["identity"])
    assert losses["generators"] == pytest.approx(expected, rel=1e-5)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()) and losses["cycle"] > 0


@pytest.mark.parametrize("weight", ["lambda_gan", "lambda_nce", "lambda_cycle", "lambda_identity"])
def test_each_generator_term_really_moves_both_generators(weight):
    """Changing a term's weight changes the update of G and F: the term is in the optimised sum.

    For ``lambda_cycle`` this is the public release's bug: its cycle loss never reached the objective.
    """
    base = _after_one_step()
    changed = _after_one_step(**{weight: getattr(base.config, weight) * 3 + 1})
    for network in ("restorer", "degrader"):
        w0, w1 = getattr(base, network).encoder[1].weight, getattr(changed, network).encoder[1].weight
        assert not torch.allclose(w0, w1), network
    # the critics are updated first, from the same forward: their update ignores the generator weights
    assert torch.equal(base.critic_clean.model[0].weight, changed.critic_clean.model[0].weight)


def test_contrast_is_cross_encoder_with_one_head_per_generator():
    """degraded→clean: keys = G's head on G's encoding of x; queries = F's head on F's encoding of G(x)."""
    m = _method()
    degraded, clean = _batch()
    with torch.no_grad():
        out = m.translate(degraded, clean)
        contrast = m.dual_contrast(out, torch.Generator().manual_seed(5))[0]
        keys, positions = sample_patches(m.restorer.encode(degraded, m.config.nce_layers),
                                         m.config.num_patches, torch.Generator().manual_seed(5))
        queries = gather_patches(m.degrader.encode(out.fake_clean, m.config.nce_layers), positions)
        for i, (q, k) in enumerate(zip(queries, keys, strict=False)):
            torch.testing.assert_close(contrast.queries[i], m.heads_degrader(i, q))
            torch.testing.assert_close(contrast.keys[i], m.heads_restorer(i, k))
            # the same-encoder (CUT) query would be a different vector (layer 0 is the padded image itself)
            own = gather_patches(m.restorer.encode(out.fake_clean, m.config.nce_layers), positions)[i]
            assert m.config.nce_layers[i] == 0 or not torch.allclose(contrast.queries[i], m.heads_degrader(i, own))

    # the degraded→clean NCE trains the *other* generator's encoder and head, never the key head
    m.zero_grad(set_to_none=True)
    out = m.translate(degraded, clean)
    m.nce_loss(m.dual_contrast(out, torch.Generator().manual_seed(5))[:1]).backward()
    assert m.degrader.encoder[1].weight.grad.abs().sum() > 0
    assert m.restorer.encoder[1].weight.grad.abs().sum() > 0  # through G(x)
    assert all(p.grad.abs().sum() > 0 for p in m.heads_degrader.parameters())
    assert all(p.grad is None for p in m.heads_restorer.parameters())


@pytest.mark.parametrize("gan_mode", ["lsgan", "hinge"])
def test_both_gan_modes_train_and_the_ema_is_shipped(gan_mode):
    m = _method(gan_mode=gan_mode)
    opts, rng = m.make_optimisers(), torch.Generator().manual_seed(1)
    for _ in range(2):
        losses = m.training_step(*_batch(), opts, rng)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert int(m.steps_done) == 2 and m.shipped_restorer() is m.ema_restorer
    assert not torch.equal(m.ema_restorer.encoder[1].weight, m.restorer.encoder[1].weight)
    assert _method(generator_ema=0).shipped_restorer() is not None


# ---------------------------------------------------------------------------------------------- engine
def _trainer(folders, run, **changes):
    return Trainer(tiny_config(method="dcd-gan", **changes), *folders, run)


def test_checkpoint_records_the_method_and_round_trips_bitwise(rainy_folders, tmp_path):
    t = _trainer(rainy_folders, tmp_path / "run", steps=2, checkpoint_every=100)
    t.run()
    assert read_meta(latest_checkpoint(tmp_path / "run"))["method"] == "dcd-gan"
    resumed = Trainer(None, *rainy_folders, tmp_path / "run", resume=True)
    assert isinstance(resumed.method, DCDGAN) and resumed.step == 2
    for (name, a), b in zip(t.method.state_dict().items(), resumed.method.state_dict().values(), strict=False):
        assert torch.equal(a, b), name
    for source in (tmp_path / "run", latest_checkpoint(tmp_path / "run")):  # restorer file, checkpoint folder
        restorer = load_restorer(source)
        for a, b in zip(restorer.state_dict().values(), t.method.ema_restorer.state_dict().values(), strict=False):
            assert torch.equal(a, b)


def test_resume_equals_an_uninterrupted_run(rainy_folders, tmp_path):
    straight = _trainer(rainy_folders, tmp_path / "a", steps=4, checkpoint_every=100)
    straight.run()
    first = _trainer(rainy_folders, tmp_path / "b", steps=4, checkpoint_every=100)
    for event in first.events():
        if event.step == 2 and event.kind == "step":
            first.request_stop()
    second = Trainer(None, *rainy_folders, tmp_path / "b", resume=True)
    assert second.step == 2 and second.run().step == 4
    for (name, a), b in zip(straight.method.state_dict().items(), second.method.state_dict().values(), strict=False):
        assert torch.equal(a, b), name


def test_a_checkpoint_of_one_method_cannot_initialise_the_other(rainy_folders, tmp_path):
    _trainer(rainy_folders, tmp_path / "run", steps=1, checkpoint_every=100).run()
    with pytest.raises(CheckpointError, match="dcd-gan checkpoint cannot initialise a cdd-gan run"):
        Trainer(tiny_config(), *rainy_folders, tmp_path / "other", init_from=latest_checkpoint(tmp_path / "run"))
    # the restorer alone is just a generator: it may start either method
    tuned = Trainer(tiny_config(), *rainy_folders, tmp_path / "tuned", init_from=tmp_path / "run/restorer.safetensors")
    assert tuned.step == 0


def test_equals_cdd_gan_without_generated_negatives_step_for_step():
    """DCD-GAN is CDD-GAN minus the negative generators: from the same weights, on the same batches and with
    the same step randomness, CDD-GAN with ``negatives="internal"`` takes exactly the same steps. So any
    difference between short runs of the two comes from their initial weights and data, not from the step."""
    dcd = _method(gan_mode="lsgan")
    cdd = build_method(dcd.config.replace(method="cdd-gan"))
    shared = {k: v for k, v in cdd.state_dict().items() if k in dcd.state_dict()}
    assert set(dcd.state_dict()) <= set(shared)  # every DCD-GAN tensor exists in CDD-GAN
    cdd.load_state_dict({**cdd.state_dict(), **dcd.state_dict()})
    opt_dcd, opt_cdd = dcd.make_optimisers(), cdd.make_optimisers()
    for step in range(3):
        batch = _batch(seed=step)
        a = dcd.training_step(*batch, opt_dcd, torch.Generator().manual_seed(step))
        b = cdd.training_step(*batch, opt_cdd, torch.Generator().manual_seed(step))
        assert {k: b[k] for k in a} == pytest.approx(a, rel=1e-5, abs=1e-6)
    for name, tensor in dcd.state_dict().items():
        assert torch.allclose(tensor, cdd.state_dict()[name], atol=1e-5), name
