"""Typed configuration for the model core, and the one parser every configuration goes through.

One dataclass per concept (attention, feed-forward, connection, optimiser schedule), nested into `ModelConfig` and
`TrainConfig`. Each residual-connection variant has its own config class beside its code (`HCConfig` in
models/connections/hc.py, `MHCConfig` in models/connections/mhc.py); `ConnectionConfig` holds what they share, and
`connection.arch` picks the class, so a field of another variant is an unknown key, whatever its value.

Configs are built from plain dicts with `from_dict`, which rejects unknown keys (naming the key and the valid ones),
wrong types and out-of-range values (sizes, rates and intervals declare their bounds with `at_least`/`above`).
YAML files and `key=value` overrides are read by `load_yaml`/`parse_value`, which read numbers the way people write
them: `3e-3` and `1e-20` are numbers (plain YAML 1.1 reads them as strings).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from common.dotted import set_dotted


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the offending key."""


# --------------------------------------------------------------------------------------------------------------------
# Reading values: YAML with YAML 1.2 numbers


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2's float syntax: `3e-3` is the number 0.003, not the string '3e-3'."""


_FLOAT = re.compile(r"^[-+]?(?:\d[\d_]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """A YAML document, with numbers read as YAML 1.2 reads them (see `_Loader`)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def parse_value(raw: str) -> Any:
    """The value of a `key=value` override: a YAML scalar or flow collection (`3e-3`, `true`, `[0.9, 0.95]`)."""
    try:
        return load_yaml(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides_to_dict(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`data` with `dotted.key=value` overrides applied (a copy; unknown keys are left for `from_dict` to name)."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form key=value")
        try:
            set_dotted(out, key.strip(), parse_value(raw))
        except ValueError as err:
            raise ConfigError(str(err)) from None
    return out


# --------------------------------------------------------------------------------------------------------------------
# Bounds


def at_least(default: Any, low: float) -> Any:
    """A dataclass field whose value must be >= `low` (checked by `from_dict`, naming the key)."""
    return field(default=default, metadata={"at_least": low})


def above(default: Any, low: float) -> Any:
    """A dataclass field whose value must be > `low` (checked by `from_dict`, naming the key)."""
    return field(default=default, metadata={"above": low})


def check_bounds(cfg: Any, path: str = "") -> None:
    """Raise a ConfigError naming the first field of `cfg` (recursively) outside its declared bounds."""
    for f in dataclasses.fields(cfg):
        value, where = getattr(cfg, f.name), f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(value):
            check_bounds(value, where)
            continue
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if "at_least" in f.metadata and not v >= f.metadata["at_least"]:
                raise ConfigError(f"{where} must be >= {f.metadata['at_least']:g}, got {value}")
            if "above" in f.metadata and not v > f.metadata["above"]:
                raise ConfigError(f"{where} must be > {f.metadata['above']:g}, got {value}")


@dataclass
class AttentionConfig:
    """Multi-head Latent Attention (DeepSeek-V2/V3) without query compression."""

    n_heads: int = at_least(16, 1)
    qk_nope_dim: int = at_least(128, 1)  # per-head query/key width without rotary embedding
    qk_rope_dim: int = at_least(64, 2)  # per-head rotary width (the rotary key is shared across heads)
    v_dim: int = at_least(128, 1)  # per-head value width
    kv_rank: int = at_least(512, 1)  # width of the compressed KV latent (what the KV cache stores)
    rope_theta: float = above(10000.0, 0)


@dataclass
class MoEConfig:
    """DeepSeekMoE: shared experts plus top-k routed experts, auxiliary-loss-free balancing."""

    n_routed: int = at_least(64, 1)
    n_active: int = at_least(6, 1)  # routed experts per token
    n_shared: int = at_least(2, 0)  # always-active experts
    expert_dim: int = at_least(896, 1)  # SwiGLU hidden width of one expert ("FFN dimension" in Table 5)
    route_scale: float = above(1.0, 0)  # multiplier on the normalised routing weights
    # Loss-free balancing (Wang et al. 2024): bias_i += rate * sign(mean_load - load_i) after a step.
    bias_update_rate: float = at_least(1e-3, 0)


@dataclass
class FFNConfig:
    """Feed-forward layout: `n_dense_layers` leading dense SwiGLUs, then MoE (or dense everywhere)."""

    kind: Literal["moe", "dense"] = "moe"
    dense_dim: int = at_least(7168, 1)  # hidden width of a dense SwiGLU (paper: 8 x expert width)
    n_dense_layers: int = at_least(1, 0)  # leading dense layers when kind == "moe"
    moe: MoEConfig = field(default_factory=MoEConfig)


@dataclass
class ConnectionConfig:
    """How sub-layers are connected: the fields every variant has. `arch` picks the variant and its config class.

    The variants and their config classes are registered in models/connections/__init__.py (the one list of arch
    names); a variant's own fields live in its class (`StreamConfig`, `HCConfig`, `MHCConfig`).
    baseline: x + F(x). gain: a_l x + b_l F(x) with learnable scalars a_l, b_l (a control: how much of a
    hyper-connection's gain a single stream with learnable residual and branch gains recovers).
    """

    # arch name -> config class, filled by models/connections/__init__.py when the variants are imported
    variants: ClassVar[dict[str, type[ConnectionConfig]]] = {}

    arch: str = "baseline"
    n: int = at_least(4, 1)  # expansion rate (number of residual streams); 1 for the single-stream variants
    alpha_init: float = 0.01  # gating factors (mHC alpha_pre/post/res; HC dynamic scales)
    # Stream collapse before the final norm. "sum" is the HC paper's choice (Algorithm 1); the final
    # RMSNorm removes the x n scale. "mean" is Megatron's default.
    collapse: Literal["sum", "mean"] = "sum"
    # "auto": fused Triton kernels on CUDA, fused C++ kernels on a float32 CPU state (when a C++ compiler is there),
    # the eager PyTorch ops elsewhere; or one of them by name (models/kernels/__init__.py).
    kernels: Literal["auto", "reference", "triton", "cpu"] = "auto"
    # Block recomputation (paper section 4.3.2, Table 3): keep only the first stream state of every block of
    # `recompute_layers` sub-layers and recompute the connection intermediates in backward.
    # 0 = off; -1 = the paper's optimum L_r* = round(sqrt(n L / (n + 2))) with L the number of sub-layers.
    recompute_layers: int = at_least(0, -1)

    def streams(self) -> int:
        return 1

    def validate_width(self, dim: int) -> None:
        """Checks of this variant against the model width `dim` (a ConfigError naming the key)."""

    def validate(self) -> None:
        """Checks across fields of this variant (a ConfigError naming the key); the bounds are checked already."""
        if self.arch not in self.variants or not isinstance(self, self.variants[self.arch]):
            raise ConfigError(f"connection.arch {self.arch!r} does not match its config class {type(self).__name__}")

    @classmethod
    def for_arch(cls, arch: Any, where: str = "connection.arch") -> type[ConnectionConfig]:
        """The config class of variant `arch` (a ConfigError naming `where` and the known ones otherwise)."""
        if not isinstance(arch, str) or arch not in cls.variants:
            raise ConfigError(f"{where}: {arch!r} is not one of {sorted(cls.variants)}")
        return cls.variants[arch]


def model_config_from_record(data: dict[str, Any]) -> ModelConfig:
    """A ModelConfig from a recorded one (a checkpoint's or a model's sidecar). Records written before each variant
    had its own config class hold every variant's fields; those of other variants never acted on the model, so
    they are dropped here instead of being refused as unknown keys."""
    connection = dict(data.get("connection") or {})
    known = {f.name for f in dataclasses.fields(ConnectionConfig.for_arch(connection.get("arch", "baseline")))}
    others = {f.name for c in ConnectionConfig.variants.values() for f in dataclasses.fields(c)}
    connection = {k: v for k, v in connection.items() if k in known or k not in others}
    return from_dict(ModelConfig, {**data, "connection": connection}, _path="model_config")


def connection_config(arch: str = "baseline", **fields: Any) -> ConnectionConfig:
    """The config of variant `arch` with the given fields (a TypeError names a field the variant does not have)."""
    return ConnectionConfig.for_arch(arch)(arch=arch, **fields)


def archs() -> tuple[str, ...]:
    """Every registered connection variant's name (models/connections/__init__.py)."""
    return tuple(ConnectionConfig.variants)


@dataclass
class ModelConfig:
    vocab_size: int = at_least(129280, 1)
    dim: int = at_least(1280, 1)
    n_layers: int = at_least(12, 1)
    max_seq_len: int = at_least(4096, 1)
    norm_eps: float = at_least(1e-20, 0)  # Table 5 "Layer norm eps" (sic); RMSNorm is computed in float32
    init_std: float = above(0.006, 0)  # DeepSeek-V3's init std for linear layers and embeddings
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    ffn: FFNConfig = field(default_factory=FFNConfig)
    connection: ConnectionConfig = field(default_factory=ConnectionConfig)


@dataclass
class TrainConfig:
    """Optimiser and schedule (Table 5): AdamW, linear warm-up, step decay."""

    batch_size: int = at_least(320, 1)  # sequences per optimiser step
    seq_len: int = at_least(4096, 1)
    steps: int = at_least(30000, 1)
    lr: float = above(8.6e-4, 0)
    warmup_steps: int = at_least(2000, 0)
    betas: tuple[float, float] = at_least((0.9, 0.95), 0)
    eps: float = above(1e-20, 0)  # Table 5 "AdamW eps" (sic)
    weight_decay: float = at_least(0.1, 0)
    decay_at: tuple[float, ...] = at_least((0.8, 0.9), 0)  # fractions of training where the LR steps down
    # LR as a fraction of `lr` from each decay point on (DeepSeek-LLM: 31.6% after 80%, 10% after 90%)
    decay_rates: tuple[float, ...] = at_least((0.316, 0.1), 0)

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len * self.steps


T = TypeVar("T")


def _convert(value: Any, hint: Any, path: str) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):  # Optional[X] / X | None
        args = [a for a in get_args(hint) if a is not type(None)]
        if value is None and len(args) < len(get_args(hint)):
            return None
        return _convert(value, args[0], path) if len(args) == 1 else value
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return from_dict(hint, value, _path=path)
    if origin is Literal:
        if value not in get_args(hint):
            raise ConfigError(f"{path}: {value!r} is not one of {list(get_args(hint))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        args = get_args(hint)
        inner = args[0]
        if len(args) == 2 and args[1] is not Ellipsis and len(value) != 2:
            raise ConfigError(f"{path}: expected 2 values, got {len(value)}")
        return tuple(_convert(v, inner, f"{path}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str) and _FLOAT.match(value.strip()):  # `3e-3` from a YAML 1.1 reader (e.g. Snakemake's)
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], _path: str = "") -> T:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys, wrong types and values out of bounds.
    A `ConnectionConfig` is built as the config class of its `arch`, so another variant's fields are unknown keys."""
    if cls is ConnectionConfig:
        cls = ConnectionConfig.for_arch(data.get("arch", ConnectionConfig.arch), f"{_path}.arch" if _path else "arch")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{_path}.{key}" if _path else key
        if key not in names and isinstance(cls, type) and issubclass(cls, ConnectionConfig):
            owners = [a for a, c in ConnectionConfig.variants.items() if key in {f.name for f in dataclasses.fields(c)}]
            if owners:
                which = " or ".join(f"'{a}'" for a in owners)
                raise ConfigError(f"{path} applies to arch {which} only (arch is '{data.get('arch', cls.arch)}')")
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{path}'{hint}; valid keys: {', '.join(names)}")
        kwargs[key] = _convert(value, hints[key], path)
    cfg = cls(**kwargs)
    check_bounds(cfg, _path)
    return cfg


def merge_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in recursively (nested mappings merge; any other value replaces)."""
    out = dict(base)
    for key, value in overrides.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge_overrides(out[key], value) if nested else value
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-JSON form of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def apply_overrides(cfg: T, overrides: list[str]) -> T:
    """Return a copy of `cfg` with `dotted.key=value` overrides applied (values read by `parse_value`)."""
    return from_dict(type(cfg), apply_overrides_to_dict(to_dict(cfg), overrides))


def validate_model_config(cfg: ModelConfig) -> None:
    """Semantic checks that types alone cannot express (and the bounds, for configs built in code)."""
    check_bounds(cfg, "model")
    att, ffn = cfg.attention, cfg.ffn
    cfg.connection.validate()
    cfg.connection.validate_width(cfg.dim)
    if att.qk_rope_dim % 2:
        raise ConfigError(f"model.attention.qk_rope_dim must be even, got {att.qk_rope_dim}")
    if ffn.n_dense_layers > cfg.n_layers:
        raise ConfigError(f"model.ffn.n_dense_layers ({ffn.n_dense_layers}) exceeds n_layers ({cfg.n_layers})")
    if ffn.kind == "moe" and not ffn.moe.n_active <= ffn.moe.n_routed:
        raise ConfigError(f"model.ffn.moe.n_active must be <= n_routed ({ffn.moe.n_routed}), got {ffn.moe.n_active}")


def validate_train_config(cfg: TrainConfig) -> None:
    """The optimiser and schedule checks that bounds alone cannot express."""
    check_bounds(cfg, "train")
    if not all(b < 1 for b in cfg.betas):
        raise ConfigError(f"train.betas must be < 1, got {list(cfg.betas)}")
    if len(cfg.decay_at) != len(cfg.decay_rates):
        raise ConfigError(
            f"train.decay_at ({len(cfg.decay_at)} values) and train.decay_rates ({len(cfg.decay_rates)}) must pair up"
        )
    if not all(0 <= at <= 1 for at in cfg.decay_at):
        raise ConfigError(f"train.decay_at must be fractions of training in [0, 1], got {list(cfg.decay_at)}")
