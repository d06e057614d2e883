"""The data root and the corpus documents (WikiExtractor output, plain or JSON lines, gzipped or not)."""

from __future__ import annotations

import gzip
import html
import itertools
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

EOT_TOKEN = "<|endoftext|>"
"""Special token placed before every document; the model sees it as 'a new document starts here'."""

DATA_ROOT_ENV = "MHC_DATA_ROOT"
CORPUS_SUBDIR = "corpus"
CORPUS_SUFFIXES = (".gz", ".txt", ".jsonl", "")
"""File suffixes `iter_documents` reads (WikiExtractor writes `wiki_00` with no suffix); other files are ignored."""


class DataError(ValueError):
    """Data is missing, unreadable or does not match its recorded checksum; the message names the file."""


# --------------------------------------------------------------------------------------------------------------------
# Data root


def repo_root() -> Path | None:
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
    repo = repo_root()
    if repo is not None:
        default = repo.parent / "shared" / "data"
        if default.is_dir():
            return default.resolve()
        tried.append(f"{default} (does not exist)")
    else:
        tried.append("../shared/data (no repository root with pyproject.toml above corpus/documents.py)")
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


def limited(docs: Iterator[str], max_docs: int | None) -> Iterator[str]:
    if max_docs is None:
        return docs
    if max_docs < 1:
        raise ValueError(f"max_docs must be positive or None, got {max_docs}")
    return itertools.islice(docs, max_docs)


def batched(items: Iterable[str], n: int) -> Iterator[list[str]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk
