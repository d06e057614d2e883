"""Checkpoints without pickle: tensors in safetensors, everything else in a JSON sidecar.

A checkpoint is a directory `RUN_DIR/checkpoints/step_XXXXXXX/` holding
- `state.safetensors`: the model state (`model.*`), the AdamW moments (`optim.<i>.<key>`) and the CPU RNG
  state (`rng.torch`);
- `state.json`: step, config, data-loader state, optimizer hyper-parameters, the sha256 of
  `state.safetensors`, the data manifest checksums, git sha, versions.
It is written to a temporary directory and renamed into place, then `checkpoints/latest` (a one-line text
file) is replaced atomically, so a crash at any moment leaves the previous checkpoint intact. Loading checks
the sha256 first: a truncated or corrupted file is a `CheckpointError` naming the file, never a half-loaded
model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from common.files import atomic_write_text, sha256_file
from corpus import load_tokenizer, tokenizer_sha256
from models.config import model_config_from_record
from models.transformer import Transformer


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted or does not belong to this run."""


def _optimizer_tensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state dict (keys: parameter indices, or names for FSDP's full state dict) as flat tensors."""
    tensors = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
    return tensors, {"param_groups": state["param_groups"]}


def save_checkpoint(
    root: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optim_state: dict,
    sidecar: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` under `root` (= RUN_DIR/checkpoints) and keep only the newest `keep`.

    `model_state` / `optim_state` are full (unsharded) state dicts."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".step_{step:07d}."))
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
    optim_tensors, optim_meta = _optimizer_tensors(optim_state)
    tensors.update(optim_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, tmp / "state.safetensors")
    meta = dict(sidecar, step=step, optimizer=optim_meta, state_sha256=sha256_file(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    for name in ("state.safetensors", "state.json"):  # on disk before `latest` can point at them
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / "latest", final.name + "\n")
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if not path.is_dir():
        raise CheckpointError(f"{pointer} names {path.name}, which does not exist")
    return path


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(sidecar, tensors) of a checkpoint directory, after checking the tensors' sha256."""
    sidecar_path, tensor_path = path / "state.json", path / "state.safetensors"
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint sidecar {sidecar_path} is unreadable: {err}") from None
    if not tensor_path.is_file():
        raise CheckpointError(f"checkpoint file {tensor_path} is missing")
    actual = sha256_file(tensor_path)
    if actual != sidecar.get("state_sha256"):
        raise CheckpointError(
            f"checkpoint file {tensor_path} is corrupted: sha256 {actual}, expected {sidecar.get('state_sha256')}"
        )
    try:
        tensors = load_file(tensor_path)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"checkpoint file {tensor_path} cannot be read: {err}") from None
    return sidecar, tensors


def split_state(
    sidecar: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model state dict, optimizer state dict) from `read_checkpoint`'s output; restores the RNG state."""
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    state: dict[Any, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            idx, name = key[len("optim.") :].rsplit(".", 1)
            state.setdefault(int(idx) if idx.isdigit() else idx, {})[name] = value
    torch.set_rng_state(tensors["rng.torch"])
    return model_state, {"state": state, "param_groups": sidecar["optimizer"]["param_groups"]}


def save_model(path: Path, model_state: dict[str, torch.Tensor], sidecar: dict[str, Any]) -> None:
    """The final model: `model.safetensors` + `model.json` (config and provenance), written atomically."""
    path.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path, prefix=".model.")
    os.close(fd)
    save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, tmp)
    meta = dict(sidecar, sha256=sha256_file(tmp))
    os.replace(tmp, path / "model.safetensors")
    atomic_write_text(path / "model.json", json.dumps(meta, indent=1, sort_keys=True))


def load_for_eval(checkpoint: str | Path, device: str = "cpu", tokenizer: str | None = None):
    """(model in eval mode, tokenizer, sidecar) from a run, model or checkpoint directory."""
    path = Path(checkpoint)
    if (path / "model" / "model.json").is_file():
        path = path / "model"
    if (path / "model.json").is_file():
        sidecar = json.loads((path / "model.json").read_text())
        weights = path / "model.safetensors"
        actual = sha256_file(weights) if weights.is_file() else "missing"
        if actual != sidecar.get("sha256"):
            raise CheckpointError(
                f"{weights} is missing or corrupted: sha256 {actual}, expected {sidecar.get('sha256')}"
            )
        state = load_file(weights)
    elif (path / "state.json").is_file():
        sidecar, tensors = read_checkpoint(path)
        state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    else:
        raise CheckpointError(f"{path} holds no model (model/model.json, model.json or state.json)")
    cfg = model_config_from_record(sidecar["model_config"])
    model = Transformer(cfg)
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    tok_path = Path(tokenizer) if tokenizer else Path(sidecar["data"]["shards"]) / "tokenizer.json"
    tok = load_tokenizer(tok_path)
    expected = sidecar["data"].get("tokenizer_sha256")
    if tokenizer is None and expected:
        if tokenizer_sha256(tok) != expected:
            raise CheckpointError(f"tokenizer {tok_path} is not the one the model was trained with")
    return model, tok, sidecar
