"""One registry of named scales: the paper's four configurations (Table 5) and the small ladders of the
cpu and gpu tiers.

Paper scales reproduce Table 5 exactly (layers, width, heads, MLA ranks, experts, optimiser, schedule,
tokens). Their parameter counts match Table 5 to within 0.5% (see `python -m models.summary`).

Small ladders keep the family (MLA + DeepSeekMoE with shared experts, a dense first layer of 8 x the
expert width, untied head) and the paper's proportions where they make sense (expert width = 0.7 x dim,
6 of 64 routed experts scaled down to 2 of 8 or 4 of 16, 2 shared), with a vocabulary sized for the
suite's own BPE tokenizer. `tiny` is the dense unit-test model. The optimiser follows Table 5, AdamW eps = 1e-20
included (with eps = 1e-8 the tiny gradients that reach mHC's H_res while the streams are still nearly equal do
not move it: tests/test_mechanism.py), with a warm-up scaled to the run length.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .config import (
    AttentionConfig,
    ConfigError,
    FFNConfig,
    ModelConfig,
    MoEConfig,
    TrainConfig,
    connection_config,
)


@dataclass(frozen=True)
class Scale:
    name: str
    model: ModelConfig
    train: TrainConfig
    description: str = ""
    # Table 5's printed numbers, for the paper scales only (what `models.summary` compares against).
    paper: dict = field(default_factory=dict)


def _paper(
    name: str,
    layers: int,
    dim: int,
    heads: int,
    routed: int,
    expert_dim: int,
    batch: int,
    steps: int,
    lr: float,
    paper: dict,
) -> Scale:
    model = ModelConfig(
        vocab_size=129280,
        dim=dim,
        n_layers=layers,
        max_seq_len=4096,
        norm_eps=1e-20,
        attention=AttentionConfig(n_heads=heads, qk_nope_dim=128, qk_rope_dim=64, v_dim=128, kv_rank=512),
        ffn=FFNConfig(
            kind="moe",
            dense_dim=8 * expert_dim,
            n_dense_layers=1,
            moe=MoEConfig(n_routed=routed, n_active=6, n_shared=2, expert_dim=expert_dim),
        ),
    )
    train = TrainConfig(batch_size=batch, seq_len=4096, steps=steps, lr=lr, warmup_steps=2000, eps=1e-20)
    return Scale(name, model, train, f"mHC paper Table 5, {name}", paper)


def _ladder(
    name: str,
    layers: int,
    dim: int,
    heads: int,
    routed: int,
    active: int,
    vocab: int,
    seq: int,
    batch: int,
    steps: int,
    lr: float,
    description: str,
    dense_dim: int = 0,
) -> Scale:
    """A small scale of the paper's family; `dense_dim` > 0 makes every FFN a dense SwiGLU of that width."""
    head_dim = dim // heads
    expert_dim = int(round(0.7 * dim / 16)) * 16
    model = ModelConfig(
        vocab_size=vocab,
        dim=dim,
        n_layers=layers,
        max_seq_len=seq,
        norm_eps=1e-20,
        init_std=0.02,
        attention=AttentionConfig(
            n_heads=heads,
            qk_nope_dim=head_dim,
            qk_rope_dim=head_dim // 2,
            v_dim=head_dim,
            kv_rank=4 * head_dim,
        ),
        ffn=FFNConfig(kind="dense", dense_dim=dense_dim, n_dense_layers=0)
        if dense_dim
        else FFNConfig(
            kind="moe",
            dense_dim=8 * expert_dim,
            n_dense_layers=1,
            moe=MoEConfig(n_routed=routed, n_active=active, n_shared=2, expert_dim=expert_dim),
        ),
    )
    train = TrainConfig(
        batch_size=batch,
        seq_len=seq,
        steps=steps,
        lr=lr,
        warmup_steps=max(1, steps // 15),  # 2000 / 30000 in the paper
        eps=1e-20,
    )
    return Scale(name, model, train, description)


SCALES: dict[str, Scale] = {}


def register(scale: Scale) -> Scale:
    if scale.name in SCALES:
        raise ValueError(f"scale {scale.name!r} registered twice")
    SCALES[scale.name] = scale
    return scale


register(
    _paper(
        "paper-3b",
        12,
        1280,
        16,
        64,
        896,
        320,
        30000,
        8.6e-4,
        {"total_params": 2.97e9, "active_params": 612e6, "vocab_params": 331e6, "tokens": 39.3e9},
    )
)
register(
    _paper(
        "paper-9b",
        18,
        1920,
        24,
        64,
        1280,
        512,
        50000,
        5.9e-4,
        {"total_params": 9.18e9, "active_params": 1.66e9, "vocab_params": 496e6, "tokens": 105e9},
    )
)
register(
    _paper(
        "paper-27b",
        30,
        2560,
        32,
        72,
        1536,
        1280,
        50000,
        4.0e-4,
        {"total_params": 27.0e9, "active_params": 4.14e9, "vocab_params": 662e6, "tokens": 262e9},
    )
)
register(
    _paper(
        "paper-3b-1t",
        12,
        1280,
        16,
        64,
        896,
        2560,
        100000,
        9.0e-4,
        {"total_params": 2.97e9, "active_params": 612e6, "vocab_params": 331e6, "tokens": 1.05e12},
    )
)

# cpu tier: minutes per run on 2 cores.
register(_ladder("cpu-xs", 4, 96, 4, 8, 2, 8192, 256, 16, 600, 3e-3, "cpu ladder, smallest"))
register(_ladder("cpu-s", 6, 128, 4, 8, 2, 8192, 256, 16, 800, 2.5e-3, "cpu ladder"))
register(_ladder("cpu-m", 8, 160, 4, 8, 2, 8192, 256, 16, 1000, 2e-3, "cpu ladder, largest"))
# The default workflow tier (config/config.yaml): deep and thin, because the composite gain of HC is a product
# over sub-layers and grows with depth, and 2 x 4-8 blocks is as deep as a 2-core machine trains in minutes.
# A small vocabulary keeps the embedding and head (which the connections do not touch) from dominating.
register(_ladder("cpu-d4", 4, 48, 4, 8, 2, 4096, 128, 16, 150, 3e-3, "cpu tier ladder, 8 sub-layers"))
register(_ladder("cpu-d6", 6, 64, 4, 8, 2, 4096, 128, 16, 200, 3e-3, "cpu tier ladder, 12 sub-layers"))
register(_ladder("cpu-d8", 8, 64, 4, 8, 2, 4096, 128, 16, 250, 3e-3, "cpu tier main scale, 16 sub-layers"))
# The default tier's dense ladder: the same deep-and-thin shapes with a dense SwiGLU FFN (3 x dim) in every block.
# At width 64 the MoE's routing (2 of 8 experts of width 48) only adds seed-to-seed noise to the comparison of
# residual connections, which is what the tier measures; the gpu and paper tiers keep the MoE.
register(_ladder("cpu-dense-d4", 4, 48, 4, 0, 0, 4096, 128, 16, 200, 3e-3, "dense cpu ladder, 8 sub-layers", 144))
register(_ladder("cpu-dense-d6", 6, 64, 4, 0, 0, 4096, 128, 16, 300, 3e-3, "dense cpu ladder, 12 sub-layers", 192))
register(_ladder("cpu-dense-d8", 8, 64, 4, 0, 0, 4096, 128, 16, 400, 3e-3, "dense cpu tier main, 16 sub-layers", 192))
# The depth sweep: cpu-dense-d8's width, batch, tokens and schedule at 2, 4 and 16 blocks (4, 8 and 32 sub-layers;
# cpu-dense-d8 is the 16-sub-layer point), so that only the depth differs between the points.
register(_ladder("cpu-dense-d2w64", 2, 64, 4, 0, 0, 4096, 128, 16, 400, 3e-3, "depth sweep, 4 sub-layers", 192))
register(_ladder("cpu-dense-d4w64", 4, 64, 4, 0, 0, 4096, 128, 16, 400, 3e-3, "depth sweep, 8 sub-layers", 192))
register(_ladder("cpu-dense-d16", 16, 64, 4, 0, 0, 4096, 128, 16, 400, 3e-3, "depth sweep, 32 sub-layers", 192))
# gpu tier: one GPU, hours.
register(_ladder("gpu-s", 8, 512, 8, 16, 4, 32768, 1024, 64, 6000, 1.5e-3, "gpu ladder"))
register(_ladder("gpu-m", 12, 768, 12, 16, 4, 32768, 1024, 96, 10000, 1.2e-3, "gpu ladder"))
register(_ladder("gpu-l", 16, 1024, 16, 32, 6, 32768, 2048, 128, 15000, 1e-3, "gpu ladder, largest"))
# The gpu tier's depth sweep: gpu-s at 2, 4 and 16 blocks (gpu-s itself is the 16-sub-layer point).
register(_ladder("gpu-s-d2", 2, 512, 8, 16, 4, 32768, 1024, 64, 6000, 1.5e-3, "gpu depth sweep, 4 sub-layers"))
register(_ladder("gpu-s-d4", 4, 512, 8, 16, 4, 32768, 1024, 64, 6000, 1.5e-3, "gpu depth sweep, 8 sub-layers"))
register(_ladder("gpu-s-d16", 16, 512, 8, 16, 4, 32768, 1024, 64, 6000, 1.5e-3, "gpu depth sweep, 32 sub-layers"))

# Unit tests and smoke runs: dense FFN, seconds per run.
register(
    Scale(
        "tiny",
        ModelConfig(
            vocab_size=512,
            dim=64,
            n_layers=2,
            max_seq_len=128,
            norm_eps=1e-20,
            init_std=0.02,
            attention=AttentionConfig(n_heads=2, qk_nope_dim=16, qk_rope_dim=8, v_dim=16, kv_rank=32),
            ffn=FFNConfig(kind="dense", dense_dim=128, n_dense_layers=0),
        ),
        TrainConfig(batch_size=8, seq_len=64, steps=50, lr=3e-3, warmup_steps=5, eps=1e-20),
        "unit-test model (dense FFN)",
    )
)

# The smoke tier's second depth: tiny at 4 blocks.
register(
    dataclasses.replace(
        SCALES["tiny"],
        name="tiny-d4",
        model=dataclasses.replace(SCALES["tiny"].model, n_layers=4),
        description="unit-test model at 4 blocks (the smoke tier's depth sweep)",
    )
)


def get_scale(name: str) -> Scale:
    try:
        return SCALES[name]
    except KeyError:
        raise ConfigError(f"unknown scale {name!r}; known scales: {', '.join(SCALES)}") from None


def model_config(scale: str, arch: str = "baseline", **connection: object) -> ModelConfig:
    """The model config of a named scale with the given connection arch (and connection overrides)."""
    base = get_scale(scale).model
    conn = connection_config(arch, **connection)
    return dataclasses.replace(base, connection=conn)
