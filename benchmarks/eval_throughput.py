"""Evaluation throughput of our lm-eval model `mhc` against lm-eval's `hf` model on the same network.

    python -m benchmarks.eval_throughput [--scale tiny] [--requests 64] [--gen-requests 16] [--gen-toks 32]

Builds our baseline model at the scale (random weights; speed does not depend on them) with the suite's BPE
tokenizer, copies its weights into Hugging Face's DeepseekV3ForCausalLM (benchmarks/hf_throughput.py, which
checks that both give identical logits), wraps that in lm-eval's `HFLM` with the same tokenizer, and times,
in one run and on the same requests: loglikelihood requests/s (context + continuation pairs cut from corpus
text) and greedy generate_until tokens/s (fixed `max_gen_toks`, no stop strings, so both generate the same
number of tokens). Needs `accelerate` for lm-eval's HF model. Prints a markdown row for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

import torch
from lm_eval.api.instance import Instance

from benchmarks.hf_throughput import build_hf, copy_weights
from benchmarks.step_time import machine
from corpus import iter_documents, load_tokenizer, resolve_data_root, train_tokenizer
from eval.lm import MhcLM
from models.registry import model_config
from models.transformer import Transformer


def requests_from_corpus(n_ll: int, n_gen: int, gen_toks: int) -> tuple[list[Instance], list[Instance]]:
    docs = iter_documents(resolve_data_root(None) / "corpus")
    texts = [d for d, _ in zip((d for d in docs if len(d) > 400), range(n_ll + n_gen), strict=False)]
    ll = [Instance("loglikelihood", {}, (t[:300], t[300:400]), i) for i, t in enumerate(texts[:n_ll])]
    kwargs = {"until": [], "max_gen_toks": gen_toks, "do_sample": False}
    gen = [Instance("generate_until", {}, (t[:200], dict(kwargs)), i) for i, t in enumerate(texts[n_ll:])]
    return ll, gen


def timed(fn, requests) -> float:
    start = time.perf_counter()
    fn(requests)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="tiny")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--gen-requests", type=int, default=16)
    parser.add_argument("--gen-toks", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)

    from lm_eval.models.huggingface import HFLM
    from transformers import PreTrainedTokenizerFast

    cfg = model_config(args.scale, "baseline")
    torch.manual_seed(0)
    ours = Transformer(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        tok_path = Path(tmp) / "tokenizer.json"
        train_tokenizer(resolve_data_root(None) / "corpus", cfg.vocab_size, tok_path, max_docs=2000)
        tok = load_tokenizer(tok_path)
        hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(tok_path), eos_token="<|endoftext|>")
    hf, attn = build_hf(cfg, experts=None)
    copy_weights(ours, hf)
    hf.eval()
    mine = MhcLM(model=ours, tokenizer_obj=tok, batch_size=args.batch_size)
    theirs = HFLM(pretrained=hf, tokenizer=hf_tok, batch_size=args.batch_size, max_length=cfg.max_seq_len)
    ll, gen = requests_from_corpus(args.requests, args.gen_requests, args.gen_toks)
    for lm in (mine, theirs):  # warm-up
        lm.loglikelihood(ll[:4], disable_tqdm=True)
    t_ll = {
        name: timed(lambda r, m=m: m.loglikelihood(r, disable_tqdm=True), ll)
        for name, m in (("mhc", mine), ("hf", theirs))
    }
    t_gen = {
        name: timed(lambda r, m=m: m.generate_until(r, disable_tqdm=True), gen)
        for name, m in (("mhc", mine), ("hf", theirs))
    }
    ll_rate = {k: len(ll) / v for k, v in t_ll.items()}
    gen_rate = {k: len(gen) * args.gen_toks / v for k, v in t_gen.items()}
    print(f"{machine()}; scale={args.scale}, HF attention {attn}, batch {args.batch_size}")
    for name in ("mhc", "hf"):
        print(f"  {name:4s} loglikelihood {ll_rate[name]:8.1f} req/s   generate_until {gen_rate[name]:8.1f} tok/s")
    print("markdown row:")
    print(
        f"| {datetime.date.today().isoformat()} | {machine()} | {args.scale} "
        f"| {ll_rate['mhc']:.1f} | {ll_rate['hf']:.1f} "
        f"| {ll_rate['mhc'] / ll_rate['hf']:.2f} | {gen_rate['mhc']:.1f} | {gen_rate['hf']:.1f} "
        f"| {gen_rate['mhc'] / gen_rate['hf']:.2f} |"
    )


if __name__ == "__main__":
    main()
