"""Token shards: the corpus tokenized into flat train/val files with a checksummed manifest."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from common.files import atomic_write_bytes, sha256_file

from .documents import DataError, batched, iter_documents, limited
from .tokenizer import eot_id, load_tokenizer, tokenizer_sha256

# --------------------------------------------------------------------------------------------------------------------
# Shards

MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val")
_ENCODE_CHUNK_DOCS = 2048  # documents per encode_batch call: large enough to keep all cores busy


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every token id: uint16 halves disk and page-cache use below 65,536."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _split_of(text: str, val_fraction: float) -> str:
    """Assign a document to train or val by a hash of its text.

    Hashing the content (not the position) keeps a document's split stable when files are added or `max_docs`
    changes, and sends exact duplicates to the same split, so they cannot leak from train into val.
    """
    if val_fraction <= 0.0:
        return "train"
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")
    return "val" if h / 2**64 < val_fraction else "train"


def build_shards(
    corpus_dir: str | os.PathLike[str],
    tokenizer: Tokenizer | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    val_fraction: float = 0.01,
    max_docs: int | None = None,
) -> dict[str, Any]:
    """Tokenize the corpus into `train.bin` / `val.bin` and write `manifest.json`; return the manifest.

    Each shard is a flat array of token ids (dtype from `token_dtype`) in which every document is preceded by the
    `<|endoftext|>` id, so documents are separated and each one starts after a "new document" marker. Documents
    keep corpus order within a split. The manifest records, per shard, its file name, dtype, number of tokens and
    sha256, plus the tokenizer's sha256 and vocabulary size, so a later run can prove it reads the same data.

    Atomicity: shards are written to temporary files; then any old manifest is removed, the shards are moved into
    place, and the new manifest is written last. A crash at any point leaves either the old complete build or a
    directory without a manifest, which `load_shard` rejects.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = load_tokenizer(tokenizer)
    docs = limited(iter_documents(corpus_dir), max_docs)  # fails here, before touching out_dir, if the corpus is gone
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab_size)
    eot = eot_id(tokenizer)
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # no offsets: faster, same ids

    tmp_paths = {split: out / f".{split}.bin.tmp" for split in SPLITS}
    digests = {split: hashlib.sha256() for split in SPLITS}
    num_tokens = dict.fromkeys(SPLITS, 0)
    num_docs = dict.fromkeys(SPLITS, 0)
    files = {split: open(tmp_paths[split], "wb") for split in SPLITS}
    try:
        with tqdm(desc="shards: tokenizing", unit="doc", mininterval=2.0) as bar:
            for chunk in batched(docs, _ENCODE_CHUNK_DOCS):
                encodings = encode(chunk, add_special_tokens=False)
                pieces: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
                for text, enc in zip(chunk, encodings, strict=True):
                    split = _split_of(text, val_fraction)
                    pieces[split].append(np.array([eot, *enc.ids], dtype=dtype))
                    num_docs[split] += 1
                for split in SPLITS:
                    if pieces[split]:
                        data = np.concatenate(pieces[split]).tobytes()
                        files[split].write(data)
                        digests[split].update(data)
                        num_tokens[split] += len(data) // dtype.itemsize
                bar.update(len(chunk))
        for fh in files.values():
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        for split in SPLITS:
            files[split].close()
            tmp_paths[split].unlink(missing_ok=True)
        raise
    for fh in files.values():
        fh.close()

    manifest: dict[str, Any] = {
        "format": "mhc-token-shards/1",
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
        "vocab_size": vocab_size,
        "eot_id": eot,
        "val_fraction": val_fraction,
        "max_docs": max_docs,
        "num_docs": num_docs,
        "shards": {
            split: {
                "file": f"{split}.bin",
                "dtype": dtype.name,
                "num_tokens": num_tokens[split],
                "sha256": digests[split].hexdigest(),
            }
            for split in SPLITS
        },
    }
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for split in SPLITS:
        os.replace(tmp_paths[split], out / f"{split}.bin")
    atomic_write_bytes(out / MANIFEST_NAME, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest


def read_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The shard manifest of `out_dir`; a missing or unreadable manifest means the build never completed."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{path} does not exist (shards not built, or the build was interrupted)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable manifest ({exc})") from exc


def load_shard(out_dir: str | os.PathLike[str], split: str, verify: bool = True) -> np.memmap:
    """Memory-map one shard after checking it against the manifest.

    The size is always checked (cheap); with `verify` the sha256 is recomputed too (a few seconds per GB), so a
    corrupted or swapped shard fails loudly with the file name and both checksums instead of training on it.
    """
    manifest = read_manifest(out_dir)
    shards = manifest.get("shards", {})
    if split not in shards:
        raise DataError(f"{Path(out_dir) / MANIFEST_NAME} has no {split!r} shard (has {sorted(shards)})")
    entry = shards[split]
    path = Path(out_dir) / entry["file"]
    dtype = np.dtype(entry["dtype"])
    if not path.is_file():
        raise DataError(f"{path} does not exist (expected sha256 {entry['sha256']})")
    expected_size = entry["num_tokens"] * dtype.itemsize
    actual_size = path.stat().st_size
    if actual_size != expected_size:
        raise DataError(
            f"{path}: size {actual_size} bytes, manifest expects {expected_size} "
            f"({entry['num_tokens']} {dtype.name} tokens); expected sha256 {entry['sha256']}"
        )
    if verify:
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise DataError(f"{path}: sha256 mismatch: expected {entry['sha256']}, actual {actual}")
    if entry["num_tokens"] == 0:
        raise DataError(f"{path} is empty (0 tokens): corpus too small for this split (val_fraction?)")
    return np.memmap(path, dtype=dtype, mode="r")
