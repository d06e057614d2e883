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

from __future__ import annotations

import gzip
import hashlib
import html
import itertools
import json
import os
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

EOT_TOKEN = "<|endoftext|>"
"""Special token placed before every document; the model sees it as 'a new document starts here'."""

DATA_ROOT_ENV = "MHC_DATA_ROOT"
CORPUS_SUBDIR = "corpus"
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val")
CORPUS_SUFFIXES = (".gz", ".txt", ".jsonl", "")
"""File suffixes `iter_documents` reads (WikiExtractor writes `wiki_00` with no suffix); other files are ignored."""

_ENCODE_CHUNK_DOCS = 2048  # documents per encode_batch call: large enough to keep all cores busy
_HASH_CHUNK_BYTES = 1 << 22


class DataError(ValueError):
    """Data is missing, unreadable or does not match its recorded checksum; the message names the file."""


# --------------------------------------------------------------------------------------------------------------------
# Data root


def _repo_root() -> Path | None:
    """The nearest directory above this file that holds `pyproject.toml` (None for an installed wheel)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return None


def resolve_data_root(configured: str | os.PathLike[str] | None) -> Path:
    """Return the data root: the configured path, else `$MHC_DATA_ROOT`, else `../shared/data` next to the repo.

    An explicitly configured or environment path must exist: silently falling back to another root would train on
    data the user did not ask for. Raises `DataError` listing every candidate that was tried.
    """
    tried: list[str] = []
    if configured:
        path = Path(configured).expanduser()
        if path.is_dir():
            return path.resolve()
        raise DataError(f"configured data_root {str(path)!r} is not a directory")
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        path = Path(env).expanduser()
        if path.is_dir():
            return path.resolve()
        raise DataError(f"${DATA_ROOT_ENV}={env!r} is not a directory")
    tried.append("config data_root (not set)")
    tried.append(f"${DATA_ROOT_ENV} (not set)")
    repo = _repo_root()
    if repo is not None:
        default = repo.parent / "shared" / "data"
        if default.is_dir():
            return default.resolve()
        tried.append(f"{default} (does not exist)")
    else:
        tried.append("../shared/data (no repository root with pyproject.toml above models/data.py)")
    raise DataError("no data root found; tried: " + "; ".join(tried) + ". Set data_root or $" + DATA_ROOT_ENV + ".")


# --------------------------------------------------------------------------------------------------------------------
# Documents


def _corpus_files(corpus_dir: Path) -> list[Path]:
    """Corpus files under `corpus_dir` (recursively), sorted by relative path so the order is machine-independent."""
    files = [
        p
        for p in corpus_dir.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(corpus_dir).parts)
        and p.suffix in CORPUS_SUFFIXES
    ]
    return sorted(files, key=lambda p: p.relative_to(corpus_dir).as_posix())


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _clean(text: str) -> str:
    # WikiExtractor escapes &, < and > (and quotes in --json mode); undo it so the model sees the original characters.
    return html.unescape(text).strip()


def _docs_from_wikiextractor_text(lines: Iterable[str], path: Path) -> Iterator[str]:
    """Documents of WikiExtractor's plain-text format: `<doc id=.. url=.. title=..>`, title line, body, `</doc>`.

    The title line is kept (it is natural text and introduces the article); a document whose body is empty apart
    from its title is a stub with nothing to learn from and is skipped.
    """
    body: list[str] | None = None
    for lineno, line in enumerate(lines, start=1):
        if line.startswith("<doc ") or line.startswith("<doc>"):
            if body is not None:
                raise DataError(f"{path}:{lineno}: <doc> opened inside another document")
            body = []
        elif line.startswith("</doc>"):
            if body is None:
                raise DataError(f"{path}:{lineno}: </doc> without a matching <doc>")
            nonblank = [ln for ln in body if ln.strip()]
            if len(nonblank) > 1:
                yield _clean("".join(body))
            body = None
        elif body is not None:
            body.append(line)
        elif line.strip():
            raise DataError(f"{path}:{lineno}: text outside a <doc> ... </doc> block")
    if body is not None:
        raise DataError(f"{path}: file ends inside a <doc> block (truncated?)")


def _docs_from_json_lines(lines: Iterable[str], path: Path) -> Iterator[str]:
    """Documents of WikiExtractor's `--json` format: one object per line, the article in its `text` field."""
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{path}:{lineno}: not a JSON object with a 'text' field ({exc})") from exc
        text = _clean(text)
        if text:
            yield text


def _docs_from_file(path: Path) -> Iterator[str]:
    try:
        with _open_text(path) as fh:
            first = ""
            for first in fh:
                if first.strip():
                    break
            lines = itertools.chain([first], fh)
            if first.startswith("<doc"):
                yield from _docs_from_wikiextractor_text(lines, path)
            elif first.lstrip().startswith("{"):
                yield from _docs_from_json_lines(lines, path)
            elif first.strip():
                raise DataError(f"{path}: unrecognised format (expected '<doc ...>' lines or JSON lines)")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        # gzip.BadGzipFile is an OSError; a truncated gzip raises EOFError.
        raise DataError(f"{path}: unreadable or corrupt corpus file ({type(exc).__name__}: {exc})") from exc


HF_PREFIX = "hf://"


def iter_hf_documents(spec: str) -> Iterator[str]:
    """Stream the `text` field of a Hugging Face dataset: `hf://NAME[:CONFIG]` (split `train`, streaming mode).

    For users with hub access (e.g. `hf://HuggingFaceFW/fineweb-edu:sample-10BT`); the offline machines this
    suite is tested on use the local corpus instead. Streaming order is the dataset's own, so shards are
    reproducible as long as the dataset revision is.
    """
    name, _, config = spec[len(HF_PREFIX) :].partition(":")
    try:
        import datasets
    except ImportError:
        raise DataError(f"{spec}: streaming a Hugging Face dataset needs `pip install datasets`") from None
    stream = datasets.load_dataset(name, config or None, split="train", streaming=True)
    for row in stream:
        text = _clean(row.get("text") or "")
        if text:
            yield text


def iter_documents(corpus_dir: str | os.PathLike[str]) -> Iterator[str]:
    """Yield the text of every non-empty document under `corpus_dir`, in sorted file order.

    Both WikiExtractor formats are accepted (detected per file from its first line), gzipped or not. The order is
    fixed so that the tokenizer, the shards and their checksums are reproducible. The directory is checked at call
    time (not at first `next`), so a wrong path fails where it is configured. A `corpus_dir` of the form
    `hf://NAME[:CONFIG]` streams a Hugging Face dataset instead (`iter_hf_documents`).
    """
    if str(corpus_dir).startswith(HF_PREFIX):
        return iter_hf_documents(str(corpus_dir))
    root = Path(corpus_dir)
    if not root.is_dir():
        raise DataError(f"corpus directory {str(root)!r} does not exist")
    files = _corpus_files(root)
    if not files:
        raise DataError(f"corpus directory {str(root)!r} holds no corpus files (suffixes {CORPUS_SUFFIXES})")

    def generate() -> Iterator[str]:
        for path in files:
            yield from _docs_from_file(path)

    return generate()


def _limited(docs: Iterator[str], max_docs: int | None) -> Iterator[str]:
    if max_docs is None:
        return docs
    if max_docs < 1:
        raise ValueError(f"max_docs must be positive or None, got {max_docs}")
    return itertools.islice(docs, max_docs)


def _batched(items: Iterable[str], n: int) -> Iterator[list[str]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


# --------------------------------------------------------------------------------------------------------------------
# Atomic writes and checksums


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same directory, so readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks (shards can be larger than memory is worth spending on them)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


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
    docs = _limited(iter_documents(corpus_dir), max_docs)
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
    _atomic_write_bytes(Path(out_path), tokenizer.to_str().encode("utf-8"))
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


# --------------------------------------------------------------------------------------------------------------------
# Shards


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
    docs = _limited(iter_documents(corpus_dir), max_docs)  # fails here, before touching out_dir, if the corpus is gone
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
            for chunk in _batched(docs, _ENCODE_CHUNK_DOCS):
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
    _atomic_write_bytes(out / MANIFEST_NAME, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
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


# --------------------------------------------------------------------------------------------------------------------
# Loading batches


def _num_windows(num_tokens: int, seq_len: int) -> int:
    """Windows of `seq_len + 1` tokens at stride `seq_len`: each token is a target exactly once per epoch."""
    return max(0, (num_tokens - 1) // seq_len)


def _gather(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> torch.Tensor:
    rows = tokens[starts[:, None] + np.arange(seq_len + 1)]
    return torch.from_numpy(rows.astype(np.int64))


class TokenLoader:
    """Deterministic, resumable batches of contiguous token windows, split across data-parallel ranks.

    Windows: the shard is cut at stride `seq_len` into windows of `seq_len + 1` tokens (inputs plus the shifted
    targets), window `i` starting at token `i * seq_len`; so windows do not overlap except for the one boundary
    token, and every token is a prediction target once per epoch.

    Order: epoch `e` visits the windows in `np.random.default_rng([seed, e]).permutation(num_windows)`; the epochs'
    permutations are concatenated into one endless sequence of window positions. Global batch `b` is positions
    `[b * G, (b + 1) * G)` with `G = batch_size * world_size` (a batch that runs past an epoch's end continues into
    the next epoch), and rank `r` takes the slice `[b * G + r * batch_size, b * G + (r + 1) * batch_size)`. Hence
    2 ranks x B together see exactly the windows of 1 rank x 2B, in the same order, and the global token stream
    depends on the global batch size only.

    Resuming: `cursor` is the number of batches drawn. It is all the state there is (the order is a pure function
    of seed and position), so `load_state_dict(state_dict())` on a fresh loader continues with exactly the batches
    an uninterrupted loader would have drawn. All ranks share the same cursor.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be a flat 1-D array, got shape {tokens.shape}")
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_windows = _num_windows(len(tokens), seq_len)
        if self.num_windows == 0:
            raise DataError(f"{len(tokens)} tokens are too few for one window of seq_len + 1 = {seq_len + 1}")
        self.cursor = 0
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
            self._perm_epoch = epoch
        return self._perm

    def _window_indices(self, first: int, count: int) -> np.ndarray:
        """Window indices at global positions `[first, first + count)` of the endless epoch sequence."""
        out = np.empty(count, dtype=np.int64)
        filled = 0
        while filled < count:
            pos = first + filled
            epoch, offset = divmod(pos, self.num_windows)
            take = min(count - filled, self.num_windows - offset)
            out[filled : filled + take] = self._permutation(epoch)[offset : offset + take]
            filled += take
        return out

    @property
    def epoch(self) -> float:
        """Fraction of passes over the shard made so far (by all ranks together)."""
        return self.cursor * self.batch_size * self.world_size / self.num_windows

    def next_batch(self) -> torch.Tensor:
        """This rank's next batch: int64 tensor `[batch_size, seq_len + 1]` (inputs `[:, :-1]`, targets `[:, 1:]`)."""
        global_batch = self.batch_size * self.world_size
        first = self.cursor * global_batch + self.rank * self.batch_size
        windows = self._window_indices(first, self.batch_size)
        self.cursor += 1
        return _gather(self.tokens, windows * self.seq_len, self.seq_len)

    def state_dict(self) -> dict[str, int]:
        """The cursor plus the settings it is only meaningful with (checked on load)."""
        return {
            "cursor": self.cursor,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "world_size": self.world_size,
            "num_tokens": len(self.tokens),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the cursor; refuses a state saved with other settings, which would silently change the data."""
        for key in ("seed", "batch_size", "seq_len", "world_size", "num_tokens"):
            mine = self.state_dict()[key]
            if key in state and state[key] != mine:
                raise ValueError(f"loader state has {key}={state[key]}, but this loader has {key}={mine}")
        cursor = int(state["cursor"])
        if cursor < 0:
            raise ValueError(f"loader cursor must be non-negative, got {cursor}")
        self.cursor = cursor


def val_batches(tokens: np.ndarray, batch_size: int, seq_len: int, max_batches: int) -> list[torch.Tensor]:
    """Fixed validation batches: the first windows of the shard in order, `batch_size` per batch.

    The same windows every evaluation make validation losses comparable across steps and runs. Windows are cut as
    in `TokenLoader`. Only full batches are returned, except that a shard holding less than one batch gives a single
    smaller batch, so a small validation set is still used rather than silently skipped.
    """
    if batch_size < 1 or seq_len < 1 or max_batches < 1:
        raise ValueError("batch_size, seq_len and max_batches must be positive")
    n = _num_windows(len(tokens), seq_len)
    if n == 0:
        raise DataError(f"{len(tokens)} validation tokens are too few for one window of {seq_len + 1}")
    if n < batch_size:
        return [_gather(tokens, np.arange(n) * seq_len, seq_len)]
    count = min(max_batches, n // batch_size)
    return [_gather(tokens, (np.arange(batch_size) + b * batch_size) * seq_len, seq_len) for b in range(count)]
