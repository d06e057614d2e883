"""Step time of HC and mHC over a plain residual: this suite's connections beside lucidrains' `hyper-connections`.

    python -m benchmarks.connections_side_by_side [--dim 256] [--blocks 8] [--seq 256] [--batch 8] [--steps 10]
                                                  [--threads 2] [--scale cpu-dense-d8]

One small pre-norm transformer (RMSNorm, causal SDPA attention with 4 heads, SwiGLU FFN of width 8/3 x dim, an
untied head), whose residual connection alone is swapped: the plain residual (the reference of every ratio),
lucidrains' HyperConnections and mHC (`pip install hyper-connections==0.4.11`; left out with a note when it is not
installed) and this suite's HC and mHC connections (models/connections) on the PyTorch reference ops and on the
fused CPU kernels (kernels 'reference' and 'cpu'), all with n = 4 streams and the same branch modules. Forward +
backward + AdamW step on random tokens, fp32, median over `--steps` after 3 warm-up steps, the variants
round-robin so that drift in machine load hits all alike. Then the same ratios for this suite's whole model at a
registry scale (`--scale`, the default tier's), where they are what a tier pays. Prints a markdown row for
BENCHMARKS.md, and the time the fused kernels took to load (compiled, or from their cache).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from analysis.measure import machine
from common.allocator import keep_freed_memory
from common.timing import round_robin
from models.config import connection_config
from models.connections import build_connection
from models.kernels import cpu_ops
from models.registry import get_scale, model_config
from models.transformer import Transformer

N_STREAMS = 4


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        self.norm, self.heads = nn.RMSNorm(dim), heads
        self.qkv, self.out = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [..., T, 3D] -> three [..., heads, T, D / heads]
        q, k, v = self.qkv(self.norm(x)).unflatten(-1, (3, self.heads, -1)).movedim(-3, 0).transpose(-2, -3).unbind(0)
        return self.out(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(-2, -3).flatten(-2))


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        hidden = 8 * dim // 3
        self.norm = nn.RMSNorm(dim)
        self.w13, self.w2 = nn.Linear(dim, 2 * hidden, bias=False), nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w13(self.norm(x)).chunk(2, dim=-1)
        return self.w2(F.silu(a) * b)


class Net(nn.Module):
    """The small transformer with one connection implementation (`kind`) around every branch."""

    def __init__(self, kind: str, dim: int, blocks: int, vocab: int):
        super().__init__()
        self.kind = kind
        self.embed, self.norm, self.head = nn.Embedding(vocab, dim), nn.RMSNorm(dim), nn.Linear(dim, vocab, bias=False)
        branches = [module for _ in range(blocks) for module in (Attention(dim), FeedForward(dim))]
        if kind == "residual":
            self.branches = nn.ModuleList(branches)
        elif kind.startswith("lucidrains"):
            import hyper_connections as lucidrains

            make = (
                lucidrains.get_init_and_expand_reduce_stream_functions
                if kind == "lucidrains-hc"
                else lucidrains.mc_get_init_and_expand_reduce_stream_functions
            )
            init, self.expand, self.reduce = make(N_STREAMS, dim=dim)
            self.hcs = nn.ModuleList(init(branch=b, layer_index=i) for i, b in enumerate(branches))
        else:
            _, arch, kernels = kind.split("-")  # ours-{hc,mhc}-{reference,cpu}
            self.cfg = connection_config(arch=arch, n=N_STREAMS, kernels=kernels)
            self.branches = nn.ModuleList(branches)
            self.connections = nn.ModuleList(build_connection(self.cfg, dim, i, 1e-6) for i in range(len(branches)))
            for connection in self.connections:
                connection.reset_parameters()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        if self.kind == "residual":
            for branch in self.branches:
                x = x + branch(x)
        elif self.kind.startswith("lucidrains"):
            x = self.expand(x)
            for hc in self.hcs:
                x = hc(x)
            x = self.reduce(x)
        else:
            first = self.connections[0]
            state = first.expand(x, self.cfg)
            for connection, branch in zip(self.connections, self.branches, strict=True):
                state = connection(state, branch)
            x = first.collapse(state, self.cfg)
        return self.head(self.norm(x))


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, tokens: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        logits = model(tokens[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scale", default="cpu-dense-d8", help="registry scale for the whole-model ratios")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's malloc thresholds at their defaults (training raises them: common/allocator.py)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.default_malloc:
        keep_freed_memory()  # as models.train does: the allocator's page faults are not the connections' cost
    start = time.perf_counter()
    cpu_ops.extension()
    load_seconds = time.perf_counter() - start
    kinds = ["residual", "ours-hc-reference", "ours-mhc-reference", "ours-hc-cpu", "ours-mhc-cpu"]
    if importlib.util.find_spec("hyper_connections") is not None:
        kinds[1:1] = ["lucidrains-hc", "lucidrains-mhc"]
    else:
        print("hyper-connections is not installed (pip install hyper-connections==0.4.11): lucidrains rows left out")
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1))
    steps = {}
    for kind in kinds:
        torch.manual_seed(0)
        model = Net(kind, args.dim, args.blocks, args.vocab)
        steps[kind] = train_step(model, torch.optim.AdamW(model.parameters(), lr=1e-4), tokens)
    small = {kind: 1e3 * s for kind, s in round_robin(steps, args.steps).items()}

    scale = get_scale(args.scale)
    batch, seq = scale.train.batch_size, scale.train.seq_len
    scale_tokens = torch.randint(0, scale.model.vocab_size, (batch, seq + 1))
    steps = {}
    for arch, kernels in (
        ("baseline", "auto"),
        ("hc", "reference"),
        ("mhc", "reference"),
        ("hc", "cpu"),
        ("mhc", "cpu"),
    ):
        torch.manual_seed(0)
        model = Transformer(model_config(args.scale, arch, kernels=kernels))
        name = arch if arch == "baseline" else f"{arch}-{kernels}"
        steps[name] = train_step(model, torch.optim.AdamW(model.parameters(), lr=1e-4), scale_tokens)
    whole = {name: 1e3 * s for name, s in round_robin(steps, args.steps).items()}

    malloc = "glibc defaults" if args.default_malloc else "thresholds raised (common/allocator.py)"
    print(f"{machine()}, {args.threads} thread(s); malloc {malloc}; fused CPU kernels loaded in {load_seconds:.1f} s")
    shape = f"dim {args.dim}, {args.blocks} blocks, batch {args.batch} x {args.seq}"
    print(f"small transformer ({shape}), forward + backward + AdamW, median of {args.steps}:")
    for kind, ms in small.items():
        print(f"  {kind:16s} {ms:8.1f} ms   / residual {ms / small['residual']:.2f}")
    print(f"this suite's model at {args.scale} (batch {batch} x {seq}):")
    for arch, ms in whole.items():
        print(f"  {arch:16s} {ms:8.1f} ms   / baseline {ms / whole['baseline']:.2f}")
    ratio = {kind: f"{ms / small['residual']:.2f}" for kind, ms in small.items()}
    big = {name: f"{ms / whole['baseline']:.2f}" for name, ms in whole.items()}
    print("markdown row:")
    print(
        f"| {datetime.date.today()} | {machine()} | {args.threads} | {shape} | "
        f"{ratio.get('lucidrains-hc', 'n/a')} | {ratio.get('lucidrains-mhc', 'n/a')} | "
        f"{ratio['ours-hc-reference']} | {ratio['ours-mhc-reference']} | {ratio['ours-hc-cpu']} | "
        f"{ratio['ours-mhc-cpu']} | {args.scale} | {big['hc-reference']} | {big['mhc-reference']} | "
        f"{big['hc-cpu']} | {big['mhc-cpu']} |"
    )


if __name__ == "__main__":
    main()
