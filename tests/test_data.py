"""Tests for the data pipeline: corpus parsing, tokenizer, shards with checksums, the resumable loader."""

from __future__ import annotations

import gzip
import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from common.files import sha256_file
from corpus import (
    EOT_TOKEN,
    DataError,
    TokenLoader,
    build_shards,
    iter_documents,
    load_shard,
    load_tokenizer,
    resolve_data_root,
    train_tokenizer,
    val_batches,
)
from corpus import documents as data

WORDS = (
    "the river city history council station railway north south school music album team season league "
    "war army battle island church village population born died american british french german film "
    "released published government election party president minister museum bridge road"
).split()


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(5, 14))]
    return " ".join(words).capitalize() + rng.choice([".", ".", "!", "?"])


def _article(rng: random.Random) -> str:
    return "\n".join(" ".join(_sentence(rng) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3)))


def _write_gz(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(text)


def _wiki_block(doc_id: int, title: str, body: str) -> str:
    return f'<doc id="{doc_id}" url="?curid={doc_id}" title="{title}">\n{title}\n\n{body}\n</doc>\n'


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, list[str]]:
    """A tiny corpus in both WikiExtractor formats, with the documents `iter_documents` should yield, in order."""
    rng = random.Random(0)
    root = tmp_path / "corpus"
    expected: list[str] = []
    for f in range(2):
        blocks = []
        for i in range(20):
            title = f"Article {f} {i}"
            body = _article(rng)
            blocks.append(_wiki_block(100 * f + i, title, body))
            expected.append(f"{title}\n\n{body}")
        _write_gz(root / "enwiki_wikiextractor" / f"wiki_{f:02d}.gz", "".join(blocks))
    for f in range(2):
        lines = []
        for i in range(15):
            text = _article(rng)
            lines.append(json.dumps({"id": str(i), "revid": "1", "url": "u", "title": f"News {i}", "text": text}))
            expected.append(text)
        _write_gz(root / "enwikinews_wikiextractor" / f"wiki_{f:02d}.gz", "\n".join(lines) + "\n")
    return root, expected


@pytest.fixture
def tokenizer_path(corpus: tuple[Path, list[str]], tmp_path: Path) -> Path:
    path = tmp_path / "tok" / "tokenizer.json"
    train_tokenizer(corpus[0], vocab_size=320, out_path=path)
    return path


# --- data root -----------------------------------------------------------------------------------------------------


def test_resolve_data_root_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    configured, env = tmp_path / "configured", tmp_path / "env"
    configured.mkdir()
    env.mkdir()
    monkeypatch.setenv("MHC_DATA_ROOT", str(env))
    assert resolve_data_root(str(configured)) == configured.resolve()
    assert resolve_data_root(None) == env.resolve()
    with pytest.raises(DataError, match="configured data_root"):
        resolve_data_root(str(tmp_path / "nope"))
    monkeypatch.setenv("MHC_DATA_ROOT", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="MHC_DATA_ROOT"):
        resolve_data_root(None)


def test_resolve_data_root_default_next_to_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "main"
    repo.mkdir()
    monkeypatch.delenv("MHC_DATA_ROOT", raising=False)
    monkeypatch.setattr(data, "repo_root", lambda: repo)
    with pytest.raises(DataError, match=r"tried: .*MHC_DATA_ROOT.*shared/data \(does not exist\)"):
        resolve_data_root(None)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert resolve_data_root(None) == (tmp_path / "shared" / "data").resolve()


# --- documents -----------------------------------------------------------------------------------------------------


def test_iter_documents_both_formats(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    wiki = (
        _wiki_block(1, "Stub", "")  # title only: skipped
        + _wiki_block(2, "Fish &amp; Chips", "A dish &lt;b&gt; with two lines.\nSecond line.")
    )
    _write_gz(root / "a_wiki" / "wiki_00.gz", wiki)
    news = [{"text": ""}, {"text": "  \n "}, {"text": "News &quot;story&quot; here.\nMore."}]
    _write_gz(root / "b_news" / "wiki_00.gz", "\n".join(json.dumps(d) for d in news) + "\n")
    (root / "b_news" / "wiki_01").write_text(json.dumps({"text": "Plain file."}) + "\n")  # uncompressed
    (root / "b_news" / "NOTES.md").write_text("not corpus")  # ignored suffix
    docs = list(iter_documents(root))
    assert docs == [
        "Fish & Chips\n\nA dish <b> with two lines.\nSecond line.",
        'News "story" here.\nMore.',
        "Plain file.",
    ]


def test_iter_documents_order_is_sorted(corpus: tuple[Path, list[str]]) -> None:
    root, expected = corpus
    assert list(iter_documents(root)) == expected


def test_missing_corpus_dir_is_clear(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_corpus"
    with pytest.raises(DataError, match="corpus directory .*no_such_corpus.* does not exist"):
        iter_documents(missing)
    with pytest.raises(DataError, match="no_such_corpus"):
        train_tokenizer(missing, 300, tmp_path / "tok.json")


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_gzip_names_file(corpus: tuple[Path, list[str]], kind: str) -> None:
    root, _ = corpus
    bad = root / "enwiki_wikiextractor" / "wiki_01.gz"
    raw = bad.read_bytes()
    bad.write_bytes(b"definitely not gzip" if kind == "garbage" else raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"wiki_01\.gz"):
        list(iter_documents(root))


# --- tokenizer -----------------------------------------------------------------------------------------------------


def test_tokenizer_deterministic_and_round_trip(corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, docs = corpus
    a, b = tmp_path / "a" / "tok.json", tmp_path / "b" / "tok.json"
    tok = train_tokenizer(root, 320, a)
    train_tokenizer(root, 320, b)
    assert a.read_bytes() == b.read_bytes()
    assert [p.name for p in a.parent.iterdir()] == ["tok.json"]  # no temporary file left behind
    assert tok.get_vocab_size() == 320
    assert tok.token_to_id(EOT_TOKEN) == 0
    loaded = load_tokenizer(a)
    for text in [docs[0], docs[-1], "Ünïcode ✓ — tabs\tand  spaces\n", "never seen: qzxj 12345"]:
        ids = loaded.encode(text).ids
        assert loaded.decode(ids) == text
    assert len(loaded.encode(docs[0]).ids) < 0.6 * len(docs[0].encode())  # merges were learned


def test_load_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="tok.json.*does not exist"):
        load_tokenizer(tmp_path / "tok.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        load_tokenizer(tmp_path / "bad.json")


# --- shards --------------------------------------------------------------------------------------------------------


def test_build_shards_manifest_and_contents(
    corpus: tuple[Path, list[str]], tokenizer_path: Path, tmp_path: Path
) -> None:
    root, docs = corpus
    out = tmp_path / "shards"
    manifest = build_shards(root, tokenizer_path, out, val_fraction=0.3)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "train.bin", "val.bin"]
    assert manifest["tokenizer_sha256"] == sha256_file(tokenizer_path)
    assert manifest["vocab_size"] == 320
    assert manifest["num_docs"]["train"] + manifest["num_docs"]["val"] == len(docs)
    assert manifest["num_docs"]["val"] > 0
    tok = load_tokenizer(tokenizer_path)
    recovered: list[str] = []
    for split in ("train", "val"):
        entry = manifest["shards"][split]
        assert entry["file"] == f"{split}.bin" and entry["dtype"] == "uint16"
        assert entry["sha256"] == sha256_file(out / entry["file"])
        tokens = load_shard(out, split)
        assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16 and len(tokens) == entry["num_tokens"]
        assert tokens[0] == 0  # every document is preceded by <|endoftext|>
        ids = tokens.tolist()
        starts = [i for i, t in enumerate(ids) if t == 0] + [len(ids)]
        recovered += [tok.decode(ids[s + 1 : e]) for s, e in itertools.pairwise(starts)]
    assert sorted(recovered) == sorted(docs)

    again = build_shards(root, tokenizer_path, tmp_path / "shards2", val_fraction=0.3)
    assert again == manifest  # deterministic: same tokens, same checksums


def test_corrupted_shard_raises_with_file_and_checksum(
    corpus: tuple[Path, list[str]], tokenizer_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "shards"
    manifest = build_shards(corpus[0], tokenizer_path, out, val_fraction=0.3)
    path = out / "train.bin"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    expected = manifest["shards"]["train"]["sha256"]
    with pytest.raises(DataError, match=rf"train\.bin: sha256 mismatch: expected {expected}, actual [0-9a-f]{{64}}"):
        load_shard(out, "train")
    load_shard(out, "train", verify=False)  # size still matches: only the checksum can tell

    path.write_bytes(bytes(raw[:-2]))
    with pytest.raises(DataError, match=rf"train\.bin: size .* expected sha256 {expected}"):
        load_shard(out, "train", verify=False)
    path.unlink()
    with pytest.raises(DataError, match=r"train\.bin does not exist"):
        load_shard(out, "train")
    with pytest.raises(DataError, match="no 'test' shard"):
        load_shard(out, "test")


def test_failed_build_keeps_previous_build(
    corpus: tuple[Path, list[str]], tokenizer_path: Path, tmp_path: Path
) -> None:
    root, _ = corpus
    out = tmp_path / "shards"
    build_shards(root, tokenizer_path, out, val_fraction=0.3)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (root / "enwikinews_wikiextractor" / "wiki_01.gz").write_bytes(b"corrupt")
    with pytest.raises(DataError, match=r"wiki_01\.gz"):
        build_shards(root, tokenizer_path, out, val_fraction=0.3)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched, no temporary files left
    load_shard(out, "train")

    with pytest.raises(DataError, match=r"wiki_01\.gz"):
        build_shards(root, tokenizer_path, tmp_path / "fresh", val_fraction=0.3)
    with pytest.raises(DataError, match="manifest.json does not exist"):
        load_shard(tmp_path / "fresh", "train")


# --- loader --------------------------------------------------------------------------------------------------------


def _tokens(n: int = 1000) -> np.ndarray:
    return (np.arange(n) * 7 % 5000).astype(np.uint16)


def test_loader_windows_are_contiguous_and_cover_an_epoch() -> None:
    tokens = _tokens(8 * 40 + 1)  # exactly 40 windows of seq_len 8
    loader = TokenLoader(tokens, batch_size=5, seq_len=8, seed=3)
    assert loader.num_windows == 40
    batches = [loader.next_batch() for _ in range(8)]  # one epoch
    assert all(b.shape == (5, 9) and b.dtype == torch.int64 for b in batches)
    firsts = sorted(int(np.flatnonzero(tokens == row[0].item())[0]) for b in batches for row in b)
    assert firsts == [8 * i for i in range(40)]  # every window once
    for b in batches:
        for row in b:
            s = int(np.flatnonzero(tokens == row[0].item())[0])
            assert row.tolist() == tokens[s : s + 9].tolist()
    other_seed = TokenLoader(tokens, batch_size=5, seq_len=8, seed=4).next_batch()
    assert not torch.equal(other_seed, batches[0])


def test_loader_resume_is_exact() -> None:
    tokens = _tokens()
    a = TokenLoader(tokens, batch_size=4, seq_len=16, seed=7)
    for _ in range(5):
        a.next_batch()
    state = a.state_dict()
    assert state["cursor"] == 5
    expected = [a.next_batch() for _ in range(3)]
    b = TokenLoader(tokens, batch_size=4, seq_len=16, seed=7)
    b.load_state_dict(json.loads(json.dumps(state)))  # survives a JSON round trip (checkpoint sidecar)
    assert all(torch.equal(x, b.next_batch()) for x in expected)
    assert b.cursor == 8


def test_loader_state_rejects_other_settings() -> None:
    state = TokenLoader(_tokens(), batch_size=4, seq_len=16, seed=7).state_dict()
    with pytest.raises(ValueError, match="batch_size=4"):
        TokenLoader(_tokens(), batch_size=8, seq_len=16, seed=7).load_state_dict(state)
    with pytest.raises(ValueError, match="seed=7"):
        TokenLoader(_tokens(), batch_size=4, seq_len=16, seed=8).load_state_dict(state)


def test_two_ranks_see_the_same_windows_as_one_rank() -> None:
    tokens = _tokens()  # 62 windows of 16: 12 global batches of 8 cross several epoch boundaries
    single = TokenLoader(tokens, batch_size=8, seq_len=16, seed=1)
    ranks = [TokenLoader(tokens, batch_size=4, seq_len=16, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(20):
        joined = torch.cat([r.next_batch() for r in ranks])
        assert torch.equal(joined, single.next_batch())


def test_loader_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rank"):
        TokenLoader(_tokens(), 4, 16, seed=0, rank=2, world_size=2)
    with pytest.raises(DataError, match="too few"):
        TokenLoader(_tokens(10), 4, 16, seed=0)


def test_val_batches_are_the_first_windows_in_order() -> None:
    tokens = _tokens()
    batches = val_batches(tokens, batch_size=3, seq_len=10, max_batches=4)
    assert len(batches) == 4 and all(b.shape == (3, 11) for b in batches)
    flat = torch.cat(batches)
    for i, row in enumerate(flat):
        assert row.tolist() == tokens[10 * i : 10 * i + 11].tolist()
    assert all(torch.equal(x, y) for x, y in zip(batches, val_batches(tokens, 3, 10, 4), strict=True))
    assert len(val_batches(tokens, batch_size=50, seq_len=10, max_batches=100)) == 1  # 99 windows: one full batch
    small = val_batches(_tokens(25), batch_size=8, seq_len=10, max_batches=2)
    assert len(small) == 1 and small[0].shape == (2, 11)  # fewer windows than a batch: one short batch


# --- the shared corpus ---------------------------------------------------------------------------------------------


def test_real_corpus_sample(tmp_path: Path) -> None:
    """Two real files (one per format), a few hundred documents, through the whole pipeline."""
    try:
        real = resolve_data_root(None) / "corpus"
    except DataError:
        pytest.skip("no data root")
    files = [real / "enwiki_wikiextractor" / "wiki_00.gz", real / "enwikinews_wikiextractor" / "wiki_00.gz"]
    if not all(f.is_file() for f in files):
        pytest.skip("shared corpus not present")
    sample = tmp_path / "corpus"
    for f in files:
        (sample / f.parent.name).mkdir(parents=True)
        (sample / f.parent.name / f.name).symlink_to(f)  # link, not copy
    docs = list(iter_documents(sample))
    assert len(docs) > 1000
    assert not any(d.startswith("<doc") or d.endswith("</doc>") for d in docs)
    tok = train_tokenizer(sample, 1024, tmp_path / "tok.json", max_docs=300)
    manifest = build_shards(sample, tok, tmp_path / "shards", val_fraction=0.05, max_docs=300)
    assert manifest["num_docs"]["train"] + manifest["num_docs"]["val"] == 300
    train = load_shard(tmp_path / "shards", "train")
    assert int(train.max()) < 1024
    assert "<doc" not in tok.decode(train[:2000].tolist())


def test_hf_dataset_streaming_path(tmp_path, monkeypatch):
    """The `hf://` source (for users with hub access) streams the `text` field; tested with a stand-in module."""
    import sys
    import types

    from corpus import documents as data

    calls = []

    def load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return iter([{"text": "first document"}, {"text": ""}, {"text": "second &amp; last"}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    docs = list(data.iter_documents("hf://org/corpus:sample"))
    assert docs == ["first document", "second & last"]
    assert calls == [("org/corpus", "sample", "train", True)]
