"""Residual-connection variants behind one interface (see `base.Connection`)."""

from __future__ import annotations

from ..config import ConnectionConfig
from ..kernels.sinkhorn import sinkhorn
from .base import Connection, ConnectionEnds, StreamConfig, StreamConnection
from .gain import ResidualGain
from .hc import HCConfig, HyperConnection
from .mhc import ManifoldHyperConnection, MHCConfig
from .mhc_lite import ManifoldHyperConnectionLite, MHCLiteConfig
from .mudd import MUDDConfig, MultiwayDynamicDense
from .residual import Residual
from .rmt import ResidualMatrix, RMTConfig

# The one list of arch names: arch -> (connection class, its config class). A new variant registers itself here;
# every other list of names (config validation, the CLI's choices, the workflow's schema) is derived from it.
VARIANTS: dict[str, tuple[type[Connection], type[ConnectionConfig]]] = {
    "baseline": (Residual, ConnectionConfig),
    "gain": (ResidualGain, ConnectionConfig),
    "hc": (HyperConnection, HCConfig),
    "mhc": (ManifoldHyperConnection, MHCConfig),
    "mhc-lite": (ManifoldHyperConnectionLite, MHCLiteConfig),
    "rmt": (ResidualMatrix, RMTConfig),
    "mudd": (MultiwayDynamicDense, MUDDConfig),
}
CONNECTIONS: dict[str, type[Connection]] = {arch: cls for arch, (cls, _) in VARIANTS.items()}
ConnectionConfig.variants.update({arch: config for arch, (_, config) in VARIANTS.items()})


def connection_class(cfg: ConnectionConfig) -> type[Connection]:
    try:
        return CONNECTIONS[cfg.arch]
    except KeyError:
        raise ValueError(f"unknown connection arch {cfg.arch!r}; known: {sorted(CONNECTIONS)}") from None


def build_connection(cfg: ConnectionConfig, dim: int, index: int, norm_eps: float) -> Connection:
    return connection_class(cfg)(cfg, dim, index, norm_eps=norm_eps)


__all__ = [
    "CONNECTIONS",
    "VARIANTS",
    "Connection",
    "ConnectionEnds",
    "HCConfig",
    "HyperConnection",
    "MHCConfig",
    "MHCLiteConfig",
    "MUDDConfig",
    "StreamConfig",
    "ManifoldHyperConnection",
    "ManifoldHyperConnectionLite",
    "MultiwayDynamicDense",
    "RMTConfig",
    "Residual",
    "ResidualMatrix",
    "ResidualGain",
    "StreamConnection",
    "build_connection",
    "connection_class",
    "sinkhorn",
]
