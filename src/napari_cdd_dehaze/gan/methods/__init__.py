"""Training methods: each is one short file that builds its networks and defines its step.

* ``cdd-gan`` (:class:`CDDGAN`): dehazing, dual contrast with generated hard negatives;
* ``dcd-gan`` (:class:`DCDGAN`): deraining, dual contrast with in-image negatives.

Both share the CycleGAN frame in :mod:`.common` and keep the names the engine relies on
(``restorer``, ``ema_restorer``, ``shipped_restorer()``, ``make_optimisers()``, ``training_step()``,
``steps_done``), so training, resume and :func:`~napari_cdd_dehaze.gan.checkpoint.load_restorer` serve both.
"""
from .cdd_gan import CDDGAN
from .dcd_gan import DCDGAN

METHODS = {CDDGAN.name: CDDGAN, DCDGAN.name: DCDGAN}


def build_method(config):
    """The method named by ``config.method``, with freshly initialised networks."""
    try:
        return METHODS[config.method](config)
    except KeyError:
        raise ValueError(f"unknown method {config.method!r}; choose one of {sorted(METHODS)}") from None
