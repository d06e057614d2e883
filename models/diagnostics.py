"""Diagnostics of the residual mappings: capture of H_pre / H_post / H_res per sub-layer, and the mHC
paper's Amax Gain Magnitude (Fig. 3 / Fig. 7), as defined below.

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

import statistics
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .connections.scope import in_connection_ops
from .transformer import Transformer


@contextmanager
def capture_mappings(model: Transformer) -> Iterator[list[dict[str, torch.Tensor]]]:
    """Inside the block, every forward fills the yielded list with one record per sub-layer, in order:
    {"sublayer": 2*block + (0 attn | 1 ffn), "H_pre": [B,T,n], "H_post": [B,T,n], "H_res": [B,T,n,n]}.
    The residual baseline and RMT have no mappings (the list stays empty)."""
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


# When a stream connection's mechanism counts as operating (tests/test_mechanism.py, the report's mechanism gate):
# in the median sub-layer, what its parameters learned changed H_res (`hres_learned`: the token-averaged H_res on
# the same input, with the current parameters against the step-0 ones, so that a drift of the input alone does not
# count) and the streams entering the sub-layer differ (stream_spread). The median, not the largest sub-layer: with
# b = 0 one early sub-layer can separate the streams while all later ones re-average them to copies (spread ~1e-3),
# and that network is still the baseline in disguise. With b = 0 and AdamW eps = 1e-8 neither happens in 40 steps
# of the unit-test model (H_res changes by ~0.004, the streams stay copies: spread ~0.003).
MECHANISM_THRESHOLDS = {"hres_learned": 0.02, "stream_spread": 0.05}


def mechanism_operated(record: dict, keys: tuple[str, ...] = tuple(MECHANISM_THRESHOLDS)) -> tuple[bool, str]:
    """Whether one diagnostics record (a line of diagnostics.jsonl) shows the mechanism at work in the median
    sub-layer, and why (not).

    `keys` picks the criteria that apply: both for a learned H_res over n streams; only "hres_learned" for the
    single-stream `gain` control (its 1 x 1 "H_res" is the residual gain); only "stream_spread" when H_res is fixed."""
    reasons, ok = [], True
    for key in keys:
        threshold = MECHANISM_THRESHOLDS[key]
        values = [v for v in record.get(key) or [] if v is not None]
        if not values:
            return False, f"{key} not recorded"
        middle = float(statistics.median(values))
        ok &= middle > threshold
        reasons.append(f"median {key} {middle:.3g} {'>' if middle > threshold else '<='} {threshold:g}")
    return ok, "; ".join(reasons)


MECHANISM_KEYS = (
    "stream_spread",
    "hres_learned",
    "hres_from_init",
    "hres_from_uniform",
    "hres_from_identity",
    "hres_token_dev",
    "pre_spread",
    "post_spread",
)


def mechanism_curves(
    records: list[dict[str, torch.Tensor]],
    init_res: list[list[list[float]]] | None = None,
    learned_from: list[torch.Tensor | None] | None = None,
) -> dict[str, list]:
    """Whether the connections' mechanism operates, per sub-layer, on one sequence's captured records.

    - stream_spread: token mean of ||x_i - x_mean|| / ||x_mean|| over the streams entering the sub-layer
      (0: the streams are copies, and then any row-stochastic H_res acts as the identity on them);
    - hres_learned: largest |entry| of the token-averaged H_res minus the token-averaged `learned_from[l]` (H_res
      of the step-0 parameters on the same input; None without it): what learning changed;
    - H_res_mean: the token-averaged H_res (n x n lists), kept so that later records can say how far it moved;
    - hres_from_init / _uniform / _identity: largest |entry| of H_res_mean minus its value at step 0
      (`init_res`; None without it), minus J/n, minus I;
    - hres_token_dev: token mean of the largest |entry| of H_res_t - H_res_mean (how input-dependent it is);
    - pre_spread / post_spread: max - min over streams of the token-averaged H_pre / H_post.
    """
    out: dict[str, list] = {key: [] for key in ("H_res_mean", *MECHANISM_KEYS)}
    for layer, record in enumerate(records):
        H = record["H_res"].reshape(-1, *record["H_res"].shape[-2:]).double()
        n = H.shape[-1]
        mean = H.mean(0)
        out["H_res_mean"].append(mean.tolist())
        out["stream_spread"].append(float(record["spread"].double().mean()))
        if init_res is not None and layer < len(init_res):
            start = torch.tensor(init_res[layer], dtype=torch.float64)
            out["hres_from_init"].append(float((mean - start).abs().max()))
        else:
            out["hres_from_init"].append(None)
        start_params = learned_from[layer] if learned_from is not None and layer < len(learned_from) else None
        if start_params is None:
            out["hres_learned"].append(None)
        else:
            before = start_params.reshape(-1, n, n).double().mean(0)
            out["hres_learned"].append(float((mean - before).abs().max()))
        out["hres_from_uniform"].append(float((mean - 1.0 / n).abs().max()))
        out["hres_from_identity"].append(float((mean - torch.eye(n, dtype=torch.float64)).abs().max()))
        out["hres_token_dev"].append(float((H - mean).abs().amax((-2, -1)).mean()))
        for key in ("pre", "post"):
            per_stream = record[f"H_{key}"].reshape(-1, n).double().mean(0)
            out[f"{key}_spread"].append(float(per_stream.max() - per_stream.min()))
    return out


@contextmanager
def saved_activation_bytes(model: torch.nn.Module) -> Iterator[dict[str, int]]:
    """Count the bytes autograd saves for backward during the block, split into the connections' own ops
    ("connection") and everything else ("other": F, embedding, head). Each storage is counted once, by the
    first op that saves it; the model's parameters are excluded (they are not activations)."""
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


@contextmanager
def parameters_swapped(module: torch.nn.Module, values: dict[str, torch.Tensor]) -> Iterator[None]:
    """Inside the block, `module`'s parameters named in `values` are those tensors (the originals are put back on
    exit). The parameter objects are swapped, not copied into, so this also works where the module's own
    parameters are shards (FSDP2's DTensors) and `values` are full tensors."""
    saved = []
    try:
        for name, value in values.items():
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name)
            saved.append((owner, leaf, owner._parameters[leaf]))
            owner._parameters[leaf] = value
        yield
    finally:
        for owner, leaf, param in reversed(saved):
            owner._parameters[leaf] = param


@torch.no_grad()
def residual_maps_with(
    model: Transformer, records: list[dict[str, torch.Tensor]], parameters: list[dict[str, torch.Tensor]]
) -> list[torch.Tensor | None]:
    """For every captured sub-layer: the H_res its connection gives on the same input state with `parameters`
    (e.g. the step-0 values) in place of the current ones; separates what learning changed from input drift.
    `parameters` has one entry per connection; a record is paired with its connection by its "sublayer" index (a
    variant that keeps no records, RMT, has none)."""
    out = []
    connections = model.connections()
    if len(parameters) != len(connections):
        raise ValueError(f"{len(parameters)} parameter sets for {len(connections)} connections")
    for record in records:
        conn, values = connections[record["sublayer"]], parameters[record["sublayer"]]
        with parameters_swapped(conn, values):
            out.append(conn.residual_map(record["state"]))
    return out


@torch.no_grad()
def residual_path_deviation(model: Transformer, tokens: torch.Tensor) -> dict[str, list[float] | float]:
    """How far the residual path alone is from the identity: with every sub-layer's output set to zero, how far each
    sub-layer's input (and the final norm's input) is, in direction, from the embedding of the same token.

    Per token t the deviation is ||u_t / ||u_t|| - h_t / ||h_t||||, with h the embedding output and u what the
    sub-layer's pre-norm receives; its largest value over the tokens is reported per sub-layer. Direction, not
    length: every sub-layer begins with an RMSNorm, so a residual path that scales its input (mHC's H_pre sums to
    about 1.5 at init) still hands every F the embedding itself. 0 for the residual network, HC, mHC and MUDDFormer
    at initialisation (their paths carry h unchanged); not 0 for RMT, whose reads K_read^T K_in are identities only
    when its keys are orthonormal. A sub-layer that reads several inputs (MUDDFormer's query, key and value) reports
    the largest deviation among them."""
    h = model.embed(tokens).float()
    unit_h = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    inputs: dict[int, float] = {}
    handles = []

    def deviation(u: torch.Tensor) -> float:
        u = u.float()
        return float((u / u.norm(dim=-1, keepdim=True).clamp_min(1e-30) - unit_h).norm(dim=-1).max())

    def zero_output(module, args, output):
        return torch.zeros_like(output)

    for block in model.blocks:
        for offset, (norm, sublayer) in enumerate(((block.attn_norm, block.attn), (block.ffn_norm, block.ffn))):
            index = 2 * block.layer_id + offset

            def record(module, args, _index=index):
                inputs[_index] = max(inputs.get(_index, 0.0), deviation(args[0]))

            handles.append(norm.register_forward_pre_hook(record))
            handles.append(sublayer.register_forward_hook(zero_output))
    exit_deviation: list[float] = []
    handles.append(model.norm.register_forward_pre_hook(lambda module, args: exit_deviation.append(deviation(args[0]))))
    try:
        model(tokens)
    finally:
        for handle in handles:
            handle.remove()
    sublayers = [inputs[i] for i in sorted(inputs)]
    return {"sublayers": sublayers, "exit": exit_deviation[0], "max": max([*sublayers, exit_deviation[0]])}
