"""Diagnostics of the residual mappings: capture of H_pre / H_post / H_res per sub-layer, and the mHC
paper's Amax Gain Magnitude (Fig. 3 / Fig. 7), exactly as SPEC section 3 defines it.

For a mapping P (n x n, paper orientation: out_i = sum_j P_ij x_j):
    forward gain  = max_i |sum_j P_ij|   (row sums: worst-case amplification of the forward signal)
    backward gain = max_j |sum_i P_ij|   (column sums: worst-case amplification of the gradient)
    min column sum = min_j sum_i P_ij    (the attenuation a max-only metric hides)
Single-layer: P = H_res_l. Composite: P = H_res_{L-1} ... H_res_{l+1} H_res_l, the map from sub-layer l to
the output (sub-layers counted separately: 2 per block). Gains are computed per token and then
averaged over the tokens of the sequence (`reduce="token"`, default); `reduce="matrix"` averages the
per-token single-layer or composite matrices over tokens first (the paper's Fig. 8 shows token-averaged
matrices; the text leaves the order of averaging for Fig. 3/7 open).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .transformer import Transformer


@contextmanager
def capture_mappings(model: Transformer) -> Iterator[list[dict[str, torch.Tensor]]]:
    """Inside the block, every forward fills the yielded list with one record per sub-layer, in order:
    {"sublayer": 2*block + (0 attn | 1 ffn), "H_pre": [B,T,n], "H_post": [B,T,n], "H_res": [B,T,n,n]}.
    The residual baseline has no mappings (the list stays empty)."""
    records: list[dict[str, torch.Tensor]] = []
    connections = model.connections()
    handles = []
    for c in connections:
        c.capture = True

        def hook(module, args, output, _index=c.index):
            if module.record is not None:
                records.append({"sublayer": _index, **module.record})
                module.record = None

        handles.append(c.register_forward_hook(hook))
    try:
        yield records
    finally:
        for c in connections:
            c.capture = False
            c.record = None
        for h in handles:
            h.remove()


def gains(P: torch.Tensor) -> dict[str, torch.Tensor]:
    """P [..., n, n] -> {"forward", "backward", "min_col"} each of shape [...]."""
    row = P.sum(-1)
    col = P.sum(-2)
    return {
        "forward": row.abs().amax(-1),
        "backward": col.abs().amax(-1),
        "min_col": col.amin(-1),
    }


def composite_products(H: list[torch.Tensor]) -> list[torch.Tensor]:
    """H[l] = H_res of sub-layer l ([..., n, n]) -> P[l] = H[L-1] @ ... @ H[l+1] @ H[l] for every l."""
    out: list[torch.Tensor] = [None] * len(H)  # type: ignore[list-item]
    acc = None
    for layer in range(len(H) - 1, -1, -1):
        acc = H[layer].double() if acc is None else acc @ H[layer].double()
        out[layer] = acc
    return out


def amax_gain(H: list[torch.Tensor], reduce: str = "token") -> dict[str, list[float]]:
    """Amax Gain Magnitude curves over sub-layers for one sequence.

    H: per sub-layer H_res of shape [T, n, n] (one sequence's tokens; a leading batch dim of 1 is
    allowed). Returns lists (one value per sub-layer) for single-layer and composite forward/backward
    gains and min column sums. Products run in float64 (HC composites reach 1e3-1e4).
    """
    if reduce not in ("token", "matrix"):
        raise ValueError(f"reduce must be 'token' or 'matrix', got {reduce!r}")
    for h in H:
        if h.dim() == 4 and h.shape[0] != 1 or h.dim() not in (3, 4):
            raise ValueError(
                f"amax_gain takes one sequence: H_res of shape [T, n, n] or [1, T, n, n], got {tuple(h.shape)}"
            )
    mats = [h.reshape(-1, *h.shape[-2:]).double() for h in H]
    result: dict[str, list[float]] = {}
    for kind, seq in (("single", mats), ("composite", composite_products(mats))):
        for P in seq:
            if reduce == "matrix":
                P = P.mean(0)
            for key, value in gains(P).items():
                result.setdefault(f"{kind}_{key}", []).append(value.mean().item())
    return result


@contextmanager
def saved_activation_bytes(model: torch.nn.Module) -> Iterator[dict[str, int]]:
    """Count the bytes autograd saves for backward during the block, split into the connections' own ops
    ("connection") and everything else ("other": F, embedding, head). Each storage is counted once, by the
    first op that saves it; the model's parameters are excluded (they are not activations)."""
    from .connections.base import in_connection_ops

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    counts = {"connection": 0, "other": 0}
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            counts["connection" if in_connection_ops() else "other"] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield counts
