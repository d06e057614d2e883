"""The experiment plan: which training runs the workflow's config asks for, and what each one is for.

The Snakefile and the analysis commands both read the plan from here, so "which runs exist" has one definition.
A run is identified by (scale, variant, seed) and lives in `results/{tier}/runs/{scale}/{variant}/seed{seed}` (each tier
has a folder of its own, so the smoke tier never overwrites the default tier's results); a run that
several experiments need (the main comparison's mHC run is also a compute-scaling point, say) is trained once and
carries every role.

Experiments:
- main: every variant of `main.variants` at `main.scale` for every seed (Fig. 2, 3, 5, 7, 8, Table 4), the mechanism
  controls among them (a variant of arch `gain`; mHC with `learn_res: false`);
- init_ablation (optional): mHC initialisations and optimiser epsilons at one scale, paired by seed;
- lr_sweep (optional): `variants` at `multipliers` x the scale's learning rate (the stability stress test); the
  derived variants are named `<variant>-lr<m>x` and the 1x runs are the plain variants;
- ablation: Table 1's rows (which of H_res, H_pre, H_post are learnable) at `ablation.scale`;
- compute_scaling: `variants` at every scale of the ladder (Fig. 6a);
- token_scaling: `variants` at one scale whose intermediate checkpoints are kept and evaluated (Fig. 6b);
- evaluation: the benchmark suite on the runs of `evaluation.variants` x `evaluation.seeds` at the main scale;
- mappings: the learned H_res matrices of `mappings.variants` at the main scale (Fig. 8);
- beyond_paper (optional): the rival designs the paper dismisses and variants since (RMT, MUDDFormer, mHC-lite)
  beside baseline / HC / mHC: a depth sweep (`depth_scales`, one scale per depth at fixed width and tokens), an LR
  stress test (`stress`: the same `<variant>-lr<m>x` runs as lr_sweep, at `stress.scale`) and the Jacobian gain of
  every run of the section, at initialisation and after training.
"""

from __future__ import annotations

import json
from typing import Any


def results_root(config: dict[str, Any]) -> str:
    return f"results/{config['tier']}"


def run_key(scale: str, variant: str, seed: int) -> str:
    return f"{scale}/{variant}/seed{seed}"


def learnable_maps(variant: dict[str, Any]) -> dict[str, bool]:
    """Table 1's row for a variant: which of H_res, H_pre, H_post are learned (baseline: none)."""
    if variant["arch"] == "baseline":
        return {"res": False, "pre": False, "post": False}
    conn = variant.get("connection", {})
    return {name: bool(conn.get(f"learn_{name}", True)) for name in ("res", "pre", "post")}


def lr_variant(variant: str, multiplier: float) -> str:
    """The LR sweep's name for `variant` trained at `multiplier` x its learning rate (1x is the variant itself)."""
    return variant if multiplier == 1 else f"{variant}-lr{multiplier:g}x"


def lr_sweeps(config: dict[str, Any]) -> list[tuple[str, str, list[str], list[float]]]:
    """(section, scale, variants, multipliers) of every section that derives `<variant>-lr<m>x` runs."""
    sweeps = []
    if config.get("lr_sweep"):
        sweep = config["lr_sweep"]
        sweeps.append(("lr_sweep", sweep["scale"], list(sweep["variants"]), list(sweep["multipliers"])))
    stress = (config.get("beyond_paper") or {}).get("stress")
    if stress:
        sweeps.append(("beyond_paper.stress", stress["scale"], list(config["beyond_paper"]["variants"]),
                       list(stress["multipliers"])))  # fmt: skip
    return sweeps


def all_variants(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The config's variants plus the LR sweeps' derived ones ({..., "train": {"lr": m * lr}, "lr_multiplier": m,
    "base_variant": name}); what every run's variant name refers to. Two sweeps may derive the same run (the same
    variant at the same multiplier of the same rate), not two different runs under one name."""
    variants = {name: dict(v) for name, v in config["variants"].items()}
    for section, scale, names, multipliers in lr_sweeps(config):
        for name in names:
            if name not in config["variants"]:
                raise ValueError(f"{section}.variants: {name!r} is not defined under config 'variants'")
            base = config["variants"][name]
            base_lr = {**effective_train(config, scale), **base.get("train", {})}["lr"]
            for multiplier in multipliers:
                derived = lr_variant(name, multiplier)
                if derived == name:
                    continue
                if derived in config["variants"]:
                    raise ValueError(
                        f"variant {derived!r} is defined in the config and derived by {section}: rename it"
                    )
                spec = {
                    **base,
                    "train": {**base.get("train", {}), "lr": float(multiplier) * float(base_lr)},
                    "lr_multiplier": multiplier,
                    "base_variant": name,
                }
                if derived in variants and variants[derived] != spec:
                    raise ValueError(
                        f"{section} derives {derived!r} with learning rate {spec['train']['lr']:g}, another LR sweep "
                        f"with {variants[derived]['train']['lr']:g}: give the sweeps one scale (or one learning rate)"
                    )
                variants[derived] = spec
    return variants


def build_plan(config: dict[str, Any]) -> dict[str, Any]:
    """{experiment sections..., "runs": {key: {scale, variant, arch, seed, dir, roles}}} from a validated config."""
    variants = all_variants(config)
    runs: dict[str, dict[str, Any]] = {}

    def add(scale: str, variant: str, seed: int, role: str) -> None:
        if variant not in variants:
            raise ValueError(f"variant {variant!r} is used by a run but not defined under config 'variants'")
        key = run_key(scale, variant, seed)
        run = runs.setdefault(
            key,
            {
                "scale": scale,
                "variant": variant,
                "arch": variants[variant]["arch"],
                "seed": int(seed),
                "dir": f"{results_root(config)}/runs/{key}",
                "roles": [],
            },
        )
        if role not in run["roles"]:
            run["roles"].append(role)

    def add_each(scale: str, variants: list[str], seeds: list[int], role: str) -> None:
        for variant in variants:
            for seed in seeds:
                add(scale, variant, seed, role)

    main = config["main"]
    add_each(main["scale"], main["variants"], main["seeds"], "main")
    init = config.get("init_ablation") or {}
    if init.get("variants"):
        add_each(init["scale"], init["variants"], init["seeds"], "init_ablation")
    sweep = config.get("lr_sweep") or {}
    for variant in sweep.get("variants", []):
        swept = [lr_variant(variant, multiplier) for multiplier in sweep["multipliers"]]
        add_each(sweep["scale"], swept, sweep["seeds"], "lr_sweep")
    ablation = config["ablation"]
    add_each(ablation["scale"], ablation["variants"], ablation["seeds"], "ablation")
    scaling = config["compute_scaling"]
    for scale in scaling["scales"]:
        add_each(scale, scaling["variants"], scaling["seeds"], "compute_scaling")
    tokens = config["token_scaling"]
    add_each(tokens["scale"], tokens["variants"], tokens["seeds"], "token_scaling")
    evaluation = config["evaluation"]
    add_each(main["scale"], evaluation["variants"], evaluation["seeds"], "evaluation")
    mappings = config["mappings"]
    add_each(main["scale"], mappings["variants"], [mappings["seed"]], "mappings")
    beyond = config.get("beyond_paper") or {}
    if beyond:
        for scale in beyond["depth_scales"]:
            add_each(scale, beyond["variants"], beyond["seeds"], "depth_sweep")
        stress = beyond.get("stress")
        if stress:
            for variant in beyond["variants"]:
                swept = [lr_variant(variant, multiplier) for multiplier in stress["multipliers"]]
                add_each(stress["scale"], swept, stress["seeds"], "stress")

    sections = [("main", main), ("ablation", ablation), ("token_scaling", tokens)]
    sections += [(name, config[name]) for name in ("init_ablation", "lr_sweep") if config.get(name)]
    if beyond.get("stress"):
        sections.append(("beyond_paper.stress", beyond["stress"]))
    for name, section in sections:
        if section.get("scale") not in config["scales"]:
            raise ValueError(f"{name}.scale {section.get('scale')!r} is not one of config 'scales'")
    for run in runs.values():
        if run["scale"] not in config["scales"]:
            raise ValueError(f"scale {run['scale']!r} is used by a run but not defined under config 'scales'")
    check_overrides(config, runs, variants)
    for variant in mappings["variants"]:
        if variants[variant]["arch"] == "baseline":
            raise ValueError(f"mappings.variants: {variant!r} is the residual baseline, which has no H_res to show")

    return {
        "tier": config["tier"],
        "main": {"scale": main["scale"], "variants": list(main["variants"]), "seeds": list(main["seeds"])},
        "init_ablation": {k: list(v) if isinstance(v, list) else v for k, v in init.items()} or None,
        "lr_sweep": {k: list(v) if isinstance(v, list) else v for k, v in sweep.items()} or None,
        "ablation": {
            "scale": ablation["scale"],
            "seeds": list(ablation["seeds"]),
            "rows": [{"variant": v, **learnable_maps(variants[v])} for v in ablation["variants"]],
        },
        "compute_scaling": {k: list(scaling[k]) for k in ("scales", "variants", "seeds")},
        "token_scaling": {
            "scale": tokens["scale"],
            "variants": list(tokens["variants"]),
            "seeds": list(tokens["seeds"]),
        },
        "eval": {
            "variants": list(evaluation["variants"]),
            "seeds": list(evaluation["seeds"]),
            "limit": evaluation.get("limit"),
            "tasks": evaluation["tasks"],
            "per_item": bool(evaluation.get("per_item", False)),
        },
        "mappings": {"scale": main["scale"], "variants": list(mappings["variants"]), "seed": mappings["seed"]},
        "measurements": dict(config["measurements"]),
        "beyond_paper": beyond_section(config, variants) if beyond else None,
        "variants": variants,
        "run_options": dict(config.get("run", {})),
        "power": dict(config["power"]) if config.get("power") else None,
        "scales": {
            name: {"model": effective_model(config, name), "train": effective_train(config, name)}
            for name in sorted({run["scale"] for run in runs.values()} | set(config["measurements"]["scales"]))
        },
        "runs": runs,
    }


def beyond_section(config: dict[str, Any], variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The plan of the beyond-the-paper section: the depth points in sub-layers, checked to differ only in depth."""
    beyond = config["beyond_paper"]
    points = []
    for scale in beyond["depth_scales"]:
        model, train = effective_model(config, scale), effective_train(config, scale)
        points.append({"scale": scale, "sublayers": 2 * int(model["n_layers"]), "dim": int(model["dim"]),
                       "tokens": int(train["batch_size"]) * int(train["seq_len"]) * int(train["steps"])})  # fmt: skip
    for key in ("dim", "tokens"):
        values = {p[key] for p in points}
        if len(values) > 1:
            raise ValueError(
                f"beyond_paper.depth_scales must differ only in depth; their {key} differs: "
                + ", ".join(f"{p['scale']}={p[key]}" for p in points)
            )
    if len({p["sublayers"] for p in points}) != len(points):
        raise ValueError("beyond_paper.depth_scales: two scales have the same depth")
    stress = beyond.get("stress")
    return {
        "variants": list(beyond["variants"]),
        "archs": {name: variants[name]["arch"] for name in beyond["variants"]},
        "seeds": list(beyond["seeds"]),
        "depths": sorted(points, key=lambda p: p["sublayers"]),
        "stress": {k: list(v) if isinstance(v, list) else v for k, v in stress.items()} if stress else None,
        "gain": dict(beyond.get("gain") or {}),
    }


def check_overrides(config: dict[str, Any], runs: dict[str, dict[str, Any]], variants: dict[str, Any]) -> None:
    """Build every run's config now, from exactly the overrides its training job will be given, through the training
    command's own parser and checks (training/config.py), so that a misspelled key or a bad value inside `scales`,
    `variants` or `run` stops the workflow at parse time (naming the key) instead of failing a job hours later."""
    from models.config import ConfigError, ModelConfig, TrainConfig, from_dict, validate_model_config
    from training.config import load_run_config

    for scale in sorted(set(config["measurements"]["scales"]) - {run["scale"] for run in runs.values()}):
        try:  # measured, not trained: the model and schedule only
            validate_model_config(from_dict(ModelConfig, effective_model(config, scale), _path="model"))
            from_dict(TrainConfig, effective_train(config, scale), _path=f"scales.{scale}.train")
        except ConfigError as err:
            raise ValueError(f"config scales.{scale}: {err}") from None
    for key, run in sorted(runs.items()):
        try:
            load_run_config(None, train_overrides(config, run, "results/data/planned"))
        except (ConfigError, ValueError) as err:
            raise ValueError(f"config of run {key} (variant {run['variant']}, scale {run['scale']}): {err}") from None


def effective_train(config: dict[str, Any], scale: str) -> dict[str, Any]:
    """The registry scale's optimiser/schedule settings with the config's overrides."""
    from models.config import to_dict
    from models.registry import get_scale

    return {**to_dict(get_scale(scale).train), **config["scales"][scale].get("train", {})}


def effective_model(config: dict[str, Any], scale: str) -> dict[str, Any]:
    """The registry scale's model config (as a dict) with the config's overrides merged in."""
    from models.config import merge_overrides, to_dict
    from models.registry import get_scale

    return merge_overrides(to_dict(get_scale(scale).model), config["scales"][scale].get("model", {}))


def train_overrides(config: dict[str, Any], run: dict[str, Any], shards_dir: str) -> list[str]:
    """The `--set key=value` list that defines one training run (its identity: changing it retrains the run).

    Values are JSON-encoded, which the trainer's parser (models/config.py `parse_value`) reads back as the same
    types."""
    from common.dotted import flatten

    scale = config["scales"][run["scale"]]
    variant = all_variants(config)[run["variant"]]
    steps_kept = int(scale.get("checkpoints", 2))
    items: list[tuple[str, Any]] = [("scale", run["scale"]), ("arch", variant["arch"]), ("seed", run["seed"])]
    items += flatten("model", scale.get("model", {}))
    items += flatten("model.connection", variant.get("connection", {}))
    items += flatten("train", {**scale.get("train", {}), **variant.get("train", {})})
    items += [("data.shards_dir", shards_dir)]
    if config.get("data_root"):
        items += [("data.root", config["data_root"])]
    items += flatten("run", config.get("run", {}))
    # keep `checkpoints` evenly spaced checkpoints (token scaling evaluates them)
    interval = scale.get("ckpt_interval") or max(1, effective_train(config, run["scale"])["steps"] // steps_kept)
    items += [("run.ckpt_interval", int(interval))]
    items += [("run.keep_checkpoints", steps_kept)]
    return [f"{key}={json.dumps(value)}" for key, value in items]
