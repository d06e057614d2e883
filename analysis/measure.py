"""`python -m analysis.measure --scales S [S ...] [--model-overrides JSON] --out FILE`: the workflow's measurements.

Three measurements per scale, written to one JSON (`results/analysis/measurements.json`) that the tables read:

- overhead: forward+backward step time of HC and mHC against the residual baseline of the same model (median over
  `--steps` after warm-up; archs run round-robin so drift in machine load hits all alike). The connections use the
  kernels `auto` picks on this device: the fused Triton kernels on CUDA, the PyTorch reference path elsewhere.
- memory (Table 3): bytes per token that autograd saves for backward inside the connections, without and with
  block recomputation at Eq. 20's L_r*, beside Table 3's formula.
- traffic (Table 2): bytes read and written per token by one sub-layer's residual-stream maintenance, split as
  Table 2 splits it (coefficients, H_pre, H_post + H_res + merge), counted op by op with a TorchDispatchMode on the
  eager reference path: every aten op reads its tensor inputs and writes its outputs (views move nothing). This is
  the traffic of the unfused implementation, which Table 2's formula describes; the fused kernels
  (models/kernels/triton_ops.py) read (n + 1)C and write nC in their post/res/merge step instead.
  The variants beyond the paper (`TRAFFIC_ONLY`) are counted the same way over whole connection calls, split at the
  sub-layer (what the connection does before F, and after), averaged over all sub-layers of the model: a dense
  connection (MUDDFormer) reads more the deeper it sits.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from common.allocator import keep_freed_memory
from common.files import atomic_write_text
from common.gpu_slots import GpuSlotError, resolve_device
from common.timing import round_robin
from models.config import ConfigError, ModelConfig, from_dict, merge_overrides, to_dict, validate_model_config
from models.connections import VARIANTS
from models.diagnostics import saved_activation_bytes
from models.kernels import get_ops
from models.registry import get_scale
from models.transformer import Transformer

ARCHS = ("baseline", "hc", "mhc")
# Counted for Table 2 beside the paper's three (no paper formula; not timed here: BENCHMARKS.md has their step times)
TRAFFIC_ONLY = ("mhc-lite", "rmt", "mudd")


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def scale_config(scale: str, arch: str, overrides: dict[str, Any], **connection: Any) -> ModelConfig:
    data = merge_overrides(to_dict(get_scale(scale).model), overrides)
    data["connection"] = {**data.get("connection", {}), "arch": arch, **connection}
    cfg = from_dict(ModelConfig, data, _path="model")
    validate_model_config(cfg)
    return cfg


# ---- overhead ---------------------------------------------------------------------------------------------------
def step_times(configs: dict[str, ModelConfig], batch: int, seq: int, steps: int, device: torch.device) -> dict:
    """Median forward+backward time (ms) per arch, archs interleaved (common/timing.py), after 2 warm-up rounds."""
    models = {}
    for arch, cfg in configs.items():
        torch.manual_seed(0)
        models[arch] = Transformer(cfg).to(device)
    tokens = torch.randint(0, next(iter(configs.values())).vocab_size, (batch, seq + 1), device=device)

    def step(model: Transformer) -> None:
        logits = model(tokens[:, :-1])
        F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten()).backward()
        model.zero_grad(set_to_none=True)

    calls = {arch: (lambda m=model: step(m)) for arch, model in models.items()}
    return {arch: t * 1e3 for arch, t in round_robin(calls, steps, warmup=2, device=device).items()}


def memory_needed(configs: dict[str, ModelConfig]) -> int:
    """A lower bound on the bytes `step_times` holds at once: every arch's float32 weights and gradients (the three
    models are interleaved, so all are resident), activations not counted."""
    from models.summary import summarize

    return sum(8 * summarize(cfg)["total_params"] for cfg in configs.values())


def memory_available(device: torch.device) -> int:
    """Free bytes on the GPU, or the host's available memory for the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(configs: dict[str, dict[str, ModelConfig]], device: torch.device) -> None:
    """ConfigError naming the scale when its measurement cannot fit this device (rather than an out-of-memory
    crash after minutes of model building)."""
    free = memory_available(device)
    for scale, by_arch in configs.items():
        need = memory_needed(by_arch)
        if need > free:
            raise ConfigError(
                f"measuring {scale} needs at least {need / 2**30:.1f} GiB ({len(by_arch)} float32 models with "
                f"gradients, resident together), but this {device.type} has {free / 2**30:.1f} GiB free: measure a "
                "smaller scale (config `measurements.scales`) or on a larger device"
            )


# ---- memory (Table 3) -------------------------------------------------------------------------------------------
def table3_elements(n: int, C: int, L: int, block: int) -> tuple[int, int]:
    """Table 3's elements per token without and with recomputation (see models/connections/recompute.py)."""
    return L * (n * C + C), n * C * math.ceil(L / block) + L * (C + n * n + n)


def saved_bytes_per_token(cfg: ModelConfig, seq: int) -> float:
    torch.manual_seed(0)
    model = Transformer(cfg)
    batch = torch.randint(0, cfg.vocab_size, (1, seq))
    with saved_activation_bytes(model) as counts:
        model(batch)
    return counts["connection"] / seq


# ---- traffic (Table 2) ------------------------------------------------------------------------------------------
class TrafficCounter(TorchDispatchMode):
    """Bytes every (non-view) aten op reads from its tensor inputs and writes to its outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.read = 0
        self.write = 0
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and not self.paused:
            flat_in = torch.utils._pytree.tree_leaves((args, kwargs or {}))
            flat_out = torch.utils._pytree.tree_leaves(out)
            self.read += sum(t.numel() * t.element_size() for t in flat_in if isinstance(t, torch.Tensor))
            self.write += sum(t.numel() * t.element_size() for t in flat_out if isinstance(t, torch.Tensor))
        return out


def traffic(cfg: ModelConfig, tokens: int) -> list[dict[str, Any]]:
    """Per-token bytes of one sub-layer's residual maintenance, per phase, on the reference path."""
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(cfg, connection=dataclasses.replace(cfg.connection, kernels="reference")))
    conn = model.connections()[0] if cfg.connection.arch != "baseline" else None
    C, n = cfg.dim, cfg.connection.streams()
    rows: list[dict[str, Any]] = []

    def count(name: str, fn) -> Any:
        counter = TrafficCounter()
        with torch.no_grad(), counter:
            result = fn()
        rows.append({"op": name, "read_bytes": counter.read / tokens, "write_bytes": counter.write / tokens})
        return result

    y = torch.randn(tokens, C)
    if conn is None:
        x = torch.randn(tokens, C)
        count("merge", lambda: x + y)
    else:
        ops = get_ops("reference", torch.device("cpu"))
        x = torch.randn(tokens, n, C)
        H_pre, H_post, H_res = count("coefficients", lambda: conn.mappings(x))
        count("H_pre", lambda: ops.pre_mix(x, H_pre))
        count("H_post+H_res+merge", lambda: ops.post_res_mix(x, H_res, H_post, y))
    rows.append(
        {
            "op": "total",
            "read_bytes": sum(r["read_bytes"] for r in rows),
            "write_bytes": sum(r["write_bytes"] for r in rows),
        }
    )
    return rows


def connection_traffic(cfg: ModelConfig, tokens: int) -> list[dict[str, Any]]:
    """Per-token bytes of a connection's work around its sub-layer, averaged over the model's sub-layers: what every
    connection call does before F runs ("read": its inputs to F) and after ("write": merging F's output into the state),
    counted on the eager ops with F itself paused (hooks on each sub-layer's pre-norm and on the sub-layer)."""
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(cfg, connection=dataclasses.replace(cfg.connection, kernels="reference")))
    counter = TrafficCounter()
    phase = {"name": "read"}
    totals = {"read": [0, 0], "write": [0, 0]}

    def pause(*_: Any) -> None:
        if not counter.paused:
            totals[phase["name"]][0] += counter.read
            totals[phase["name"]][1] += counter.write
            counter.read = counter.write = 0
            counter.paused = True

    def resume(*_: Any) -> None:
        counter.paused = False
        phase["name"] = "write"

    for block in model.blocks:
        for norm, sublayer in ((block.attn_norm, block.attn), (block.ffn_norm, block.ffn)):
            norm.register_forward_pre_hook(pause)
            sublayer.register_forward_hook(resume)
    steps = model.sublayer_steps(tokens)
    with torch.no_grad():
        state = model.connection_ends.expand(torch.randn(1, tokens, cfg.dim))
        for step in steps:
            phase["name"] = "read"
            with counter:
                state = step(state)
            totals["write"][0] += counter.read
            totals["write"][1] += counter.write
            counter.read = counter.write = 0
    per = len(steps) * tokens
    rows = [{"op": name, "read_bytes": r / per, "write_bytes": w / per} for name, (r, w) in totals.items()]
    rows.append({"op": "total", "read_bytes": sum(r["read_bytes"] for r in rows),
                 "write_bytes": sum(r["write_bytes"] for r in rows)})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.measure", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", nargs="+", required=True, help="registry scales to measure")
    parser.add_argument("--model-overrides", default="{}", help="JSON {scale: {model overrides}}, as in the config")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per arch (after 2 warm-up rounds)")
    parser.add_argument("--device", default="auto", help="auto (a free GPU of this machine, else the CPU), cpu, cuda")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    keep_freed_memory()  # the allocator setting training runs with (common/allocator.py)
    try:
        device = torch.device(resolve_device(args.device))
        overrides = json.loads(args.model_overrides)
        configs = {s: {a: scale_config(s, a, overrides.get(s, {})) for a in ARCHS} for s in args.scales}
        check_fits(configs, device)
    except (ConfigError, GpuSlotError, json.JSONDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    result: dict[str, Any] = {
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "device": device.type,
        "overhead": [],
        "memory": [],
        "traffic": [],
    }
    for scale, by_arch in configs.items():
        print(f"[measure] {scale}: step time ({args.steps} steps x {len(ARCHS)} archs)", file=sys.stderr)
        ms = step_times(by_arch, args.batch, min(args.seq, by_arch["baseline"].max_seq_len), args.steps, device)
        kernels = "triton" if device.type == "cuda" else "reference"
        for arch in ARCHS:
            result["overhead"].append(
                {
                    "scale": scale,
                    "arch": arch,
                    "step_ms": ms[arch],
                    "baseline_ms": ms["baseline"],
                    "ratio": ms[arch] / ms["baseline"],
                    "kernels": kernels,
                    "device": device.type,
                    "batch": args.batch,
                    "seq": args.seq,
                }
            )
        print(f"[measure] {scale}: saved activations and traffic", file=sys.stderr)
        mhc = by_arch["mhc"]
        n, C, L = mhc.connection.n, mhc.dim, 2 * mhc.n_layers
        from models.connections.recompute import optimal_block

        block = optimal_block(n, L)
        seq = min(args.seq, mhc.max_seq_len)
        ref = dataclasses.replace(mhc, connection=dataclasses.replace(mhc.connection, kernels="reference"))
        rc = dataclasses.replace(ref, connection=dataclasses.replace(ref.connection, recompute_layers=block))
        f_without, f_with = table3_elements(n, C, L, block)
        result["memory"].append(
            {
                "scale": scale,
                "n": n,
                "C": C,
                "L": L,
                "L_r": block,
                "bytes_per_element": 4,
                "measured_without": saved_bytes_per_token(ref, seq),
                "formula_without": 4 * f_without,
                "measured_with": saved_bytes_per_token(rc, seq),
                "formula_with": 4 * f_with,
            }
        )
        for arch in ARCHS:
            for row in traffic(by_arch[arch], tokens=seq):
                result["traffic"].append(
                    {"scale": scale, "arch": arch, "n": by_arch[arch].connection.streams(), "C": C,
                     "bytes_per_element": 4, **row}
                )  # fmt: skip
        for arch in (a for a in TRAFFIC_ONLY if a in VARIANTS):
            cfg = scale_config(scale, arch, overrides.get(scale, {}))
            for row in connection_traffic(cfg, tokens=seq):
                result["traffic"].append(
                    {"scale": scale, "arch": arch, "n": cfg.connection.streams(), "C": C, "bytes_per_element": 4,
                     "averaged_over_sublayers": True, **row}
                )  # fmt: skip
    atomic_write_text(Path(args.out), json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
