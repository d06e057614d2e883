from __future__ import annotations

import os
from pathlib import Path

# Triton's interpreter runs the fused kernels on the CPU; it must be chosen before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from corpus import resolve_data_root  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


try:
    CORPUS_ROOT = resolve_data_root(None)
except Exception:  # noqa: BLE001 - no data root on this machine
    CORPUS_ROOT = None
needs_corpus = pytest.mark.skipif(CORPUS_ROOT is None, reason="no data root (../shared/data or MHC_DATA_ROOT)")


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    """Tokenizer + shards from the first 200 corpus documents, built once by the training code itself."""
    if CORPUS_ROOT is None:
        pytest.skip("no corpus")
    out = tmp_path_factory.mktemp("shards")
    from corpus import build_shards, train_tokenizer

    corpus = CORPUS_ROOT / "corpus"
    tokenizer = train_tokenizer(corpus, 512, out / "tokenizer.json", max_docs=200)
    build_shards(corpus, tokenizer, out, max_docs=200)
    return out
