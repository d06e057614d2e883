"""`python -m analysis.index --plan results/analysis/plan.json --out results/analysis/runs.json`.

Joins the experiment plan with what the runs left on disk (each run's `final.json`, `metrics.jsonl`,
`diagnostics.jsonl`, `eval.json`, `checkpoint_losses.json`, `mappings.json`, `jacobian_gain.json`) into the one
index every table, figure and the report read. Files only, never the MLflow database: the artifacts rebuild without
a tracking server. A run the plan asks for but that left nothing is listed with status "missing", never silently
dropped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

from common.files import atomic_write_text


def scale_facts(scale: str, model: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    """Shape, parameter counts (baseline model, meta device: nothing allocated), tokens and training FLOPs."""
    from models.config import ModelConfig, from_dict
    from models.summary import summarize

    cfg = from_dict(ModelConfig, model, _path="model")
    counts = summarize(cfg)
    ffn = cfg.ffn
    tokens = train["batch_size"] * train["seq_len"] * train["steps"]
    return {
        "layers": cfg.n_layers,
        "sublayers": 2 * cfg.n_layers,
        "dim": cfg.dim,
        "heads": cfg.attention.n_heads,
        "ffn": ffn.kind,
        "routed": ffn.moe.n_routed if ffn.kind == "moe" else 0,
        "active": ffn.moe.n_active if ffn.kind == "moe" else 0,
        "shared": ffn.moe.n_shared if ffn.kind == "moe" else 0,
        "expert_dim": ffn.moe.expert_dim if ffn.kind == "moe" else ffn.dense_dim,
        "vocab": cfg.vocab_size,
        "seq_len": train["seq_len"],
        "batch_size": train["batch_size"],
        "steps": train["steps"],
        "lr": train["lr"],
        "tokens": tokens,
        "params_total": counts["total_params"],
        "params_active": counts["active_params"],
        # 6 N D with N the active non-embedding parameters (the usual training-compute estimate)
        "flops": 6.0 * counts["active_params"] * tokens,
    }


def run_entry(key: str, run: dict[str, Any]) -> dict[str, Any]:
    folder = Path(run["dir"])

    def present(name: str) -> str | None:
        return str(folder / name) if (folder / name).is_file() else None

    entry = {**run, "status": "missing", "reason": "", "final_val_loss": None, "final_train_loss": None,
             "steps_done": 0}  # fmt: skip
    final = folder / "final.json"
    if final.is_file():
        summary = json.loads(final.read_text())
        entry.update(
            status=summary["status"],
            reason=summary.get("reason", ""),
            final_val_loss=summary.get("final_val_loss"),
            final_train_loss=summary.get("final_train_loss"),
            steps_done=summary.get("steps_done", 0),
        )
    elif (folder / "status.json").is_file():
        status = json.loads((folder / "status.json").read_text())
        entry.update(status=status.get("status", "missing"), reason=status.get("reason", ""))
    entry.update(
        metrics=present("metrics.jsonl"),
        diagnostics=present("diagnostics.jsonl"),
        eval=present("eval.json"),
        checkpoint_losses=present("checkpoint_losses.json"),
        mappings=present("mappings.json"),
        jacobian_gain=present("jacobian_gain.json"),
    )
    return entry


def build_index(plan: dict[str, Any], git_sha: str | None = None) -> dict[str, Any]:
    index = {k: v for k, v in plan.items() if k not in ("runs", "scales")}
    index["created"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    index["git_sha"] = git_sha
    index["scales"] = {name: scale_facts(name, s["model"], s["train"]) for name, s in plan["scales"].items()}
    index["scale_configs"] = plan["scales"]  # the effective model/train configs (the report's deviations read them)
    index["runs"] = {key: run_entry(key, run) for key, run in plan["runs"].items()}
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.index", description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    from training.run_folder import git_sha

    plan = json.loads(Path(args.plan).read_text())
    index = build_index(plan, git_sha())
    atomic_write_text(Path(args.out), json.dumps(index, indent=1) + "\n")
    counts: dict[str, int] = {}
    for run in index["runs"].values():
        counts[run["status"]] = counts.get(run["status"], 0) + 1
    print(f"{args.out}: {len(index['runs'])} runs {counts}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
