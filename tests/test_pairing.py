"""Paired seeds: for one seed every variant starts from the same shared weights and sees the same batches.

The shared weights (embedding, attention, FFN, norms, head) come from a generator of their own and the connection
parameters from another, so a variant's extra parameters cannot shift them (mHC's phi used to be drawn in its
constructor and moved every later weight of the baseline/mHC pair).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from analysis.plan import all_variants
from tests.conftest import needs_corpus
from training.config import load_run_config
from training.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent


def tier_variants() -> dict[str, dict]:
    """Every variant of the default tier (main, controls, init ablation, LR sweep, Table 1 rows) and the smoke tier."""
    out = {}
    for name in ("config.yaml", "smoke.yaml"):
        config = yaml.safe_load((REPO / "config" / name).read_text())
        out.update(all_variants(config))
    return out


def trainer(shards: Path, out: Path, variant: dict, seed: int) -> Trainer:
    overrides = ["scale=tiny", f"arch={variant['arch']}", f"seed={seed}", f"data.shards_dir={shards}"]
    overrides += [f"model.connection.{k}={v}" for k, v in (variant.get("connection") or {}).items()]
    overrides += [f"train.{k}={v}" for k, v in (variant.get("train") or {}).items()]
    overrides += ["train.batch_size=4", "train.seq_len=32", "run.progress=false"]
    return Trainer(load_run_config(None, overrides), out)


@needs_corpus
@pytest.mark.parametrize("seed", [0, 3])
def test_every_variant_shares_the_core_weights_and_batches_of_its_seed(shards, tmp_path, seed):
    variants = tier_variants()
    assert {"baseline", "hc", "mhc"} <= set(variants) and len(variants) >= 6
    reference = trainer(shards, tmp_path / "ref", variants["baseline"], seed)
    core = {k: v.detach().clone() for k, v in reference.model.core_parameters().items()}
    batches = [reference.loader.next_batch() for _ in range(3)]
    for name, variant in variants.items():
        other = trainer(shards, tmp_path / name, variant, seed)
        theirs = other.model.core_parameters()
        assert set(theirs) == set(core), name
        for key, value in core.items():
            assert torch.equal(theirs[key], value), f"{name}: {key} differs from the baseline's at seed {seed}"
        for batch in batches:
            assert torch.equal(other.loader.next_batch(), batch), name


@needs_corpus
def test_another_seed_changes_the_core_weights(shards, tmp_path):
    """The comparison above can fail: a different seed gives different shared weights."""
    variants = tier_variants()
    a = trainer(shards, tmp_path / "a", variants["mhc"], 0).model.core_parameters()
    b = trainer(shards, tmp_path / "b", variants["mhc"], 1).model.core_parameters()
    assert not torch.equal(a["embed.weight"], b["embed.weight"])


def test_connection_parameters_come_from_their_own_generator():
    """Drawing connection parameters (any amount) leaves the shared weights untouched, and the same seed gives the
    same connection parameters for the same variant."""
    from models.registry import model_config
    from models.transformer import Transformer

    torch.manual_seed(7)
    plain = Transformer(model_config("tiny", "baseline"))
    torch.manual_seed(7)
    mhc = Transformer(model_config("tiny", "mhc", phi_init="unit"))
    torch.manual_seed(7)
    again = Transformer(model_config("tiny", "mhc", phi_init="unit"))
    for key, value in plain.core_parameters().items():
        assert torch.equal(mhc.core_parameters()[key], value), key
    phis = [c.phi for c in mhc.connections()]
    assert all(torch.equal(p, q.phi) for p, q in zip(phis, again.connections(), strict=True))
    assert not torch.equal(phis[0], phis[1])  # each sub-layer draws its own
