"""Training throughput of our baseline model against Hugging Face transformers' DeepSeek-V3 at the same config.

    python -m benchmarks.hf_throughput [--scale tiny] [--batch 8] [--seq 128] [--steps 10] [--threads N]

Builds our residual-baseline `Transformer` for the scale and `transformers.DeepseekV3ForCausalLM` from a
`DeepseekV3Config` with the same shapes (vocab, width, layers, heads, MLA dims without query compression,
dense / expert widths, routed / active / shared experts, leading dense layers, untied head, RoPE theta,
max positions, norm eps, no dropout), copies our weights into it and checks that both give the same logits,
then times forward + backward training steps (cross-entropy on random tokens, fp32) of the two models
round-robin, so drift in machine load hits both alike. Prints the parameter counts, the median tokens/s of
each, the ratio ours / HF, and a markdown row for BENCHMARKS.md.

Mapping notes (what makes the two models the same function, checked at start-up):
  * RoPE: ours rotates the two contiguous halves of the rotary dims (rotate-half), so HF runs with
    `rope_interleave=False`; HF's default `True` (DeepSeek's released checkpoints) reads the rotary dims as
    interleaved pairs, which equals ours up to a fixed permutation of the rotary rows of `wq` and `wkv_a`.
  * HF builds the KV-latent RMSNorm (`kv_a_layernorm`) with eps 1e-6 whatever `rms_norm_eps` says; we set it
    to our `norm_eps` after construction.
  * MoE routing is the same in both (sigmoid scores, top-k of score + balancing bias, weights = normalised
    scores x route_scale); with `n_group = topk_group = 1` HF's group-limited routing is a no-op. HF's
    `e_score_correction_bias` and our `balance_bias` are both buffers, so they are not in the parameter counts.
  * HF stores the experts as stacked 3-D tensors and runs them with its `experts_implementation` (default
    `grouped_mm` where torch supports it); ours keeps one module per expert and runs them all with grouped
    matmuls too (models/moe.py). `--hf-experts eager` picks HF's per-expert loop.
"""

from __future__ import annotations

import argparse
import datetime
from functools import partial

import torch
from torch import nn

from benchmarks.step_time import machine, step
from common.allocator import keep_freed_memory
from common.timing import round_robin
from models.config import ModelConfig
from models.moe import MoE
from models.registry import model_config
from models.transformer import Transformer


def hf_config(cfg: ModelConfig, attn: str, experts: str | None):
    """A `DeepseekV3Config` with the shapes of our `cfg` (dense FFN everywhere for a dense scale)."""
    from transformers import DeepseekV3Config

    att, ffn, moe = cfg.attention, cfg.ffn, cfg.ffn.moe
    dense = ffn.kind == "dense"
    kwargs = {} if experts is None else {"experts_implementation": experts}
    return DeepseekV3Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=att.n_heads,
        num_key_value_heads=att.n_heads,
        q_lora_rank=None,
        kv_lora_rank=att.kv_rank,
        qk_nope_head_dim=att.qk_nope_dim,
        qk_rope_head_dim=att.qk_rope_dim,
        v_head_dim=att.v_dim,
        intermediate_size=ffn.dense_dim,
        moe_intermediate_size=moe.expert_dim,
        n_routed_experts=moe.n_routed,
        num_experts_per_tok=moe.n_active,
        n_shared_experts=moe.n_shared,
        first_k_dense_replace=cfg.n_layers if dense else ffn.n_dense_layers,
        n_group=1,
        topk_group=1,
        norm_topk_prob=True,
        routed_scaling_factor=moe.route_scale,
        hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        initializer_range=cfg.init_std,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": att.rope_theta},
        rope_interleave=False,
        attention_bias=False,
        attention_dropout=0.0,
        num_mtp_layers=0,
        use_cache=False,
        pad_token_id=None,
        attn_implementation=attn,
        **kwargs,
    )


def build_hf(cfg: ModelConfig, experts: str | None) -> tuple[nn.Module, str]:
    """HF DeepseekV3ForCausalLM at `cfg`, with SDPA attention where HF supports it (else eager)."""
    from transformers import DeepseekV3ForCausalLM

    try:
        model = DeepseekV3ForCausalLM(hf_config(cfg, "sdpa", experts))
    except (ValueError, ImportError):
        model = DeepseekV3ForCausalLM(hf_config(cfg, "eager", experts))
    for layer in model.model.layers:
        layer.self_attn.kv_a_layernorm.variance_epsilon = cfg.norm_eps
    return model, model.config._attn_implementation


@torch.no_grad()
def copy_weights(ours: Transformer, hf: nn.Module) -> None:
    """Load our weights (and MoE balancing biases) into the HF model; every HF tensor must be assigned."""
    state: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": ours.embed.weight,
        "model.norm.weight": ours.norm.weight,
        "lm_head.weight": ours.head.weight,
    }
    for i, block in enumerate(ours.blocks):
        p = f"model.layers.{i}."
        a = block.attn
        state |= {
            p + "input_layernorm.weight": block.attn_norm.weight,
            p + "post_attention_layernorm.weight": block.ffn_norm.weight,
            p + "self_attn.q_proj.weight": a.wq.weight,
            p + "self_attn.kv_a_proj_with_mqa.weight": a.wkv_a.weight,
            p + "self_attn.kv_a_layernorm.weight": a.kv_norm.weight,
            p + "self_attn.kv_b_proj.weight": a.wkv_b.weight,
            p + "self_attn.o_proj.weight": a.wo.weight,
        }
        f = block.ffn
        if isinstance(f, MoE):
            state |= {
                p + "mlp.gate.weight": f.gate.weight,
                p + "mlp.gate.e_score_correction_bias": f.balance_bias,
                p + "mlp.experts.gate_up_proj": torch.stack([torch.cat([e.w1.weight, e.w3.weight]) for e in f.experts]),
                p + "mlp.experts.down_proj": torch.stack([e.w2.weight for e in f.experts]),
            }
            if f.shared is not None:
                for ours_name, hf_name in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
                    state[p + f"mlp.shared_experts.{hf_name}.weight"] = getattr(f.shared, ours_name).weight
        else:
            for ours_name, hf_name in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
                state[p + f"mlp.{hf_name}.weight"] = getattr(f, ours_name).weight
    target = dict(hf.named_parameters()) | {k: v for k, v in hf.named_buffers() if k.endswith("correction_bias")}
    missing, unknown = sorted(set(target) - set(state)), sorted(set(state) - set(target))
    if missing or unknown:
        raise RuntimeError(f"weight mapping incomplete: HF tensors not assigned {missing}, unknown names {unknown}")
    for name, value in state.items():
        if target[name].shape != value.shape:
            raise RuntimeError(f"{name}: HF shape {tuple(target[name].shape)} != ours {tuple(value.shape)}")
        target[name].copy_(value)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def logits_of(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    if isinstance(model, Transformer):
        return model(tokens)
    return model(input_ids=tokens, use_cache=False).logits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--hf-experts",
        default=None,
        help="HF experts_implementation (eager, batched_mm, grouped_mm; default: HF's choice)",
    )
    args = parser.parse_args(argv)
    keep_freed_memory()  # the allocator setting training runs with (common/allocator.py), for both models

    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = model_config(args.scale, "baseline")
    if args.seq > cfg.max_seq_len:
        parser.error(f"--seq {args.seq} exceeds the scale's max_seq_len {cfg.max_seq_len}")
    torch.manual_seed(0)
    ours = Transformer(cfg)
    hf, attn = build_hf(cfg, args.hf_experts)
    copy_weights(ours, hf)
    models = {"ours": ours.train(), "hf": hf.train()}
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1))

    # Same function: identical weights must give identical logits (up to float32 rounding).
    with torch.no_grad():
        diff = (logits_of(ours, tokens[:, :-1]) - logits_of(hf, tokens[:, :-1])).abs().max().item()

    counts = {name: n_params(m) for name, m in models.items()}
    experts = hf.config._experts_implementation if cfg.ffn.kind == "moe" else "n/a (dense)"
    print(
        f"scale={args.scale} ffn={cfg.ffn.kind} batch={args.batch} seq={args.seq} steps={args.steps} "
        f"threads={torch.get_num_threads()} ({machine()})"
    )
    print(f"transformers {transformers.__version__}: attn_implementation={attn}, experts_implementation={experts}")
    print(f"params: ours {counts['ours']:,}  HF {counts['hf']:,}  difference {counts['ours'] - counts['hf']:+,}")
    if counts["ours"] != counts["hf"]:
        print("  (differences would come from parameters one side has and the other lacks; see copy_weights)")
    print(f"max |logits ours - logits HF| with our weights copied into HF: {diff:.2e}")

    seconds = round_robin(
        {name: partial(step, model, tokens, logits_of) for name, model in models.items()}, args.steps, args.warmup
    )

    n_tokens = args.batch * args.seq
    tps = {name: n_tokens / s for name, s in seconds.items()}
    for name in models:
        print(f"  {name:4s} median {n_tokens / tps[name] * 1e3:8.2f} ms/step  {tps[name]:10.0f} tok/s")
    ratio = tps["ours"] / tps["hf"]
    print(f"  ours / HF throughput: {ratio:.3f}")
    date = datetime.date.today().isoformat()
    print("markdown row:")
    print(
        f"| {date} | {machine()} | {args.scale} | {args.batch}x{args.seq} | {tps['ours']:.0f} | {tps['hf']:.0f} | "
        f"{ratio:.2f} | {counts['ours']:,} | {counts['hf']:,} |"
    )


if __name__ == "__main__":
    main()
