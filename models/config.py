"""Typed configuration for the model core.

One dataclass per concept (attention, feed-forward, connection, optimiser schedule), nested into
`ModelConfig` and `TrainConfig`. Configs are built from plain dicts (YAML/JSON) with `from_dict`,
which rejects unknown keys with a message that names the key and the valid ones, and can be
patched with `apply_overrides(cfg, ["connection.n=2", ...])` for command-line `--set` options.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

ARCHS = ("baseline", "gain", "hc", "mhc")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the offending key."""


@dataclass
class AttentionConfig:
    """Multi-head Latent Attention (DeepSeek-V2/V3) without query compression."""

    n_heads: int = 16
    qk_nope_dim: int = 128  # per-head query/key width without rotary embedding
    qk_rope_dim: int = 64  # per-head rotary width (the rotary key is shared across heads)
    v_dim: int = 128  # per-head value width
    kv_rank: int = 512  # width of the compressed KV latent (what the KV cache stores)
    rope_theta: float = 10000.0


@dataclass
class MoEConfig:
    """DeepSeekMoE: shared experts plus top-k routed experts, auxiliary-loss-free balancing."""

    n_routed: int = 64
    n_active: int = 6  # routed experts per token
    n_shared: int = 2  # always-active experts
    expert_dim: int = 896  # SwiGLU hidden width of one expert ("FFN dimension" in Table 5)
    route_scale: float = 1.0  # multiplier on the normalised routing weights
    # Loss-free balancing (Wang et al. 2024): bias_i += rate * sign(mean_load - load_i) after a step.
    bias_update_rate: float = 1e-3


@dataclass
class FFNConfig:
    """Feed-forward layout: `n_dense_layers` leading dense SwiGLUs, then MoE (or dense everywhere)."""

    kind: Literal["moe", "dense"] = "moe"
    dense_dim: int = 7168  # hidden width of a dense SwiGLU (paper: 8 x expert width)
    n_dense_layers: int = 1  # leading dense layers when kind == "moe"
    moe: MoEConfig = field(default_factory=MoEConfig)


@dataclass
class ConnectionConfig:
    """How sub-layers are connected: plain residual, learnable gains, Hyper-Connections or mHC.

    Defaults follow the mHC paper (n = 4, alpha init 0.01, t_max = 20). Everything the paper leaves
    open (phi/b initialisation, epsilons, stream collapse) is an explicit field documented here.
    """

    # baseline: x + F(x). gain: a_l x + b_l F(x) with learnable scalars a_l, b_l (a control: how much of a
    # hyper-connection's gain a single stream with learnable residual and branch gains recovers).
    arch: Literal["baseline", "gain", "hc", "mhc"] = "baseline"
    n: int = 4  # expansion rate (number of residual streams); forced to 1 for "baseline" and "gain"
    alpha_init: float = 0.01  # gating factors (mHC alpha_pre/post/res; HC dynamic scales)
    # Stream collapse before the final norm. "sum" is the HC paper's choice (Algorithm 1); the final
    # RMSNorm removes the x n scale. "mean" is Megatron's default.
    collapse: Literal["sum", "mean"] = "sum"

    # ---- mHC (paper Eq. 7-9) ----
    sinkhorn_iters: int = 20
    # Static bias b (the paper does not give it; see README "Initialisation"):
    # - "zero": b = 0 (Megatron / HF DeepSeek-V4): H_pre ~ 1/2, H_post ~ 1, H_res ~ J/n. The streams start as
    #   copies and J/n re-averages them every sub-layer, so H_res gets almost no gradient.
    # - "identity": H_res ~ I and H_pre ~ one-hot of stream (l mod n) (logits +-identity_logit), H_post = 1, as
    #   HC's Eq. 14. Streams that differ stay different, but nothing makes them differ in the forward pass.
    # - "spread": "identity" plus H_post = 2 sigmoid(+-1) = 1.46 on stream (l mod n) and 0.54 on the others, so
    #   every sub-layer writes a different amount into each stream and the streams differ from the first
    #   sub-layer on (the forward symmetry is broken).
    bias_init: Literal["zero", "identity", "spread"] = "spread"
    identity_logit: float = 4.0  # the +- logit of "identity" / "spread": Sinkhorn(exp(4 I)) has diagonal 0.95
    # phi init: "normal" draws N(0, phi_init_std); "unit" draws N(0, 1 / (alpha_init sqrt(nC))), so that the
    # input-dependent logits alpha * RMSNorm(x) phi start with unit standard deviation instead of ~0.003.
    phi_init: Literal["normal", "unit"] = "unit"
    phi_init_std: float = 0.02
    # Epsilons the paper does not show (DeepSeek-V4 code uses 1e-6 for both); 0 = paper.
    pre_eps: float = 0.0  # added to sigma(.) of H_pre
    sinkhorn_eps: float = 0.0  # added to every Sinkhorn denominator

    # ---- kernels and memory ----
    # "auto": fused Triton kernels on CUDA, fused C++ kernels on a float32 CPU state (when a C++ compiler is there),
    # the PyTorch reference elsewhere; "reference"; "triton"; "cpu" (models/kernels/__init__.py).
    kernels: Literal["auto", "reference", "triton", "cpu"] = "auto"
    # Block recomputation (paper section 4.3.2, Table 3): keep only the first stream state of every block of
    # `recompute_layers` sub-layers and recompute the connection intermediates in backward.
    # 0 = off; -1 = the paper's optimum L_r* = round(sqrt(n L / (n + 2))) with L the number of sub-layers.
    recompute_layers: int = 0

    # ---- HC (HC paper Eq. 8-14, Algorithm 2) ----
    hc_dynamic: bool = True  # False = static HC (SHC)
    hc_tanh: bool = True  # False = "DHC w/o tanh"
    # ---- HC and mHC: the mHC paper's Table 1 switches ----
    # A disabled mapping is replaced by its fixed form (H_pre -> 1/n, H_post -> 1, H_res -> I) and has no
    # parameters. mHC with learn_res = false is "identity HC": the learned pre/post maps without stream mixing.
    learn_res: bool = True
    learn_pre: bool = True
    learn_post: bool = True

    def streams(self) -> int:
        return self.n if self.arch in ("hc", "mhc") else 1


@dataclass
class ModelConfig:
    vocab_size: int = 129280
    dim: int = 1280
    n_layers: int = 12
    max_seq_len: int = 4096
    norm_eps: float = 1e-20  # Table 5 "Layer norm eps" (sic); RMSNorm is computed in float32
    init_std: float = 0.006  # DeepSeek-V3's init std for linear layers and embeddings
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    ffn: FFNConfig = field(default_factory=FFNConfig)
    connection: ConnectionConfig = field(default_factory=ConnectionConfig)


@dataclass
class TrainConfig:
    """Optimiser and schedule (Table 5): AdamW, linear warm-up, step decay."""

    batch_size: int = 320  # sequences per optimiser step
    seq_len: int = 4096
    steps: int = 30000
    lr: float = 8.6e-4
    warmup_steps: int = 2000
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-20  # Table 5 "AdamW eps" (sic)
    weight_decay: float = 0.1
    decay_at: tuple[float, ...] = (0.8, 0.9)  # fractions of training where the LR steps down
    # LR as a fraction of `lr` from each decay point on (DeepSeek-LLM: 31.6% after 80%, 10% after 90%)
    decay_rates: tuple[float, ...] = (0.316, 0.1)

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
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], _path: str = "") -> T:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{_path}.{key}" if _path else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{path}'{hint}; valid keys: {', '.join(names)}")
        kwargs[key] = _convert(value, hints[key], path)
    return cls(**kwargs)


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
    """Return a copy of `cfg` with `dotted.key=value` overrides applied (values parsed as JSON/YAML scalars)."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = {"true": True, "false": False}.get(raw.lower(), raw)
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown config key '{'.'.join(parts[: i + 1])}' in override '{item}'")
            node = node[part]
        # An unknown last key is left for from_dict, which names it and suggests the closest one.
        node[parts[-1]] = value
    return from_dict(type(cfg), data)


def validate_model_config(cfg: ModelConfig) -> None:
    """Semantic checks that types alone cannot express."""
    conn, att, ffn = cfg.connection, cfg.attention, cfg.ffn
    if conn.arch not in ARCHS:
        raise ConfigError(f"connection.arch: {conn.arch!r} is not one of {list(ARCHS)}")
    if conn.n < 1:
        raise ConfigError(f"connection.n must be >= 1, got {conn.n}")
    default = ConnectionConfig()
    only = {
        ("hc",): ("hc_dynamic", "hc_tanh"),
        ("hc", "mhc"): ("learn_res", "learn_pre", "learn_post"),
        ("mhc",): ("sinkhorn_iters", "bias_init", "identity_logit", "phi_init", "phi_init_std", "pre_eps",
                   "sinkhorn_eps"),
    }  # fmt: skip
    for archs, names in only.items():
        for name in names:
            if conn.arch not in archs and getattr(conn, name) != getattr(default, name):
                which = " or ".join(f"'{a}'" for a in archs)
                raise ConfigError(f"connection.{name} applies to arch {which} only (arch is '{conn.arch}')")
    if conn.arch == "mhc" and conn.phi_init == "unit" and conn.alpha_init <= 0:
        raise ConfigError(
            f"connection.phi_init='unit' scales phi by 1/alpha_init, which must be > 0 (got {conn.alpha_init})"
        )
    if conn.arch == "mhc" and conn.kernels == "triton" and not (conn.learn_res and conn.learn_pre and conn.learn_post):
        raise ConfigError("connection.kernels='triton' needs every mHC mapping learned (learn_res/pre/post = true)")
    if conn.kernels not in ("auto", "reference", "triton", "cpu"):
        raise ConfigError(f"connection.kernels: {conn.kernels!r} is not one of ['auto', 'reference', 'triton', 'cpu']")
    if conn.recompute_layers < -1:
        raise ConfigError(f"connection.recompute_layers must be -1 (auto), 0 (off) or > 0, got {conn.recompute_layers}")
    if conn.sinkhorn_iters < 1:
        raise ConfigError(f"connection.sinkhorn_iters must be >= 1, got {conn.sinkhorn_iters}")
    if att.qk_rope_dim % 2:
        raise ConfigError(f"attention.qk_rope_dim must be even, got {att.qk_rope_dim}")
    if ffn.n_dense_layers > cfg.n_layers:
        raise ConfigError(f"ffn.n_dense_layers ({ffn.n_dense_layers}) exceeds n_layers ({cfg.n_layers})")
    if ffn.kind == "moe":
        moe = ffn.moe
        if not 1 <= moe.n_active <= moe.n_routed:
            raise ConfigError(f"ffn.moe.n_active must be in [1, n_routed={moe.n_routed}], got {moe.n_active}")
    positive = {
        "vocab_size": cfg.vocab_size,
        "dim": cfg.dim,
        "n_layers": cfg.n_layers,
        "max_seq_len": cfg.max_seq_len,
        "attention.n_heads": att.n_heads,
        "attention.qk_nope_dim": att.qk_nope_dim,
        "attention.qk_rope_dim": att.qk_rope_dim,
        "attention.v_dim": att.v_dim,
        "attention.kv_rank": att.kv_rank,
        "ffn.dense_dim": ffn.dense_dim,
        "ffn.moe.expert_dim": ffn.moe.expert_dim,
        "ffn.moe.n_routed": ffn.moe.n_routed,
    }
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
