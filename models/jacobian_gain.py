"""Jacobian gains of the residual state: how much a perturbation of the state grows through one sub-layer and through
the depth, measured the same way for every variant, whatever its state is.

The mHC paper's Amax gain (models/diagnostics.py) is a property of the H_res matrices and exists only for the
stream variants. Here the map is the model itself: sub-layer l is the step s_{l+1} = f_l(s_l) the forward pass
applies (`Transformer.sublayer_steps`: the connection with its sub-layer F, pre-norm included), s_0 =
`connection_ends.expand(embed(tokens))`, and J_l = d f_l / d s_l at the states of a real forward pass. The state
is any pytree of tensors (baseline / gain: [B, T, C]; HC / mHC: [B, T, n, C]; RMT: [B, T, D_k, D_v]; a
MUDDFormer-like dense state: a tuple of [B, T, C] tensors that grows by one entry per sub-layer, so the structure of
s_{l+1} may differ from that of s_l). The norm of a state (or of a tangent) is the Euclidean norm over the whole
batch: every token, stream, matrix entry and list entry, sqrt(sum over leaves of the squared leaf norm).

With L sub-layers, for each of `probes` random Gaussian directions (seeded) and every l = 0 .. L-1:

    single_fwd[l]    = ||J_l v|| / ||v||                       v fresh at s_l          (forward-mode AD, a JVP)
    single_bwd[l]    = ||u^T J_l|| / ||u||                     u fresh at s_{l+1}      (reverse mode, a VJP)
    composite_fwd[l] = ||J_l ... J_1 J_0 v|| / ||v||           v at s_0: depth 0 -> after sub-layer l
    composite_bwd[l] = ||u^T J_{L-1} ... J_{l+1} J_l|| / ||u||  u at s_L: after the last sub-layer -> s_l

so composite_fwd[L-1] and composite_bwd[0] are the gains of the whole depth (s_0 -> s_L). Each curve is the mean
over the probes, `*_max` the max over them. A random direction measures the root-mean-square amplification
(E ||J v||^2 / ||v||^2 = ||J||_F^2 / dim): an isotropic gain, not the worst direction. With `power_iters` > 0,
`spectral` estimates the worst direction of the whole depth, sigma_max(J_{L-1} ... J_0), by power iteration on
J^T J (a lower bound that rises toward it with the iterations).

For the plain residual x + F(x), J_l = I + dF/dx; a sub-layer whose F is zero has J = I and every gain 1.

A dense (list) state is measured on its newest entry, the hidden state the latest sub-layer wrote (X_l, what the
other variants' state is): perturbations v and cotangents u are placed on the newest entry (zero on the older ones),
and the gains read the newest entry of the result. The chain between them carries every entry, old and new (J_l maps
(v_0 .. v_l) to (v_0 .. v_l, dX_{l+1})), so the dense paths through earlier outputs are all counted. Measured on the
whole list instead, a gain would grow with the length of the list alone (a perturbation that every entry carries
unchanged has norm sqrt(l + 1) times its own), which no other variant's state does. For a state that is a single
tensor, the newest entry is the state itself.

The composite curves are computed step by step (chain rule), with the tangent or cotangent renormalised after each
sub-layer and the gain accumulated as a product, so a growth of 10^30 does not overflow float32. The backward
steps reuse one forward graph in which every sub-layer's input state is a fresh alias of the previous output
(`_alias`): a list entry that sub-layer l carries on is then a different autograd node for each depth, so
u^T J_l is exactly the derivative of sub-layer l's map, not of the paths through earlier sub-layers.

Measure in eager mode (`eager_mode(model)`, which `jacobian_gains` enters): forward-mode AD has no rule for the
fused connection kernels (custom autograd Functions), the hand-written Sinkhorn backward (`sinkhorn_fast`),
grouped_mm (MoE) or the flash/efficient SDPA kernels. Inside it the connections run the eager PyTorch ops
(`connection.kernels = "reference"`), Sinkhorn its unrolled form, the MoE experts batched matmuls over padded
blocks, attention the math SDPA backend; these compute the same functions. MoE routing (top-k) is piecewise
constant, so the Jacobian is that of the experts selected at the measured state. The dtype is the model's (the
analysis job measures in float32; the mHC/HC coefficient and mixing ops are float32 whatever the state's dtype).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch.func import jvp
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from .kernels.sinkhorn import unrolled_sinkhorn
from .moe import padded_experts
from .transformer import Transformer

Step = Callable[[Any], Any]
CURVES = ("single_fwd", "single_bwd", "composite_fwd", "composite_bwd")


@contextmanager
def eager_mode(model: Transformer) -> Iterator[Transformer]:
    """Inside: the model in eval mode, its connections on the eager PyTorch ops (`kernels = "reference"`), block
    recomputation off, the unrolled Sinkhorn, the MoE's padded path and the math SDPA backend (see the module
    docstring). Everything is restored on exit, also after an error."""
    configs = {id(c): c for c in [model.cfg.connection, *(m.cfg for m in model.connection_modules())]}
    kernels = {key: cfg.kernels for key, cfg in configs.items()}
    slots = [(c, getattr(c, "recompute_slot", None)) for c in model.connections()]
    training = model.training
    try:
        for cfg in configs.values():
            cfg.kernels = "reference"
        for c, _ in slots:
            if hasattr(c, "recompute_slot"):
                c.recompute_slot = None
        model.eval()
        with ExitStack() as stack:
            stack.enter_context(unrolled_sinkhorn())
            stack.enter_context(padded_experts())
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
            yield model
    finally:
        for key, cfg in configs.items():
            cfg.kernels = kernels[key]
        for c, slot in slots:
            if hasattr(c, "recompute_slot"):
                c.recompute_slot = slot
        model.train(training)


def tree_norm(tree: Any) -> float:
    """Euclidean norm over every leaf of a pytree of tensors (float64 accumulation)."""
    leaves, _ = tree_flatten(tree)
    return math.sqrt(sum(float(leaf.detach().double().pow(2).sum()) for leaf in leaves))


def _scale(tree: Any, factor: float) -> Any:
    return tree_map(lambda t: t * factor, tree)


def _randn_like(tree: Any, generator: torch.Generator) -> Any:
    """A standard Gaussian pytree shaped like `tree` (drawn on the CPU from `generator`, so that the draws do not
    depend on the device)."""
    return tree_map(
        lambda t: torch.randn(t.shape, generator=generator, dtype=torch.float64).to(t.device, t.dtype), tree
    )


def _newest(tree: Any) -> Any:
    """The newest entry of a dense (list) state; any other state itself (see the module docstring)."""
    return tree[-1] if isinstance(tree, (tuple, list)) and tree else tree


def _on_newest(tree: Any) -> Any:
    """`tree` with every entry but the newest zeroed (a dense state); any other state unchanged."""
    if isinstance(tree, (tuple, list)) and tree:
        return type(tree)([*(tree_map(torch.zeros_like, t) for t in tree[:-1]), tree[-1]])
    return tree


def _alias(tree: Any) -> Any:
    """Every leaf as a new autograd node over the same data (see the module docstring)."""
    return tree_map(lambda t: t.view_as(t), tree)


def _unit(tree: Any) -> tuple[Any, float]:
    norm = tree_norm(tree)
    if not math.isfinite(norm):
        raise FloatingPointError(f"the tangent's norm is {norm}")
    return (_scale(tree, 1.0 / norm) if norm > 0 else tree), norm


class _Graph:
    """One forward pass through `steps` with every step's input aliased: the VJPs of single steps."""

    def __init__(self, steps: Sequence[Step], state: Any):
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        state = tree_map(lambda t: t.detach().requires_grad_(True), state)
        with torch.enable_grad():
            for step in steps:
                state = _alias(state)
                self.inputs.append(state)
                state = step(state)
                self.outputs.append(state)

    def vjp(self, layer: int, cotangent: Any) -> Any:
        """u^T J_layer for a cotangent `u` shaped like the output of step `layer`."""
        outs, _ = tree_flatten(self.outputs[layer])
        cots, _ = tree_flatten(cotangent)
        ins, spec = tree_flatten(self.inputs[layer])
        grads = torch.autograd.grad(outs, ins, cots, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for x, g in zip(ins, grads, strict=True)]
        return tree_unflatten([g.detach() for g in grads], spec)


def _forward_chain(steps: Sequence[Step], states: Sequence[Any], tangent: Any) -> tuple[list[float], Any]:
    """Composite forward gains of a unit-normalised `tangent` at states[0]: one gain per step, and the last tangent
    (unit norm)."""
    tangent, norm = _unit(_on_newest(tangent))
    log_gain, out = 0.0, []
    for layer, step in enumerate(steps):
        _, tangent = jvp(step, (states[layer],), (tangent,))
        out.append(math.exp(log_gain + _log(tree_norm(_newest(tangent)))))
        tangent, norm = _unit(tangent)
        log_gain += _log(norm)
    return out, tangent


def _log(norm: float) -> float:
    return math.log(norm) if norm > 0 else -math.inf


def _backward_chain(graph: _Graph, cotangent: Any) -> tuple[list[float], Any]:
    """Composite backward gains of `cotangent` at the last state, pulled back to the input of every step (list in
    step order), and the cotangent at the first state (unit norm)."""
    cotangent, _ = _unit(_on_newest(cotangent))
    log_gain, out = 0.0, [0.0] * len(graph.inputs)
    for layer in range(len(graph.inputs) - 1, -1, -1):
        cotangent = graph.vjp(layer, cotangent)
        out[layer] = math.exp(log_gain + _log(tree_norm(_newest(cotangent))))
        cotangent, norm = _unit(cotangent)
        log_gain += _log(norm)
    return out, cotangent


def measure_steps(
    steps: Sequence[Step], state: Any, probes: int = 4, seed: int = 0, power_iters: int = 0
) -> dict[str, Any]:
    """The gains of the module docstring for a chain of maps `steps` (each `state -> state`, any pytree of tensors)
    from `state`. Returns plain lists and floats (see `jacobian_gains`)."""
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    if not steps:
        raise ValueError("no steps to measure")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        states = [tree_map(lambda t: t.detach(), state)]
        for step in steps:
            states.append(tree_map(lambda t: t.detach(), step(states[-1])))
    graph = _Graph(steps, states[0])
    L = len(steps)
    curves: dict[str, list[list[float]]] = {k: [] for k in CURVES}
    for _ in range(probes):
        curves["composite_fwd"].append(_forward_chain(steps, states, _randn_like(states[0], generator))[0])
        single = []
        for layer, step in enumerate(steps):
            v = _on_newest(_randn_like(states[layer], generator))
            single.append(tree_norm(_newest(jvp(step, (states[layer],), (v,))[1])) / tree_norm(v))
        curves["single_fwd"].append(single)
        curves["composite_bwd"].append(_backward_chain(graph, _randn_like(states[-1], generator))[0])
        single = []
        for layer in range(L):
            u = _on_newest(_randn_like(states[layer + 1], generator))
            single.append(tree_norm(_newest(graph.vjp(layer, u))) / tree_norm(u))
        curves["single_bwd"].append(single)
    result: dict[str, Any] = {"sublayers": L, "probes": probes, "seed": seed}
    for name, runs in curves.items():
        result[name] = [sum(r[i] for r in runs) / probes for i in range(L)]
        result[f"{name}_max"] = [max(r[i] for r in runs) for i in range(L)]
    result["summary"] = {
        "max_single_fwd": max(result["single_fwd"]),
        "max_single_bwd": max(result["single_bwd"]),
        "final_composite_fwd": result["composite_fwd"][-1],
        "final_composite_bwd": result["composite_bwd"][0],
        "max_composite_fwd": max(result["composite_fwd"]),
        "max_composite_bwd": max(result["composite_bwd"]),
    }
    if power_iters > 0:
        result["spectral"] = _power_iteration(steps, states, graph, generator, power_iters)
        result["summary"]["spectral_composite"] = result["spectral"]["sigma_max"]
    return result


def _power_iteration(
    steps: Sequence[Step], states: Sequence[Any], graph: _Graph, generator: torch.Generator, iters: int
) -> dict[str, Any]:
    """sigma_max of the whole depth J = J_{L-1} ... J_0 by power iteration on J^T J: v <- J^T J v / ||J^T J v||.
    After each iteration ||J v|| (v of unit norm) is a lower bound of sigma_max that rises toward it."""
    v = _randn_like(states[0], generator)
    history = []
    for _ in range(iters):
        gains, jv = _forward_chain(steps, states, v)
        history.append(gains[-1])  # ||J v|| / ||v||
        _, v = _backward_chain(graph, jv)  # J^T J v, unit norm
    return {"sigma_max": max(history), "iterations": history}


def model_state(model: Transformer, tokens: torch.Tensor) -> Any:
    """s_0 = connection_ends.expand(embed(tokens)) (detached)."""
    with torch.no_grad():
        return tree_map(lambda t: t.detach(), model.connection_ends.expand(model.embed(tokens)))


def jacobian_gains(
    model: Transformer, tokens: torch.Tensor, probes: int = 4, seed: int = 0, power_iters: int = 0
) -> dict[str, Any]:
    """The Jacobian gains (module docstring) of `model` on `tokens` [B, T], in eager mode:
    {"single_fwd", "single_bwd", "composite_fwd", "composite_bwd": [L] means over the probes, the same with "_max"
    (max over the probes), "summary": {"max_single_fwd", "max_single_bwd", "final_composite_fwd",
    "final_composite_bwd", "max_composite_fwd", "max_composite_bwd"[, "spectral_composite"]}, "sublayers", "probes",
    "seed"[, "spectral"]} of plain floats."""
    with eager_mode(model):
        steps = model.sublayer_steps(tokens.shape[1])
        return measure_steps(steps, model_state(model, tokens), probes=probes, seed=seed, power_iters=power_iters)
