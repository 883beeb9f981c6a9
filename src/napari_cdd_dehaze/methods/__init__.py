"""Training methods: each is one short file that builds its networks and defines its step."""
from .cdd_gan import CDDGAN

METHODS = {CDDGAN.name: CDDGAN}


def build_method(config):
    """The method named by ``config.method``, with freshly initialised networks."""
    try:
        return METHODS[config.method](config)
    except KeyError:
        raise ValueError(f"unknown method {config.method!r}; choose one of {sorted(METHODS)}") from None
