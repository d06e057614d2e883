"""Pretraining data: corpus reading, BPE tokenizer, token shards and a resumable loader.

The pipeline is corpus -> tokenizer -> shards -> loader, and every stage is deterministic, so that two machines
(or a rerun after a crash) train on bit-identical token streams:

- `resolve_data_root` finds the data root (config, else `MHC_DATA_ROOT`, else `../shared/data`).
- `iter_documents` reads WikiExtractor output in both of its formats (`<doc ...>` plain text and `--json` lines),
  gzipped or not, in sorted file order.
- `train_tokenizer` trains a byte-level BPE with the `tokenizers` library; `<|endoftext|>` separates documents.
- `build_shards` tokenizes the corpus into flat `train.bin` / `val.bin` token files plus a `manifest.json` with
  sha256 checksums; `load_shard` memory-maps a shard and refuses one that does not match its manifest.
- `TokenLoader` draws random contiguous windows with a cursor that can be saved and restored, and splits each global
  batch across data-parallel ranks; `val_batches` gives the fixed validation batches.

Everything that writes does so atomically (temporary file + `os.replace`), so an interrupted run never leaves a
half-written tokenizer or a shard that a manifest vouches for.
"""

from .documents import (
    DATA_ROOT_ENV,
    EOT_TOKEN,
    HF_PREFIX,
    DataError,
    iter_documents,
    resolve_data_root,
)
from .loader import TokenLoader, val_batches
from .shards import build_shards, load_shard, read_manifest, token_dtype
from .tokenizer import eot_id, load_tokenizer, tokenizer_sha256, train_tokenizer

__all__ = [
    "DATA_ROOT_ENV",
    "EOT_TOKEN",
    "HF_PREFIX",
    "DataError",
    "TokenLoader",
    "build_shards",
    "eot_id",
    "iter_documents",
    "load_shard",
    "load_tokenizer",
    "read_manifest",
    "resolve_data_root",
    "token_dtype",
    "tokenizer_sha256",
    "train_tokenizer",
    "val_batches",
]
