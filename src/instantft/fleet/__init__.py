"""Fleets of devices fine-tuning together through Flower, sending only their adapters.

- :mod:`~instantft.fleet.aggregate`: merging low-rank adapters (fedavg, svd, b-only) and screening
  bad updates (no Flower needed);
- :mod:`~instantft.fleet.config`: the fleet's settings and the data each device holds;
- :mod:`~instantft.fleet.client`: the ``ClientApp`` (an instantft fit on the device's data, the
  Forward Cache kept in the node's Context);
- :mod:`~instantft.fleet.server`: the ``ServerApp`` and :class:`~instantft.fleet.server.AdapterStrategy`;
- :mod:`~instantft.fleet.simulate` and :mod:`~instantft.fleet.deploy`: the two ways to run one.

Flower is an extra: ``pip install 'instantft[fleet]'``. Nothing outside this package imports it.
"""

from __future__ import annotations

from instantft.errors import InstantFTError

INSTALL_HINT = "the fleet commands need Flower: pip install 'instantft[fleet]'"


def require_flower() -> None:
    """Raise a one-line :class:`InstantFTError` when Flower (with its simulation engine) is missing."""
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise InstantFTError(INSTALL_HINT) from None
