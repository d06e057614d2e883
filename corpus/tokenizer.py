"""The byte-level BPE tokenizer: training, loading, and the document separator."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from common.files import atomic_write_bytes

from .documents import EOT_TOKEN, DataError, iter_documents, limited

# --------------------------------------------------------------------------------------------------------------------
# Tokenizer


def eot_id(tokenizer: Tokenizer) -> int:
    """Id of the `<|endoftext|>` document separator."""
    token_id = tokenizer.token_to_id(EOT_TOKEN)
    if token_id is None:
        raise DataError(f"tokenizer has no {EOT_TOKEN} token")
    return token_id


def tokenizer_sha256(tokenizer: Tokenizer) -> str:
    """sha256 of the tokenizer's JSON; equals the sha256 of the file `train_tokenizer` saved."""
    return hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()


def train_tokenizer(
    corpus_dir: str | os.PathLike[str],
    vocab_size: int,
    out_path: str | os.PathLike[str],
    max_docs: int | None = None,
) -> Tokenizer:
    """Train a byte-level BPE on the corpus (first `max_docs` documents) and save it atomically as JSON.

    Byte-level (GPT-2 style) means every string is encodable, with no unknown token, and decoding is lossless.
    `<|endoftext|>` is the only special token (id 0). The trainer sees documents in `iter_documents` order and the
    `tokenizers` BPE trainer breaks ties deterministically, so the same input gives the same JSON byte for byte.
    """
    if vocab_size < 257:
        raise ValueError(f"vocab_size must be at least 257 (256 bytes + {EOT_TOKEN}), got {vocab_size}")
    docs = limited(iter_documents(corpus_dir), max_docs)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(
        tqdm(docs, desc="tokenizer: reading documents", unit="doc", mininterval=2.0), trainer=trainer
    )
    atomic_write_bytes(Path(out_path), tokenizer.to_str().encode("utf-8"))
    return tokenizer


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Load a tokenizer saved by `train_tokenizer`, with a `DataError` naming the file when it is missing or bad."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer file {str(path)!r} does not exist")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises a plain Exception for malformed JSON
        raise DataError(f"{path}: not a valid tokenizer JSON ({exc})") from exc
