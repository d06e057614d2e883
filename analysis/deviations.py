"""Every deviation of a tier's runs from the mHC paper's setup, generated from the runs' effective configs.

`deviations(index)` reads what the runs were configured with (the index's `scale_configs`, `variants`,
`run_options`, `runs` and `eval`), builds each run's effective model and train config exactly as the trainer does
(the scale's config with the variant's `connection` and `train` overrides merged in), and compares it with the
paper's reference values (`paper_reference()`). Nothing is typed per tier: a config change changes the list.

Each item names the paper's value, ours, and the scales/variants it applies to; variants that share a value are
grouped. An item appears only when some run actually differs, except for choices the paper leaves open (the mHC
initialisation, stream collapse), which are stated whenever an mHC run exists.

The reference values come from the registry's paper scales (`models.registry`, Table 5 exactly) and from
`analysis.paper` (Tables 4 and 5), so a number is typed once. What the paper does not state but its code base does
(DeepSeek-V3's routing, DeepSeek-V4's epsilons, the HC paper's norm and init) is labelled as such.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from models.config import ConnectionConfig, ModelConfig, TrainConfig, from_dict, merge_overrides, to_dict

from . import paper

PAPER_SCALES: dict[str, str] = {"paper-3b": "3B", "paper-9b": "9B", "paper-27b": "27B", "paper-3b-1t": "3B-1T"}
"""Registry scale -> Table 5 column (the registry's paper scales hold Table 5 exactly)."""

LM_EVAL_DEFAULT_SHOTS: dict[str, int] = {
    "bbh_cot_fewshot": 3,
    "drop": 0,
    "gsm8k_cot": 8,
    "hellaswag": 0,
    "minerva_math": 4,
    "mmlu": 0,
    "piqa": 0,
    "triviaqa": 0,
}
"""Shots lm-eval 0.4.13 uses for a task named on its own (its YAML's num_fewshot, 0 when unset). Only the paper
suite (eval/tasks/mhc_paper_suite.yaml) sets the paper's shots; a task list runs at these."""

# DeepSeek-V3 (the paper's stated base model) routing; the mHC paper does not give these for its own models.
DSV3_ROUTE_SCALE = 2.5
DSV3_ROUTE_GROUPS = (8, 4)  # experts split into 8 groups; a token's experts come from its top 4 groups
DSV4_EPS = 1e-6  # DeepSeek-V4's hc_eps (added to sigma(pre) and every Sinkhorn denominator)


@dataclass(frozen=True)
class Deviation:
    """One deviation: a stable `key` (what is compared), the markdown `text` (without the leading "- ") and, for a
    compared value, `groups`: (our value as shown, the runs it applies to) in the text's order."""

    key: str
    text: str
    groups: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class EffectiveRun:
    """A (scale, variant) pair's effective configs; seeds share them."""

    scale: str
    variant: str
    arch: str
    model: ModelConfig
    train: TrainConfig


# --------------------------------------------------------------------------------------------------------------------
# Formatting


def _num(value: Any) -> str:
    """Compact number: 0.1, 4096, 3e-3, 8.6e-4, 1e-20 (no zero-padded exponents)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    if value == 0 or 1e-2 <= abs(value) < 1e6:
        return f"{value:.4g}"
    return _sci(value)


def _sci(value: float) -> str:
    """Scientific notation for rates: 3e-3, 3e-2, 8.6e-4 (integers stay plain)."""
    if float(value).is_integer() or value == 0:
        return _num(value)
    exponent = math.floor(math.log10(abs(value)))
    mantissa = value / 10**exponent
    if round(abs(mantissa), 3) >= 10:
        exponent, mantissa = exponent + 1, mantissa / 10
    return f"{mantissa:.3g}e{exponent}"


def _si(value: float) -> str:
    """Counts in the paper's style: 612M, 1.66B, 1.05T, 0.58M, 41k."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M")):
        if abs(value) >= div:
            return f"{value / div:.3g}{suffix}"
    if abs(value) >= 1e5:
        return f"{value / 1e6:.2g}M"
    return f"{value / 1e3:.3g}k" if abs(value) >= 1e4 else str(round(value))


def _ratio(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _seq(values: Iterable[Any]) -> str:
    return "(" + ", ".join(_num(v) for v in values) + ")"


def _names(items: Iterable[str]) -> str:
    return ", ".join(items)


def _per_paper_scale(
    get: Callable[[dict[str, Any]], Any], show: Callable[[Any], str] = _num, columns: bool = True
) -> str:
    """A Table 5 row as "320/512/1280/2560 (3B/9B/27B/3B-1T)" (without the column names when `columns` is false), or
    one value when the columns agree."""
    ref = _reference()["scales"]
    values = [get(ref[col]) for col in ref]
    if len(set(map(_key, values))) == 1:
        return show(values[0])
    text = "/".join(show(v) for v in values)
    return f"{text} ({'/'.join(ref)})" if columns else text


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# --------------------------------------------------------------------------------------------------------------------
# Paper reference


@functools.cache
def _reference() -> dict[str, Any]:
    from models.registry import get_scale

    scales: dict[str, dict[str, Any]] = {}
    for name, column in PAPER_SCALES.items():
        scale = get_scale(name)
        model, train = scale.model, scale.train
        numeric = paper.TABLE5_NUMERIC[column]
        scales[column] = {
            "registry": name,
            "layers": model.n_layers,
            "dim": model.dim,
            "heads": model.attention.n_heads,
            "routed": model.ffn.moe.n_routed,
            "active": model.ffn.moe.n_active,
            "shared": model.ffn.moe.n_shared,
            "expert_dim": model.ffn.moe.expert_dim,
            "dense_layers": model.ffn.n_dense_layers,
            "batch_size": train.batch_size,
            "steps": train.steps,
            "lr": train.lr,
            "warmup_steps": train.warmup_steps,
            "tokens": numeric["tokens"],
            "total_params": numeric["total_params"],
            "active_params": numeric["active_params"],
            "tokens_per_active_param": numeric["tokens"] / numeric["active_params"],
        }
    base = get_scale("paper-27b")  # the columns agree on everything below (Table 5's merged cells)
    model, train, att = base.model, base.train, base.model.attention
    column = paper.TABLE5_COLUMNS[2]
    return {
        "source": "mHC paper (arXiv 2512.24880 v2) Table 5 via models.registry's paper scales; Table 4 via "
        "analysis.paper; items the paper leaves open are marked",
        "scales": scales,
        "model": {
            "vocab_size": model.vocab_size,
            "seq_len": train.seq_len,
            "norm": "RMSNorm",
            "norm_eps": model.norm_eps,
            "ffn": "DeepSeekMoE after 1 leading dense layer (loss-free balancing)",
            "attention": {
                "variant": "MLA",
                "qk_nope_dim": att.qk_nope_dim,
                "qk_rope_dim": att.qk_rope_dim,
                "v_dim": att.v_dim,
                "kv_rank": att.kv_rank,
                "rope_theta": att.rope_theta,
            },
            "rope_layout": "interleaved pairs (DeepSeek-V3/V4 code; the paper says only RoPE)",
            # Table 5's vocab params are 2 x vocab x dim (331M = 2 x 129280 x 1280): embedding and head are separate.
            "head": "untied (Table 5 vocab params = 2 x vocab x dim)",
        },
        "tokenizer": f"{model.vocab_size}-token vocabulary, DeepSeek-V3's tokenizer by its size (not named); "
        "in-house corpus, not disclosed",
        "moe": {
            "active": model.ffn.moe.n_active,
            "shared": model.ffn.moe.n_shared,
            "dense_layers": model.ffn.n_dense_layers,
            "balancing": "loss-free (Wang et al. 2024)",
            "route_scale_dsv3": DSV3_ROUTE_SCALE,
            "route_groups_dsv3": DSV3_ROUTE_GROUPS,
        },
        "train": {
            "optimizer": "AdamW",
            "betas": list(train.betas),
            "eps": train.eps,
            "weight_decay": train.weight_decay,
            "decay_at": list(train.decay_at),
            "decay_rates": list(train.decay_rates),
            "warmup_steps": train.warmup_steps,
            "grad_clip": None,  # not stated
            "precision": "mixed (the mHC kernels read bf16 activations, phi in tf32, coefficients in float32, "
            "Eq. 10-13; the rest is not stated)",
        },
        "connection": {
            "n": int(paper.TABLE5["mHC/HC expansion rate n"][column]),
            "alpha_init": float(paper.TABLE5["mHC/HC gating factor init α"][column]),
            "sinkhorn_iters": int(paper.TABLE5["mHC Sinkhorn-Knopp t_max"][column]),
            "pre_eps": 0.0,
            "sinkhorn_eps": 0.0,
            "eps_dsv4": DSV4_EPS,
            "mhc_init": None,  # phi and b are not given (only alpha)
            "collapse": None,  # the mHC paper does not describe stream expansion/collapse
            "collapse_hc": "sum",  # HC paper Algorithm 1
            "collapse_dsv4": "learned sigmoid-weighted head",
            "hc_norm": "LayerNorm (HC paper Algorithm 2; the mHC paper's Eq. 5 restates it as RMSNorm)",
            "hc_output_init": "std of output projections rescaled by sqrt(n) (HC paper)",
            "hc_dynamic": True,
            "hc_tanh": True,
        },
        "eval": {
            "benchmarks": list(paper.TABLE4_BENCHMARKS),
            "shots": dict(paper.TABLE4_SHOTS),
            "metrics": dict(paper.TABLE4_METRICS),
            "limit": None,
        },
    }


def paper_reference() -> dict[str, Any]:
    """The paper's values every deviation is compared against (a copy: callers may modify it)."""
    return copy.deepcopy(_reference())


# --------------------------------------------------------------------------------------------------------------------
# Effective configs and grouping


def effective_runs(index: dict[str, Any]) -> list[EffectiveRun]:
    """One EffectiveRun per (scale, variant) of `index["runs"]`, in index order."""
    configs = index.get("scale_configs") or {}
    variants = index.get("variants") or {}
    pairs: list[tuple[str, str]] = []
    archs: dict[str, str] = {}
    for run in (index.get("runs") or {}).values():
        pair = (run["scale"], run["variant"])
        archs.setdefault(run["variant"], run.get("arch", "baseline"))
        if pair not in pairs and run["scale"] in configs:  # (an index without configs has nothing to compare)
            pairs.append(pair)
    # smallest scale first (the plan lists scales by name)
    size = {name: c["model"]["n_layers"] * c["model"]["dim"] ** 2 for name, c in configs.items()}
    scale_rank = {name: i for i, name in enumerate(sorted(configs, key=lambda n: (size[n], n)))}
    variant_rank = {name: i for i, name in enumerate(variants)}
    pairs.sort(key=lambda p: (scale_rank.get(p[0], len(scale_rank)), variant_rank.get(p[1], len(variant_rank))))
    out = []
    for scale, name in pairs:
        variant = variants.get(name) or {"arch": archs[name]}
        base = configs[scale]
        connection = {**variant.get("connection", {}), "arch": variant["arch"]}
        model = merge_overrides(base["model"], {"connection": connection})
        train = merge_overrides(base["train"], variant.get("train", {}))
        out.append(
            EffectiveRun(
                scale=scale,
                variant=name,
                arch=variant["arch"],
                model=from_dict(ModelConfig, model, _path=f"{scale}/{name}.model"),
                train=from_dict(TrainConfig, train, _path=f"{scale}/{name}.train"),
            )
        )
    return out


def _who(subset: Sequence[EffectiveRun], population: Sequence[EffectiveRun], word: str) -> tuple[str, str]:
    """(kind, text) naming `subset` within `population`: all / variants / scales / variants at scales / mixed."""
    pairs = {(r.scale, r.variant) for r in subset}
    everyone = {(r.scale, r.variant) for r in population}
    variants = list(dict.fromkeys(r.variant for r in population if (r.scale, r.variant) in pairs))
    scales = list(dict.fromkeys(r.scale for r in population if (r.scale, r.variant) in pairs))
    if pairs == everyone:
        return "all", f"all {word}"
    if pairs == {p for p in everyone if p[1] in variants}:
        return "variants", _names(variants)
    if pairs == {p for p in everyone if p[0] in scales}:
        return "scales", _names(scales)
    if pairs == {p for p in everyone if p[0] in scales and p[1] in variants}:
        return "mixed", f"{_names(variants)} at {_names(scales)}"
    per_scale = [
        f"{s} ({_names(r.variant for r in population if (r.scale, r.variant) in pairs and r.scale == s)})"
        for s in scales
    ]
    return "mixed", _names(per_scale)


_MISSING = object()


def _compare(
    key: str,
    label: str,
    paper_text: str,
    population: Sequence[EffectiveRun],
    value: Callable[[EffectiveRun], Hashable],
    expected: Callable[[EffectiveRun], Any] | None,
    show: Callable[[Any], str] = _num,
    word: str = "runs",
    note: str = "",
) -> Deviation | None:
    """A deviation when some run's value differs from the paper's (`expected`; None: the paper gives none, so every
    run's value is stated). Runs sharing a value are grouped and named."""
    if not population:
        return None
    deviating = [r for r in population if expected is None or _key(value(r)) != _key(expected(r))]
    if not deviating:
        return None
    groups: dict[str, list[EffectiveRun]] = {}
    shown: dict[str, Any] = {}
    for run in deviating:
        k = _key(value(run))
        groups.setdefault(k, []).append(run)
        shown.setdefault(k, value(run))
    items = list(groups.items())
    last = None
    if len(deviating) == len(population) and len(items) > 1:
        # The largest group becomes "all other runs" when naming it would take a long list of variants.
        biggest = max(items, key=lambda kv: len(kv[1]))
        kind, who = _who(biggest[1], population, word)
        if kind == "mixed" or (kind == "variants" and who.count(",") >= 2):
            last = biggest
            items.remove(biggest)
    groups_shown = [(show(shown[k]), _who(runs, population, word)[1]) for k, runs in items]
    if last is not None:
        groups_shown.append((show(shown[last[0]]), f"all other {word}"))
    parts = [f"{value} for {who}" for value, who in groups_shown]
    text = f"{label}: paper {paper_text}; ours " + "; ".join(parts)
    if len(deviating) < len(population):
        rest = {_key(expected(r)) for r in population if r not in deviating} if expected else set()
        same = [r for r in population if r not in deviating]
        rest_text = show(expected(same[0])) if len(rest) == 1 and expected else "as the paper"
        text += f" (all other {word} {rest_text})"
    if note:
        text += f" ({note})"
    return Deviation(key, text, tuple(groups_shown))


# --------------------------------------------------------------------------------------------------------------------
# Scale-level facts


def _counterpart(run: EffectiveRun) -> str | None:
    """The Table 5 column a run's scale stands for: the registry's paper scale of that name, else a paper scale of
    the same shape (and batch/steps when several match); None for the small ladders."""
    ref = _reference()["scales"]
    if run.scale in PAPER_SCALES:
        return PAPER_SCALES[run.scale]
    shape = (run.model.n_layers, run.model.dim, run.model.attention.n_heads)
    matches = [col for col, s in ref.items() if (s["layers"], s["dim"], s["heads"]) == shape]
    for col in matches:
        if (ref[col]["batch_size"], ref[col]["steps"]) == (run.train.batch_size, run.train.steps):
            return col
    return matches[0] if matches else None


@functools.cache
def _count_params(model_json: str) -> tuple[int, int]:
    """(total, active) parameters of the baseline model (meta device, nothing allocated)."""
    from models.summary import summarize

    data = json.loads(model_json)
    data["connection"] = to_dict(ConnectionConfig())
    counts = summarize(from_dict(ModelConfig, data, _path="model"))
    return counts["total_params"], counts["active_params"]


def _params(index: dict[str, Any], run: EffectiveRun) -> tuple[float, float]:
    """(total, active) parameters of a run's scale: the index's scale facts when present, else counted."""
    facts = (index.get("scales") or {}).get(run.scale)
    if isinstance(facts, dict) and "params_total" in facts and "params_active" in facts:
        return float(facts["params_total"]), float(facts["params_active"])
    col = _counterpart(run)
    if col is not None:
        from models.registry import get_scale

        registry = to_dict(get_scale(_reference()["scales"][col]["registry"]).model)
        mine = to_dict(run.model)
        del registry["connection"], mine["connection"]
        if registry == mine:  # Table 5's own counts (ours match them to within 0.5%)
            ref = _reference()["scales"][col]
            return ref["total_params"], ref["active_params"]
    model = to_dict(run.model)
    model.pop("connection")
    total, active = _count_params(json.dumps(model, sort_keys=True))
    return float(total), float(active)


# --------------------------------------------------------------------------------------------------------------------
# The checks


def _model_items(index: dict[str, Any], runs: list[EffectiveRun]) -> list[Deviation | None]:
    ref = _reference()
    out: list[Deviation | None] = []

    # Size and shape, per scale.
    by_scale: dict[str, EffectiveRun] = {}
    for run in runs:
        by_scale.setdefault(run.scale, run)
    odd = []
    for scale, run in by_scale.items():
        col = _counterpart(run)
        shape = (run.model.n_layers, run.model.dim, run.model.attention.n_heads)
        if col is None or shape != tuple(ref["scales"][col][k] for k in ("layers", "dim", "heads")):
            total, active = _params(index, run)
            odd.append(
                f"{scale}: {shape[0]} layers, width {shape[1]}, {shape[2]} heads, "
                f"{_si(total)} total / {_si(active)} active parameters"
            )
    if odd:
        paper_text = (
            f"{_per_paper_scale(lambda s: s['layers'], columns=False)} layers, "
            f"width {_per_paper_scale(lambda s: s['dim'], columns=False)}, "
            f"{_per_paper_scale(lambda s: s['heads'], columns=False)} heads, "
            f"{_per_paper_scale(lambda s: s['total_params'], _si, columns=False)} total / "
            f"{_per_paper_scale(lambda s: s['active_params'], _si, columns=False)} active parameters "
            f"({'/'.join(ref['scales'])})"
        )
        out.append(Deviation("model_size", f"Model size: paper {paper_text}; ours " + "; ".join(odd)))

    # FFN kind.
    moe_text = (
        f"DeepSeekMoE ({ref['moe']['dense_layers']} leading dense layer, then "
        f"{_per_paper_scale(lambda s: s['routed'], columns=False)} routed + {ref['moe']['shared']} shared experts, "
        f"{ref['moe']['active']} active)"
    )
    out.append(
        _compare(
            "ffn",
            "FFN",
            moe_text,
            runs,
            lambda r: (
                r.model.ffn.kind if r.model.ffn.kind == "moe" else f"dense SwiGLU of width {r.model.ffn.dense_dim}"
            ),
            lambda r: "moe",
            show=lambda v: "a DeepSeekMoE" if v == "moe" else f"a {v} in every block",
        )
    )

    # MoE details (only where MoE is used).
    moe_runs = [r for r in runs if r.model.ffn.kind == "moe"]

    def experts(r: EffectiveRun) -> tuple[int, ...]:
        m = r.model.ffn
        return (m.moe.n_routed, m.moe.n_active, m.moe.n_shared, m.moe.expert_dim, m.n_dense_layers)

    def paper_experts(r: EffectiveRun) -> Any:
        col = _counterpart(r)
        if col is None:
            return _MISSING
        s = ref["scales"][col]
        return (s["routed"], s["active"], s["shared"], s["expert_dim"], s["dense_layers"])

    out.append(
        _compare(
            "moe_experts",
            "MoE experts",
            f"{_per_paper_scale(lambda s: s['routed'], columns=False)} routed, {ref['moe']['active']} active, "
            f"{ref['moe']['shared']} shared, expert width {_per_paper_scale(lambda s: s['expert_dim'], columns=False)}"
            f", {ref['moe']['dense_layers']} leading dense layer ({'/'.join(ref['scales'])})",
            moe_runs,
            experts,
            paper_experts,
            show=lambda v: f"{v[0]} routed, {v[1]} active, {v[2]} shared, expert width {v[3]}, {v[4]} leading dense",
            word="MoE runs",
        )
    )
    groups = DSV3_ROUTE_GROUPS
    out.append(
        _compare(
            "moe_routing",
            "MoE routing",
            f"not stated; DeepSeek-V3 (the paper's base) scales the routing weights by {_num(DSV3_ROUTE_SCALE)} "
            f"and routes each token within its top {groups[1]} of {groups[0]} expert groups",
            moe_runs,
            lambda r: r.model.ffn.moe.route_scale,
            None,
            show=lambda v: f"route_scale {float(v)} without group-limited routing",
            word="MoE runs",
            note="sigmoid affinities and loss-free balancing kept",
        )
    )

    # Attention.
    att_ref = ref["model"]["attention"]

    def att(r: EffectiveRun) -> tuple[Any, ...]:
        a = r.model.attention
        return (a.qk_nope_dim, a.qk_rope_dim, a.v_dim, a.kv_rank, a.rope_theta)

    def show_att(v: Sequence[Any]) -> str:
        return f"q/k {v[0]} + {v[1]} RoPE dims, v {v[2]}, KV rank {v[3]}, RoPE theta {_num(v[4])}"

    out.append(
        _compare(
            "attention",
            "Attention (MLA, per head)",
            show_att([att_ref[k] for k in ("qk_nope_dim", "qk_rope_dim", "v_dim", "kv_rank", "rope_theta")]),
            runs,
            att,
            lambda r: tuple(att_ref[k] for k in ("qk_nope_dim", "qk_rope_dim", "v_dim", "kv_rank", "rope_theta")),
            show=show_att,
        )
    )
    out.append(
        _compare(
            "rope_layout",
            "RoPE layout",
            "RoPE (layout not stated; DeepSeek-V3/V4 code rotates interleaved pairs)",
            runs,
            lambda r: "rotate-half",
            None,
            show=lambda v: v,
            note="the same rotation up to a fixed permutation of the rotary q/k dims; it matters only when porting "
            "weights",
        )
    )

    # Tokenizer and vocabulary: we never use DeepSeek-V3's tokenizer, so this holds for every tier.
    out.append(
        _compare(
            "tokenizer",
            "Tokenizer",
            ref["tokenizer"],
            runs,
            lambda r: r.model.vocab_size,
            None,
            show=lambda v: f"a byte-level BPE of {v} tokens trained on our own training corpus",
        )
    )
    out.append(_compare_with_paper_setting("norm_eps", "RMSNorm eps", runs, lambda r: r.model.norm_eps))
    return out


def _compare_with_paper_setting(
    key: str,
    label: str,
    runs: list[EffectiveRun],
    value: Callable[[EffectiveRun], Hashable],
    section: str = "model",
    paper_key: str | None = None,
) -> Deviation | None:
    """A setting the paper states once for all its models (`paper_key`, default `key`, of the reference's `section`)
    against each run's value."""
    paper_value = _reference()[section][paper_key or key]
    return _compare(key, label, _num(paper_value), runs, value, lambda r: paper_value)


def _train_items(index: dict[str, Any], runs: list[EffectiveRun]) -> list[Deviation | None]:
    ref = _reference()
    tref = ref["train"]
    out: list[Deviation | None] = []

    def per_scale(name: str) -> Callable[[EffectiveRun], Any]:
        def get(r: EffectiveRun) -> Any:
            col = _counterpart(r)
            return ref["scales"][col][name] if col else _MISSING

        return get

    out.append(_compare_with_paper_setting("seq_len", "Sequence length", runs, lambda r: r.train.seq_len))
    out.append(
        _compare(
            "batch_size",
            "Batch size",
            f"{_per_paper_scale(lambda s: s['batch_size'])} sequences",
            runs,
            lambda r: r.train.batch_size,
            per_scale("batch_size"),
        )
    )
    out.append(
        _compare(
            "steps",
            "Training steps",
            _per_paper_scale(lambda s: s["steps"]),
            runs,
            lambda r: r.train.steps,
            per_scale("steps"),
        )
    )

    # Tokens per active parameter: the paper's compute-optimal series trains ~63-64 tokens per active parameter.
    def budget(r: EffectiveRun) -> tuple[float, float]:
        tokens = float(r.train.tokens)
        return tokens, tokens / _params(index, r)[1]

    def budget_ok(r: EffectiveRun) -> bool:
        col = _counterpart(r)
        if col is None:
            return False
        want = ref["scales"][col]["tokens_per_active_param"]
        return abs(budget(r)[1] / want - 1) <= 0.05

    out.append(
        _compare(
            "tokens",
            "Training tokens",
            f"{_per_paper_scale(lambda s: s['tokens'], _si, columns=False)}, i.e. "
            f"{_per_paper_scale(lambda s: s['tokens_per_active_param'], _ratio, columns=False)} tokens per active "
            f"parameter ({'/'.join(ref['scales'])})",
            runs,
            lambda r: f"{_si(budget(r)[0])} ({_ratio(budget(r)[1])} per active parameter)",
            lambda r: (
                f"{_si(budget(r)[0])} ({_ratio(budget(r)[1])} per active parameter)" if budget_ok(r) else _MISSING
            ),
            show=str,
        )
    )
    out.append(
        _compare(
            "lr",
            "Learning rate",
            f"{_per_paper_scale(lambda s: s['lr'], _sci)}, tuned per scale",
            runs,
            lambda r: r.train.lr,
            per_scale("lr"),
            show=_sci,
        )
    )
    out.append(
        _compare(
            "warmup",
            "Warm-up",
            f"{_num(tref['warmup_steps'])} steps of {_per_paper_scale(lambda s: s['steps'])}",
            runs,
            lambda r: (r.train.warmup_steps, r.train.steps),
            lambda r: (tref["warmup_steps"], r.train.steps),
            show=lambda v: f"{v[0]} of {v[1]} steps",
        )
    )
    out.append(_compare_with_paper_setting("adam_eps", "AdamW eps", runs, lambda r: r.train.eps, "train", "eps"))
    out.append(
        _compare(
            "adam_betas",
            "AdamW betas",
            _seq(tref["betas"]),
            runs,
            lambda r: list(r.train.betas),
            lambda r: tref["betas"],
            show=_seq,
        )
    )
    out.append(
        _compare_with_paper_setting("weight_decay", "Weight decay", runs, lambda r: r.train.weight_decay, "train")
    )

    def schedule(v: Sequence[Sequence[float]]) -> str:
        steps = ", ".join(f"x{_num(rate)} from {_num(100 * at)}%" for at, rate in zip(v[0], v[1], strict=True))
        return f"step decay {steps}" if steps else "constant after warm-up"

    out.append(
        _compare(
            "lr_schedule",
            "LR schedule",
            schedule([tref["decay_at"], tref["decay_rates"]]),
            runs,
            lambda r: [list(r.train.decay_at), list(r.train.decay_rates)],
            lambda r: [tref["decay_at"], tref["decay_rates"]],
            show=schedule,
        )
    )

    # Run options apply to every run of the tier.
    from training.config import RunOptions

    options = {**to_dict(RunOptions()), **(index.get("run_options") or {})}
    clip = float(options.get("grad_clip") or 0.0)
    if clip > 0:
        out.append(
            Deviation(
                "grad_clip",
                f"Gradient clipping: paper not stated; ours max global gradient norm {clip} for all runs",
            )
        )
    if options.get("precision") == "fp32":
        out.append(
            Deviation("precision", f"Precision: paper {tref['precision']}; ours float32 throughout for all runs")
        )
    return out


def _connection_items(runs: list[EffectiveRun]) -> list[Deviation | None]:
    cref = _reference()["connection"]
    mhc = [r for r in runs if r.arch == "mhc"]
    hc = [r for r in runs if r.arch == "hc"]
    streams = [r for r in runs if r.arch in ("hc", "mhc")]
    out: list[Deviation | None] = []

    def paper_constant(key: str, label: str, field: str, population: list[EffectiveRun], word: str) -> Deviation | None:
        """A connection setting the paper fixes to one value (`field` in the paper reference and the config)."""
        return _compare(
            key, label, _num(cref[field]), population, lambda r: getattr(r.model.connection, field),
            lambda r: cref[field], word=word,
        )  # fmt: skip

    def init(r: EffectiveRun) -> tuple[Any, ...]:
        c = r.model.connection
        return (
            c.bias_init,
            c.identity_logit if c.bias_init != "zero" else None,
            c.phi_init,
            c.phi_init_std if c.phi_init == "normal" else None,
        )

    def show_init(v: Sequence[Any]) -> str:
        bias = f"bias_init {v[0]}" + (f" (logit ±{_num(v[1])})" if v[0] != "zero" else "")
        phi = f"phi_init {v[2]}" + (f" (std {_num(v[3])})" if v[2] == "normal" else "")
        return f"{bias}, {phi}"

    legend = {
        "zero": "zero: b = 0, so H_pre ≈ 1/2, H_post ≈ 1, H_res ≈ J/n",
        "identity": "identity: H_res ≈ I, H_pre ≈ one-hot of stream l mod n, H_post = 1 (HC Eq. 14 style)",
        "spread": "spread: identity with H_post 1.46 on stream l mod n and 0.54 on the others",
        "unit": "unit: φ ~ N(0, 1/(α√(nC))), input-dependent logits of unit std",
        "normal": "normal: φ ~ N(0, std)",
    }
    used = {r.model.connection.bias_init for r in mhc} | {r.model.connection.phi_init for r in mhc}
    out.append(
        _compare(
            "mhc_init",
            "mHC initialisation",
            f"only α = {_num(cref['alpha_init'])} (φ and b not given; Megatron and HF DeepSeek-V4 use b = 0 and a "
            "random φ)",
            mhc,
            init,
            None,
            show=show_init,
            word="mHC runs",
            note="; ".join(text for name, text in legend.items() if name in used),
        )
    )
    out.append(paper_constant("sinkhorn_iters", "Sinkhorn-Knopp t_max", "sinkhorn_iters", mhc, "mHC runs"))
    out.append(
        _compare(
            "mhc_eps",
            "mHC epsilons (pre_eps, sinkhorn_eps)",
            f"none (DeepSeek-V4 code adds {_num(cref['eps_dsv4'])} to sigma(pre) and every Sinkhorn denominator)",
            mhc,
            lambda r: (r.model.connection.pre_eps, r.model.connection.sinkhorn_eps),
            lambda r: (cref["pre_eps"], cref["sinkhorn_eps"]),
            show=lambda v: f"pre_eps {_num(v[0])}, sinkhorn_eps {_num(v[1])}",
            word="mHC runs",
        )
    )
    out.append(paper_constant("alpha_init", "Gating factor init alpha", "alpha_init", streams, "HC/mHC runs"))
    out.append(paper_constant("expansion_rate", "Expansion rate n", "n", streams, "HC/mHC runs"))

    # Stream collapse: open in the mHC paper (every mHC run states ours); HC's Algorithm 1 sums.
    def collapse(r: EffectiveRun) -> str:
        return r.model.connection.collapse

    out.append(
        _compare(
            "collapse",
            "mHC stream expansion/collapse",
            f"not described (the HC paper replicates the embedding and sums the streams; DeepSeek-V4 uses a "
            f"{cref['collapse_dsv4']})",
            mhc,
            collapse,
            None,
            show=lambda v: f"replicate the embedding, {v} the streams before the final RMSNorm",
            word="mHC runs",
        )
    )
    out.append(
        _compare(
            "hc_collapse",
            "HC stream collapse",
            f"{cref['collapse_hc']} of the streams (HC paper Algorithm 1)",
            hc,
            collapse,
            lambda r: cref["collapse_hc"],
            show=str,
            word="HC runs",
        )
    )

    # Fixed mappings: Table 1 ablates HC only, with its four rows; anything else is a control of ours.
    def learned(r: EffectiveRun) -> tuple[str, bool, bool, bool]:
        c = r.model.connection
        return (r.arch, c.learn_res, c.learn_pre, c.learn_post)

    def in_paper(r: EffectiveRun) -> tuple[str, bool, bool, bool]:
        v = learned(r)
        full = (r.arch, True, True, True)
        if v == full or (r.arch == "hc" and paper.table1_gap(*v[1:]) is not None):
            return v
        return full

    def show_learned(v: Sequence[Any]) -> str:
        maps = zip(("H_res", "H_pre", "H_post"), ("I", "1/n", "1"), v[1:], strict=True)
        fixed = [f"{m} = {f}" for m, f, on in maps if not on]
        name = "mHC" if v[0] == "mhc" else "HC"
        return f"{name} with {', '.join(fixed)} fixed (a control not in the paper)"

    out.append(
        _compare(
            "fixed_mappings",
            "Fixed mappings",
            "mHC learns H_res, H_pre and H_post; Table 1 fixes mappings of HC only (rows: none, H_res, H_res + H_pre, "
            "all learned)",
            streams,
            learned,
            in_paper,
            show=show_learned,
            word="HC/mHC runs",
        )
    )

    # HC details.
    dynamic_hc = [r for r in hc if r.model.connection.hc_dynamic]
    out.append(
        _compare(
            "hc_norm",
            "HC per-stream norm",
            cref["hc_norm"],
            dynamic_hc,
            lambda r: "RMSNorm with a learned weight",
            None,
            show=str,
            word="dynamic HC runs",
        )
    )
    out.append(
        _compare(
            "hc_output_init",
            "HC output-projection init",
            cref["hc_output_init"],
            hc,
            lambda r: "not rescaled",
            None,
            show=str,
            word="HC runs",
        )
    )
    out.append(
        _compare(
            "hc_dynamic",
            "HC form",
            "dynamic HC with tanh (HC paper default; mHC Eq. 5)",
            hc,
            lambda r: (r.model.connection.hc_dynamic, r.model.connection.hc_tanh),
            lambda r: (cref["hc_dynamic"], cref["hc_tanh"]),
            show=lambda v: "static HC (SHC)" if not v[0] else "dynamic HC without tanh",
            word="HC runs",
        )
    )

    gain = [r for r in runs if r.arch == "gain"]
    if gain:
        variants = _names(dict.fromkeys(r.variant for r in gain))
        out.append(
            Deviation(
                "gain_control",
                "Control not in the paper: arch `gain` (a_l x + b_l F(x): a learnable residual gain a_l and branch "
                f"gain b_l per sub-layer, one stream) for {variants}",
            )
        )
    return out


def _eval_items(index: dict[str, Any]) -> list[Deviation | None]:
    from .results import benchmark_of_task

    spec = index.get("eval") or {}
    if not spec or not spec.get("variants"):
        return []
    ref = _reference()["eval"]
    scales = [r["scale"] for r in (index.get("runs") or {}).values() if "evaluation" in (r.get("roles") or [])]
    scale = scales[0] if scales else (index.get("main") or {}).get("scale")
    where = f"evaluated runs: {_names(spec['variants'])}" + (f" at {scale}" if scale else "")
    out: list[Deviation | None] = []

    tasks = spec.get("tasks", "paper")
    found: dict[str, str | None] = {}  # task -> Table 4 benchmark (None: not one of the paper's)
    if tasks != "paper" and tasks is not None:
        task_list = [tasks] if isinstance(tasks, str) else list(tasks)

        found = {t: benchmark_of_task(t) for t in task_list}
        covered = [b for b in ref["benchmarks"] if b in found.values()]
        dropped = [b for b in ref["benchmarks"] if b not in covered]
        extra = [t for t, b in found.items() if b is None]
        if dropped or extra:
            ours = _names(f"{t} ({b})" if b else t for t, b in found.items())
            text = f"Benchmarks: paper {len(ref['benchmarks'])} ({_names(ref['benchmarks'])}); ours {ours}"
            if dropped:
                text += f"; not run: {_names(dropped)}"
            if extra:
                text += f"; not in the paper: {_names(extra)}"
            out.append(Deviation("eval_tasks", f"{text} ({where})"))
        paper_shots, our_shots = [], []
        for task, bench in found.items():
            ours = LM_EVAL_DEFAULT_SHOTS.get(task)
            if bench is not None and ours != ref["shots"][bench]:
                paper_shots.append(f"{bench} {ref['shots'][bench]}-shot")
                our_shots.append(f"{task} {ours}-shot" if ours is not None else f"{task} at lm-eval's default")
        if paper_shots:
            out.append(
                Deviation(
                    "eval_shots",
                    f"Benchmark shots: paper {_names(paper_shots)}; ours {_names(our_shots)} (a task named on its own "
                    f"runs at lm-eval's default; only the paper suite sets the paper's shots; {where})",
                )
            )
    limit = spec.get("limit")
    if limit:
        size = f"the first {_num(limit)} examples per task" if limit >= 1 else f"a fraction {_num(limit)} of each task"
        text = f"Benchmark size: paper the full evaluation sets; ours at most {size} ({where})"
        out.append(Deviation("eval_limit", text))
    if spec.get("per_item"):
        run = set(ref["benchmarks"]) if tasks in ("paper", None) else {b for b in found.values() if b}
        metrics = _names(f"{b} {m}" for b, m in ref["metrics"].items() if b in run) or "per-benchmark metrics"
        out.append(
            Deviation(
                "eval_scoring",
                f"Benchmark scoring: paper {metrics}; ours the gold answer's log-likelihood compared item by item "
                f"between variants, paired by seed, for the multiple-choice tasks (accuracy is recorded too) ({where})",
            )
        )
    return out


def deviation_items(index: dict[str, Any]) -> list[Deviation]:
    """Every deviation of the index's runs from the paper's setup, as (key, text), without duplicates."""
    runs = effective_runs(index)
    items = [*_model_items(index, runs), *_train_items(index, runs), *_connection_items(runs), *_eval_items(index)]
    seen: dict[str, Deviation] = {}
    for item in items:
        if item is not None and item.text not in seen:
            seen[item.text] = item
    return list(seen.values())


def deviations(index: dict[str, Any]) -> list[str]:
    """Markdown bullet texts (without the leading "- "), one per deviation of the index's runs from the paper."""
    return [item.text for item in deviation_items(index)]
