"""Per-op and whole-connection timings of the mHC kernels at the paper's shapes, against references.

    python -m benchmarks.kernels [--tokens 8192] [--dims 1280 1920 2560] [--n 4] [--compile]

For each C in --dims (the 3B / 9B / 27B widths) and each op -- (a) proj_rms, (b+c) coefficients with
Sinkhorn, (d) pre_mix, (e) post_res_mix, and the whole mHC connection around an identity F -- it times
forward + backward (random upstream gradients) of:
  eager     the pure-PyTorch reference (models/kernels/torch_ops.py)
  compile   torch.compile of the same reference (CUDA by default; --compile to force on the CPU, where it is
            Inductor's C++ backend)
  fused     our Triton kernels on CUDA; on the CPU our C++ kernels (models/kernels/cpu_ops.py; the whole
            connection then also runs the fused pre-sub-layer node)
  liger     Liger-Kernel's LigerMHC (whole connection only; CUDA and `pip install liger-kernel`)
and prints time, the achieved bytes/s under a minimal-traffic model of each op (every input read once,
every output written once, forward and backward), the fraction of the device's memory bandwidth, and the
ratios of the fused path to eager / compile / liger. Activations are bf16 on CUDA and fp32 on the CPU;
coefficients fp32. The first call's time (compilation) of torch.compile and of the C++ kernels is printed.
Finally the whole-model step-time ratio mHC / baseline is measured with `benchmarks.step_time`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch

from common.devices import auto_device
from common.timing import median_seconds
from models.config import connection_config
from models.connections import ManifoldHyperConnection
from models.kernels import cpu_compiler_available, torch_ops

from . import step_time

PEAK_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12, "L40S": 0.864e12, "A10": 0.6e12}


def peak_bandwidth(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((bw for key, bw in PEAK_BANDWIDTH.items() if key in name), None)


def time_fwd_bwd(fn: Callable, make_inputs: Callable, device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds of fn(*inputs) + backward with a fixed random upstream gradient."""
    inputs = make_inputs()
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    upstream = [torch.randn_like(o) for o in outs]

    def clear_grads() -> None:
        for x in inputs:
            x.grad = None

    def fwd_bwd() -> None:
        outs = fn(*inputs)
        torch.autograd.backward(outs if isinstance(outs, tuple) else (outs,), upstream)

    return median_seconds(fwd_bwd, iters, warmup, device, prepare=clear_grads)


def op_cases(T: int, n: int, C: int, act: torch.dtype, device: torch.device):
    """(name, {impl: fn}, make_inputs, bytes moved fwd+bwd)."""
    M = n * n + 2 * n
    e = torch.tensor([], dtype=act).element_size()

    def leaf(*shape, dtype=torch.float32, scale=1.0):
        return (scale * torch.randn(*shape, device=device)).to(dtype).requires_grad_()

    def impls(name: str) -> dict[str, Callable]:
        out = {"eager": getattr(torch_ops, name)}
        if device.type == "cuda":
            from models.kernels import triton_ops

            out["fused"] = getattr(triton_ops, name)
        elif cpu_compiler_available():
            from models.kernels import cpu_ops

            out["fused"] = getattr(cpu_ops, name)
        return out

    yield (
        "proj_rms (a)",
        {k: partial(f, eps=1e-6) for k, f in impls("proj_rms").items()},
        lambda: [leaf(T, n * C, dtype=act), leaf(n * C, M, scale=0.02)],
        T * (3 * n * C * e + 2 * 4 * (M + 1)),
    )
    yield (
        "coefficients+sinkhorn (b,c)",
        {k: partial(f, n=n, iters=20) for k, f in impls("coefficients").items()},
        lambda: [leaf(T, M), leaf(T).detach().abs().add(0.5).requires_grad_(), leaf(3), leaf(M)],
        T * 4 * (5 * M + 3),
    )
    yield (
        "pre_mix (d)",
        impls("pre_mix"),
        lambda: [leaf(T, n, C, dtype=act), leaf(T, n)],
        T * e * (3 * n * C + 2 * C),
    )
    yield (
        "post_res_mix (e)",
        impls("post_res_mix"),
        lambda: [leaf(T, n, C, dtype=act), leaf(T, n, n), leaf(T, n), leaf(T, C, dtype=act)],
        T * e * C * (5 * n + 3),
    )


def layer_case(T: int, n: int, C: int, act: torch.dtype, device: torch.device):
    """The whole mHC connection around F = identity, per backend."""
    impls: dict[str, Callable] = {}
    fused = "triton" if device.type == "cuda" else ("cpu" if cpu_compiler_available() else None)
    backends = ["reference"] + ([fused] if fused else [])
    for backend in backends:
        conn = ManifoldHyperConnection(connection_config(arch="mhc", n=n, kernels=backend), C, 0, 1e-6).to(device)
        impls["eager" if backend == "reference" else "fused"] = partial(conn, sublayer=torch.nn.Identity())
    if device.type == "cuda":
        try:
            from liger_kernel.transformers.mhc import LigerMHC

            liger = LigerMHC(torch.nn.Identity(), hc=n, c=C).to(device)
            impls["liger"] = liger
        except Exception as err:  # reported, never silently skipped
            print(f"  LigerMHC unavailable: {type(err).__name__}: {err}")
    bytes_moved = T * torch.tensor([], dtype=act).element_size() * C * (3 * n + (3 * n + 2) + (5 * n + 3))
    return (
        "whole connection",
        impls,
        lambda: [torch.randn(T, n, C, device=device).to(act).requires_grad_()],
        bytes_moved,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=None, help="default: 8192 on CUDA, 1024 on the CPU")
    parser.add_argument("--dims", type=int, nargs="+", default=[1280, 1920, 2560])
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--iters", type=int, default=None, help="default: 20 on CUDA, 3 on the CPU")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile on the CPU")
    parser.add_argument("--model-scale", default=None, help="scale for the whole-model ratio (gpu-s / tiny)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available, else the CPU), cpu, cuda, cuda:N")
    args = parser.parse_args(argv)

    device = torch.device(auto_device(args.device))
    cuda = device.type == "cuda"
    T = args.tokens or (8192 if cuda else 1024)
    iters = args.iters or (20 if cuda else 3)
    act = torch.bfloat16 if cuda else torch.float32
    peak = peak_bandwidth(device)
    print(f"device: {step_time.machine()}; tokens={T}, n={args.n}, activations {act}, coefficients float32")
    if not cuda and cpu_compiler_available():
        from models.kernels import cpu_ops

        start = time.perf_counter()
        cpu_ops.extension()
        print(f"fused = the C++ CPU kernels (loaded in {time.perf_counter() - start:.1f} s, built or from the cache)")
    compile_notes: list[str] = []
    print("| C | op | impl | ms (fwd+bwd) | GB/s | of peak | fused speed-up |")
    print("|---|---|---|---|---|---|---|")
    for C in args.dims:
        cases = list(op_cases(T, args.n, C, act, device)) + [layer_case(T, args.n, C, act, device)]
        for name, impls, make_inputs, nbytes in cases:
            if cuda or args.compile:
                compiled = torch.compile(impls["eager"])
                start = time.perf_counter()
                time_fwd_bwd(compiled, make_inputs, device, 0, 1)  # compiles forward and backward
                seconds = time.perf_counter() - start
                compile_notes.append(f"torch.compile of {name} at C={C}: first call {seconds:.1f} s")
                impls = dict(impls, compile=compiled)
            timings = {impl: time_fwd_bwd(fn, make_inputs, device, 2, iters) for impl, fn in impls.items()}
            for impl, sec in timings.items():
                frac = f"{nbytes / sec / peak:.1%}" if peak else "n/a"
                speedup = f"{sec / timings['fused']:.2f}x" if "fused" in timings and impl != "fused" else ""
                print(f"| {C} | {name} | {impl} | {sec * 1e3:.3f} | {nbytes / sec / 1e9:.1f} | {frac} | {speedup} |")

    print("\n".join(compile_notes))
    scale = args.model_scale or ("gpu-s" if cuda else "tiny")
    print(f"\nwhole-model forward+backward step time ({scale}):")
    step_time.main(["--scale", scale, "--device", str(device), "--steps", "10"] + (["--seq", "1024"] if cuda else []))


if __name__ == "__main__":
    main()
