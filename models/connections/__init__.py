"""Residual-connection variants behind one interface (see `base.Connection`)."""

from __future__ import annotations

from ..config import ConnectionConfig
from ..kernels.sinkhorn import sinkhorn
from .base import Connection, StreamConnection
from .gain import ResidualGain
from .hc import HyperConnection
from .mhc import ManifoldHyperConnection
from .residual import Residual

# arch name -> connection class. A new variant registers itself here.
CONNECTIONS: dict[str, type[Connection]] = {
    "baseline": Residual,
    "gain": ResidualGain,
    "hc": HyperConnection,
    "mhc": ManifoldHyperConnection,
}


def connection_class(cfg: ConnectionConfig) -> type[Connection]:
    try:
        return CONNECTIONS[cfg.arch]
    except KeyError:
        raise ValueError(f"unknown connection arch {cfg.arch!r}; known: {sorted(CONNECTIONS)}") from None


def build_connection(cfg: ConnectionConfig, dim: int, index: int, norm_eps: float) -> Connection:
    return connection_class(cfg)(cfg, dim, index, norm_eps=norm_eps)


__all__ = [
    "CONNECTIONS",
    "Connection",
    "HyperConnection",
    "ManifoldHyperConnection",
    "Residual",
    "ResidualGain",
    "StreamConnection",
    "build_connection",
    "connection_class",
    "sinkhorn",
]
