"""`python -m models.prepare_data --vocab V [--max-docs N] [--root R | --hf-dataset NAME] --out DIR`.

Builds the byte-level BPE tokenizer and the train/val token shards one training run (or a whole workflow of them)
reads, exactly as `models.train` would build them on first use, but as a step of its own: the workflow runs it once
before the training jobs, so that concurrent jobs never race to build the same shards. Rerunning on a finished
folder does nothing (the manifest's sha256 checksums are verified instead).
"""

from __future__ import annotations

import argparse
import fcntl
import sys
from dataclasses import dataclass
from pathlib import Path

from .documents import HF_PREFIX, DataError, repo_root, resolve_data_root
from .shards import build_shards, load_shard, read_manifest
from .tokenizer import train_tokenizer


@dataclass
class DataConfig:
    root: str | None = None  # data root; None: $MHC_DATA_ROOT, else ../shared/data
    shards_dir: str | None = None  # tokenizer + shards cache; None: results/data/bpe<vocab>[-docs<max_docs>]
    max_docs: int | None = None  # use only the first documents of the corpus (smoke runs)
    # Stream a Hugging Face dataset instead of the local corpus (needs hub access and `datasets`), e.g.
    # "HuggingFaceFW/fineweb-edu:sample-10BT"; set max_docs to bound it.
    hf_dataset: str | None = None
    val_fraction: float = 0.01

    def __post_init__(self) -> None:
        if self.max_docs is not None and self.max_docs < 1:
            raise DataError(f"data.max_docs must be >= 1 (or null for all), got {self.max_docs}")
        if not 0 < self.val_fraction < 1:
            raise DataError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")


def default_shards_dir(d: DataConfig, vocab_size: int) -> Path:
    """results/data/bpe<vocab>[-<hf dataset>][-docs<max_docs>] in the repository (else the working directory)."""
    source = "-" + d.hf_dataset.replace("/", "_").replace(":", "_") if d.hf_dataset else ""
    name = f"bpe{vocab_size}{source}" + (f"-docs{d.max_docs}" if d.max_docs else "")
    return (repo_root() or Path.cwd()) / "results" / "data" / name


def prepare_data(d: DataConfig, vocab_size: int) -> tuple[Path, dict]:
    """Tokenizer and shards for this vocabulary, built once and then reused (sha256-checked on load)."""
    shards = Path(d.shards_dir) if d.shards_dir else default_shards_dir(d, vocab_size)
    if not (shards / "manifest.json").is_file():
        corpus = f"{HF_PREFIX}{d.hf_dataset}" if d.hf_dataset else resolve_data_root(d.root) / "corpus"
        if not d.hf_dataset and not corpus.is_dir():
            raise DataError(f"corpus directory {corpus} does not exist")
        shards.mkdir(parents=True, exist_ok=True)
        with open(shards / ".build.lock", "w") as fh:  # concurrent jobs: one builds, the others wait and reuse
            fcntl.flock(fh, fcntl.LOCK_EX)
            if not (shards / "manifest.json").is_file():
                tokenizer = train_tokenizer(corpus, vocab_size, shards / "tokenizer.json", max_docs=d.max_docs)
                build_shards(corpus, tokenizer, shards, val_fraction=d.val_fraction, max_docs=d.max_docs)
    manifest = read_manifest(shards)
    if manifest.get("vocab_size", 0) > vocab_size:
        raise DataError(f"tokenizer in {shards} has {manifest['vocab_size']} tokens; the model only {vocab_size}")
    return shards, manifest


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

    try:
        data = DataConfig(
            root=args.root,
            shards_dir=args.out,
            max_docs=args.max_docs,
            hf_dataset=args.hf_dataset,
            val_fraction=args.val_fraction,
        )
        shards, manifest = prepare_data(data, args.vocab)
        for split in ("train", "val"):
            load_shard(shards, split, verify=True)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = {name: info.get("num_tokens") for name, info in manifest.get("shards", {}).items()}
    print(f"{Path(args.out)}: vocab {manifest.get('vocab_size')}, tokens {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
