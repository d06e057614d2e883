"""analysis/deviations.py: the report's deviations from the paper, generated from small indexes built in code."""

from __future__ import annotations

from typing import Any

import pytest

from analysis import paper
from analysis.deviations import (
    LM_EVAL_DEFAULT_SHOTS,
    deviation_items,
    deviations,
    paper_reference,
)
from models.config import to_dict
from models.registry import get_scale

OPTIMISER_KEYS = {"adam_eps", "adam_betas", "weight_decay", "lr_schedule", "lr", "warmup", "norm_eps", "precision"}


def make_index(
    scales: list[str],
    variants: dict[str, dict[str, Any]],
    run_options: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    scale_overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An index with one seed-0 run of every variant at every scale (the scales' registry configs)."""
    configs = {}
    for name in scales:
        scale = get_scale(name)
        model, train = to_dict(scale.model), to_dict(scale.train)
        overrides = (scale_overrides or {}).get(name, {})
        model.update(overrides.get("model", {}))
        train.update(overrides.get("train", {}))
        configs[name] = {"model": model, "train": train}
    runs = {
        f"{s}/{v}/seed0": {"scale": s, "variant": v, "arch": spec["arch"], "seed": 0, "roles": ["main", "evaluation"]}
        for s in scales
        for v, spec in variants.items()
    }
    return {
        "tier": "test",
        "main": {"scale": scales[-1]},
        "scale_configs": configs,
        "variants": variants,
        "run_options": run_options if run_options is not None else {"precision": "bf16", "grad_clip": 1.0},
        "runs": runs,
        "eval": evaluation
        if evaluation is not None
        else {"variants": list(variants), "seeds": [0], "limit": None, "tasks": "paper", "per_item": False},
    }


def by_key(index: dict[str, Any]) -> dict[str, str]:
    items = deviation_items(index)
    keys = [item.key for item in items]
    assert len(keys) == len(set(keys)), f"a key appears twice: {keys}"
    return {item.key: item.text for item in items}


def ours_groups(index: dict[str, Any], key: str) -> dict[str, str]:
    """{runs named: our value} of one compared deviation, e.g. {"mhc-eps8": "1e-8"}."""
    item = next(item for item in deviation_items(index) if item.key == key)
    groups = {who: value for value, who in item.groups}
    for value, who in item.groups:  # the text states every group as "<value> for <runs>"
        assert f"{value} for {who}" in item.text
    return groups


# --------------------------------------------------------------------------------------------------------------------


def test_paper_scale_mhc_at_table5_settings_has_no_optimiser_eps_or_norm_deviation():
    index = make_index(["paper-27b"], {"mhc": {"arch": "mhc"}})
    found = by_key(index)
    assert not OPTIMISER_KEYS & set(found), found
    # nor any size, shape or budget deviation: the registry's paper scale is Table 5 exactly
    shape_keys = {"model_size", "ffn", "moe_experts", "attention", "seq_len", "batch_size", "steps", "tokens"}
    assert not shape_keys & set(found), found
    assert not {"sinkhorn_iters", "mhc_eps", "alpha_init", "expansion_rate", "fixed_mappings"} & set(found)
    assert not any(text.startswith(("AdamW", "RMSNorm", "Weight decay", "LR schedule")) for text in found.values())
    # what the paper leaves open is still stated
    assert "bias_init spread (logit ±4), phi_init unit for all mHC runs" in found["mhc_init"]
    assert "collapse" in found and "moe_routing" in found and "rope_layout" in found and "tokenizer" in found
    assert not any(key.startswith("eval_") for key in found)


def test_adamw_eps_override_names_that_variant_only():
    base = make_index(["paper-27b"], {"mhc": {"arch": "mhc"}, "hc": {"arch": "hc"}})
    assert "adam_eps" not in by_key(base)
    variants = {"mhc": {"arch": "mhc"}, "hc": {"arch": "hc"}, "mhc-eps8": {"arch": "mhc", "train": {"eps": 1e-8}}}
    found = by_key(make_index(["paper-27b"], variants))
    assert found["adam_eps"] == "AdamW eps: paper 1e-20; ours 1e-8 for mhc-eps8 (all other runs 1e-20)"
    assert ours_groups(make_index(["paper-27b"], variants), "adam_eps") == {"mhc-eps8": "1e-8"}
    # only the eps changed: no other optimiser line appears
    assert not (OPTIMISER_KEYS - {"adam_eps"}) & set(found)


def test_eps_variants_sharing_a_value_are_grouped():
    variants = {
        "baseline": {"arch": "baseline"},
        "mhc": {"arch": "mhc"},
        "mhc-eps8": {"arch": "mhc", "train": {"eps": 1e-8}},
        "mhc-zero-eps8": {"arch": "mhc", "connection": {"bias_init": "zero"}, "train": {"eps": 1e-8}},
    }
    text = by_key(make_index(["cpu-dense-d8"], variants))["adam_eps"]
    assert text == "AdamW eps: paper 1e-20; ours 1e-8 for mhc-eps8, mhc-zero-eps8 (all other runs 1e-20)"


def test_dense_tier_lists_the_ffn_deviation_and_no_moe_details():
    found = by_key(make_index(["cpu-dense-d8"], {"baseline": {"arch": "baseline"}}))
    assert "ffn" in found
    assert "DeepSeekMoE" in found["ffn"] and "dense SwiGLU of width 192" in found["ffn"]
    assert "cpu-dense-d8" in found["ffn"] or "all runs" in found["ffn"]
    assert "moe_experts" not in found and "moe_routing" not in found
    assert "model_size" in found and "cpu-dense-d8: 8 layers, width 64" in found["model_size"]
    assert "paper-27b" not in by_key(make_index(["paper-27b"], {"baseline": {"arch": "baseline"}})).get("ffn", "")
    assert "ffn" not in by_key(make_index(["paper-27b"], {"baseline": {"arch": "baseline"}}))


def test_moe_ladder_lists_expert_counts_and_routing():
    found = by_key(make_index(["gpu-s"], {"baseline": {"arch": "baseline"}}))
    assert "ffn" not in found
    assert "16 routed, 4 active, 2 shared" in found["moe_experts"]
    assert "route_scale 1.0" in found["moe_routing"] and "2.5" in found["moe_routing"]


def test_mhc_init_variants_show_both_initialisations():
    variants = {
        "mhc-zero": {"arch": "mhc", "connection": {"bias_init": "zero", "phi_init": "normal"}},
        "mhc-spread": {"arch": "mhc", "connection": {"bias_init": "spread"}},
    }
    index = make_index(["cpu-dense-d8"], variants)
    text = by_key(index)["mhc_init"]
    groups = ours_groups(index, "mhc_init")
    assert groups["mhc-zero"] == "bias_init zero, phi_init normal (std 0.02)"
    assert groups["mhc-spread"] == "bias_init spread (logit ±4), phi_init unit"
    assert "α = 0.01" in text


def test_eval_task_subset_with_limit_lists_dropped_benchmarks():
    evaluation = {
        "variants": ["baseline"],
        "seeds": [0],
        "limit": 500,
        "tasks": ["piqa", "hellaswag"],
        "per_item": True,
    }
    found = by_key(make_index(["cpu-dense-d8"], {"baseline": {"arch": "baseline"}}, evaluation=evaluation))
    dropped = found["eval_tasks"].split("not run: ", 1)[1].split(" (", 1)[0]
    assert dropped.split(", ") == ["BBH", "DROP", "GSM8K", "MATH", "MMLU", "TriviaQA"]
    assert "500" in found["eval_limit"]
    assert "HellaSwag 10-shot" in found["eval_shots"] and "hellaswag 0-shot" in found["eval_shots"]
    assert "PIQA" not in found["eval_shots"]  # lm-eval's default for piqa is the paper's 0 shots
    assert "log-likelihood" in found["eval_scoring"]
    # the paper suite over the full sets: no evaluation deviation
    full = {"variants": ["baseline"], "seeds": [0], "limit": None, "tasks": "paper", "per_item": False}
    found = by_key(make_index(["cpu-dense-d8"], {"baseline": {"arch": "baseline"}}, evaluation=full))
    assert not any(key.startswith("eval_") for key in found)


def test_unknown_task_is_named_as_not_in_the_paper():
    evaluation = {"variants": ["baseline"], "seeds": [0], "limit": None, "tasks": ["piqa", "arc_easy"]}
    found = by_key(make_index(["cpu-dense-d8"], {"baseline": {"arch": "baseline"}}, evaluation=evaluation))
    assert "not in the paper: arc_easy" in found["eval_tasks"]


def test_config_changes_change_the_list():
    variants = {"mhc": {"arch": "mhc"}}
    assert "adam_betas" not in by_key(make_index(["paper-3b"], variants))
    changed = make_index(
        ["paper-3b"],
        variants,
        scale_overrides={"paper-3b": {"train": {"betas": [0.9, 0.99], "steps": 3000}, "model": {"norm_eps": 1e-6}}},
    )
    found = by_key(changed)
    assert found["adam_betas"] == "AdamW betas: paper (0.9, 0.95); ours (0.9, 0.99) for all runs"
    assert found["norm_eps"] == "RMSNorm eps: paper 1e-20; ours 1e-6 for all runs"
    assert "3000" in found["steps"] and "tokens" in found  # 10x fewer steps: far from ~64 tokens per parameter
    fp32 = by_key(make_index(["paper-3b"], variants, run_options={"precision": "fp32", "grad_clip": 0.0}))
    assert "float32" in fp32["precision"] and "grad_clip" not in fp32


def test_hc_details_and_controls():
    variants = {
        "hc": {"arch": "hc"},
        "hc-notanh": {"arch": "hc", "connection": {"hc_tanh": False}},
        "hc-res": {"arch": "hc", "connection": {"learn_pre": False, "learn_post": False}},  # Table 1 row
        "mhc-fixed-res": {"arch": "mhc", "connection": {"learn_res": False}},
        "gain": {"arch": "gain"},
    }
    index = make_index(["cpu-dense-d8"], variants)
    found = by_key(index)
    assert ours_groups(index, "hc_dynamic") == {"hc-notanh": "dynamic HC without tanh"}
    assert "sqrt(n)" in found["hc_output_init"] and "all HC runs" in found["hc_output_init"]
    assert "LayerNorm" in found["hc_norm"]
    assert list(ours_groups(index, "fixed_mappings")) == ["mhc-fixed-res"]  # hc-res is Table 1's own ablation
    assert found["gain_control"].endswith("for gain")


def test_learning_rate_sweep_groups_by_multiplier():
    variants: dict[str, dict[str, Any]] = {"baseline": {"arch": "baseline"}, "mhc": {"arch": "mhc"}}
    for name in ("baseline", "mhc"):
        variants[f"{name}-lr3x"] = {"arch": name, "train": {"lr": 9e-3}, "lr_multiplier": 3, "base_variant": name}
    # two plain variants are named; with a third they become "all other runs"
    expected = {"baseline, mhc": "3e-3", "baseline-lr3x, mhc-lr3x": "9e-3"}
    assert ours_groups(make_index(["cpu-dense-d8"], variants), "lr") == expected
    variants["hc"] = {"arch": "hc"}
    expected = {"baseline-lr3x, mhc-lr3x": "9e-3", "all other runs": "3e-3"}
    assert ours_groups(make_index(["cpu-dense-d8"], variants), "lr") == expected


def test_no_duplicates_across_a_full_tier():
    variants = {
        "baseline": {"arch": "baseline"},
        "hc": {"arch": "hc"},
        "mhc": {"arch": "mhc"},
        "gain": {"arch": "gain"},
        "mhc-fixed-res": {"arch": "mhc", "connection": {"learn_res": False}},
        "mhc-eps8": {"arch": "mhc", "train": {"eps": 1e-8}},
        "mhc-zero": {"arch": "mhc", "connection": {"bias_init": "zero", "phi_init": "normal"}},
        "hc-res-pre": {"arch": "hc", "connection": {"learn_post": False}},
    }
    evaluation = {"variants": ["baseline", "mhc"], "seeds": [0], "limit": 100, "tasks": ["piqa"], "per_item": True}
    index = make_index(
        ["cpu-dense-d4", "cpu-dense-d8", "gpu-s"], variants, run_options={"precision": "fp32"}, evaluation=evaluation
    )
    lines = deviations(index)
    assert len(lines) == len(set(lines))
    assert all(line and not line.startswith("- ") for line in lines)
    assert len(lines) == len(by_key(index))
    assert "grad_clip" in by_key(index)  # the trainer's default clipping applies when the tier sets none


def test_reference_is_table5_and_table4():
    ref = paper_reference()
    assert ref["train"]["eps"] == 1e-20 and ref["model"]["norm_eps"] == 1e-20
    assert ref["train"]["betas"] == [0.9, 0.95] and ref["train"]["weight_decay"] == 0.1
    assert ref["connection"]["n"] == 4 and ref["connection"]["alpha_init"] == 0.01
    assert ref["connection"]["sinkhorn_iters"] == 20
    assert ref["model"]["vocab_size"] == 129280 and ref["model"]["seq_len"] == 4096
    assert [s["lr"] for s in ref["scales"].values()] == [float(v) for v in paper.TABLE5["Base learning rate"].values()]
    assert [s["routed"] for s in ref["scales"].values()] == [int(v) for v in paper.TABLE5["Routed experts"].values()]
    assert ref["scales"]["27B"]["tokens_per_active_param"] == pytest.approx(63.3, abs=0.1)
    assert ref["eval"]["shots"] == paper.TABLE4_SHOTS
    ref["train"]["eps"] = 1.0  # a copy: the module's reference is unchanged
    assert paper_reference()["train"]["eps"] == 1e-20


def test_lm_eval_default_shots_cover_the_paper_suite():
    from eval.suite import PAPER_SHOTS

    assert set(LM_EVAL_DEFAULT_SHOTS) == set(PAPER_SHOTS)
