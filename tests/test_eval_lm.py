"""The lm-eval adapter (`eval/lm.py`): scores equal the model's own logits, batching and the KV cache change
nothing, stop strings truncate at their first occurrence, and `python -m eval` works like `lm-eval`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from corpus import load_tokenizer, tokenizer_sha256  # noqa: E402
from eval.lm import MhcLM  # noqa: E402
from models.config import to_dict  # noqa: E402
from models.transformer import Transformer  # noqa: E402
from tests.conftest import needs_corpus  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402
from training.checkpoint import save_model  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checkpoint(shards, tmp_path_factory) -> Path:
    """A tiny trained-from-nothing mHC model saved the way training saves it (model/ + sidecar)."""
    torch.manual_seed(0)
    cfg = tiny_config("mhc")
    model = Transformer(cfg)
    tok = load_tokenizer(shards / "tokenizer.json")
    run = tmp_path_factory.mktemp("run")
    sidecar = {
        "model_config": to_dict(cfg),
        "config": {"arch": "mhc", "tracking": {"enabled": False}},
        "data": {"shards": str(shards), "tokenizer_sha256": tokenizer_sha256(tok)},
    }
    save_model(run / "model", model.state_dict(), sidecar)
    return run


@pytest.fixture(scope="module")
def lm(checkpoint) -> MhcLM:
    return MhcLM(checkpoint=str(checkpoint), batch_size=4)


def _ll_requests(pairs):
    return [Instance("loglikelihood", {}, (ctx, cont), i) for i, (ctx, cont) in enumerate(pairs)]


PAIRS = [
    ("The capital of France is", " Paris"),
    ("Question: what is 2 + 2?\nAnswer:", " 4"),
    ("A", " much longer continuation with several tokens in it"),
    ("", "An empty context uses the prefix token."),
    ("Short", " text"),
]


@needs_corpus
def test_loglikelihood_equals_direct_computation(lm):
    got = lm.loglikelihood(_ll_requests(PAIRS))
    for (ctx, cont), (score, greedy) in zip(PAIRS, got, strict=True):
        ctx_ids = lm.tok_encode(ctx) if ctx else [lm.prefix_token_id]
        cont_ids = lm.tok_encode(cont)
        ids = torch.tensor([ctx_ids + cont_ids])
        with torch.no_grad():
            logp = F.log_softmax(lm.model(ids[:, :-1]).float(), -1)[0]
        targets = ids[0, len(ctx_ids) :]
        expected = logp[len(ctx_ids) - 1 :].gather(-1, targets[:, None]).sum().item()
        assert score == pytest.approx(expected, abs=1e-4)
        assert greedy == bool((logp[len(ctx_ids) - 1 :].argmax(-1) == targets).all())


@needs_corpus
def test_batched_equals_unbatched(checkpoint, lm):
    one = MhcLM(checkpoint=str(checkpoint), batch_size=1)
    a = [s for s, _ in lm.loglikelihood(_ll_requests(PAIRS))]
    b = [s for s, _ in one.loglikelihood(_ll_requests(PAIRS))]
    assert a == pytest.approx(b, abs=1e-4)
    kwargs = {"until": ["\n\n"], "max_gen_toks": 8}
    gen = [Instance("generate_until", {}, (ctx, kwargs), i) for i, (ctx, _) in enumerate(PAIRS)]
    assert lm.generate_until(gen) == one.generate_until(gen)


@needs_corpus
def test_kv_cached_greedy_equals_uncached_and_unpadded(lm):
    contexts = [lm.tok_encode(c) for c in ("Once upon a time", "The results of the experiment were", "In 1999")]
    cached = lm.greedy(contexts, 12, until=[])
    uncached = lm.greedy(contexts, 12, until=[], use_cache=False)
    assert cached == uncached
    alone = [lm.greedy([c], 12, until=[])[0] for c in contexts]  # no padding at all
    assert cached == alone
    assert all(len(lm.tok_encode(t)) > 0 for t in cached)


@needs_corpus
def test_stop_strings_truncate_at_first_occurrence(lm, monkeypatch):
    text = "alpha. beta. gamma"
    ids = lm.tok_encode(text) + [lm.eot_token_id]
    calls = iter(ids)

    def fake_forward(tokens, start_pos=0, cache=None, key_valid=None):
        nxt = next(calls)
        logits = torch.full((tokens.shape[0], tokens.shape[1], lm.model.cfg.vocab_size), -1e9)
        logits[:, -1, nxt] = 0.0
        return logits

    monkeypatch.setattr(lm.model, "forward", fake_forward)
    req = Instance("generate_until", {}, ("ctx", {"until": [". ", "gamma"], "max_gen_toks": 50}), 0)
    assert lm.generate_until([req]) == ["alpha"]


@needs_corpus
def test_python_m_eval_works_like_lm_eval(checkpoint, tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "eval", "run", "--model", "mhc", "--model_args", f"checkpoint={checkpoint}"]
    cmd += ["--tasks", "hellaswag", "--limit", "5", "--output_path", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list(out.rglob("results_*.json"))
    assert len(files) == 1
    results = json.loads(files[0].read_text())
    assert results["n-shot"]["hellaswag"] == 0  # the plain task keeps lm-eval's own default here
    assert "acc,none" in results["results"]["hellaswag"]
    assert results["n-samples"]["hellaswag"]["effective"] == 5


@needs_corpus
@pytest.mark.slow
def test_paper_suite_offline_on_a_tiny_checkpoint(shards, tmp_path):
    """All eight benchmarks through `python -m eval.run` on our model, local data, --limit 1 (CI smoke)."""
    torch.manual_seed(0)
    cfg = tiny_config("mhc")
    cfg = type(cfg)(**{**cfg.__dict__, "max_seq_len": 1024})  # room for the few-shot prompts
    tok = load_tokenizer(shards / "tokenizer.json")
    run = tmp_path / "run"
    sidecar = {
        "model_config": to_dict(cfg),
        "config": {"arch": "mhc", "tracking": {"enabled": False}},
        "data": {"shards": str(shards), "tokenizer_sha256": tokenizer_sha256(tok)},
    }
    save_model(run / "model", Transformer(cfg).state_dict(), sidecar)
    out = tmp_path / "paper.json"
    cmd = [sys.executable, "-m", "eval.run", "--checkpoint", str(run), "--suite", "paper", "--limit", "1"]
    cmd += ["--out", str(out), "--batch-size", "16"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    shots = results["n-shot"]
    expected = {"drop": 3, "gsm8k_cot": 8, "hellaswag": 10, "piqa": 0, "triviaqa": 5}
    assert {k: shots[k] for k in expected} == expected
    assert {v for k, v in shots.items() if k.startswith("bbh_cot_fewshot_")} == {3}
    assert {v for k, v in shots.items() if k.startswith("minerva_math_")} == {4}
    assert {v for k, v in shots.items() if k.startswith("mmlu_") and k in results["configs"]} == {5}
    assert len([k for k in shots if k.startswith("bbh_cot_fewshot_")]) == 27
    for key in ("configs", "versions", "n-shot", "mhc_substitutions"):
        assert results[key], key
    assert {"drop", "hellaswag", "triviaqa"} <= set(results["mhc_substitutions"])


def test_eval_results_go_to_mlflow_as_a_child_of_the_training_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from eval.run import log_to_mlflow
    from training.tracking import Tracker, init_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    init_store(uri, "exp")
    parent = Tracker(uri, "exp", run_name="train-run", tags={"arch": "mhc"})
    parent.finish("completed")
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "mlflow_run_id").write_text(parent.run_id + "\n")
    tracking = {"enabled": True, "tracking_uri": uri, "experiment": "exp"}
    (run / "config.json").write_text(json.dumps({"config": {"tracking": tracking}}))
    out = tmp_path / "results.json"
    results = {"results": {"piqa": {"alias": "piqa", "acc,none": 0.5, "acc_stderr,none": 0.1}}}
    out.write_text(json.dumps(results))
    log_to_mlflow(run / "model", results, out)
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("exp").experiment_id
    children = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}'")
    assert len(children) == 1
    assert children[0].data.metrics["piqa/acc__none"] == 0.5
    assert "piqa/acc_stderr__none" not in children[0].data.metrics
