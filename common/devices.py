"""The one place that turns a device preference into a device: "auto" is CUDA when torch sees a GPU, else the CPU.

`auto_device` claims nothing; the single-process jobs that may share a machine's GPUs (training, evaluation, the
analyses) call `common.gpu_slots.resolve_device`, which claims a free GPU first and then asks this module."""

from __future__ import annotations


def auto_device(preference: str = "auto") -> str:
    """ "auto" -> "cuda" when torch sees a GPU, else "cpu"; any other preference ("cpu", "cuda", "cuda:1") as given."""
    if preference != "auto":
        return preference
    import torch  # here, not at the top: `python -m common.gpu_slots` launches jobs without loading torch

    return "cuda" if torch.cuda.is_available() else "cpu"
