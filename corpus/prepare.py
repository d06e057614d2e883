"""`python -m models.prepare_data --vocab V [--max-docs N] [--root R | --hf-dataset NAME] --out DIR`.

Builds the byte-level BPE tokenizer and the train/val token shards one training run (or a whole workflow of them)
reads, exactly as `models.train` would build them on first use, but as a step of its own: the workflow runs it once
before the training jobs, so that concurrent jobs never race to build the same shards. Rerunning on a finished
folder does nothing (the manifest's sha256 checksums are verified instead).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from corpus import DataError
from models.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.prepare_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, required=True, help="tokenizer vocabulary size")
    parser.add_argument("--max-docs", type=int, default=None, help="use only the first N corpus documents")
    parser.add_argument("--root", default=None, help="data root (default: $MHC_DATA_ROOT, else ../shared/data)")
    parser.add_argument("--hf-dataset", default=None, help="stream NAME[:CONFIG] from the Hugging Face hub instead")
    parser.add_argument("--val-fraction", type=float, default=0.01)
    parser.add_argument("--out", required=True, help="folder for tokenizer.json, train.bin, val.bin, manifest.json")
    args = parser.parse_args(argv)
    if args.vocab < 256 + 1:
        print(f"error: --vocab must be at least 257 (256 bytes + <|endoftext|>), got {args.vocab}", file=sys.stderr)
        return 2

    from corpus import load_shard
    from training.trainer import DataConfig, RunConfig, prepare_data

    data = DataConfig(
        root=args.root,
        shards_dir=args.out,
        max_docs=args.max_docs,
        hf_dataset=args.hf_dataset,
        val_fraction=args.val_fraction,
    )
    try:
        shards, manifest = prepare_data(RunConfig(data=data), args.vocab, show=True)
        for split in ("train", "val"):
            load_shard(shards, split, verify=True)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = {name: info.get("num_tokens") for name, info in manifest.get("shards", {}).items()}
    print(f"{Path(args.out)}: vocab {manifest.get('vocab_size')}, tokens {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
