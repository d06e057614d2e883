"""Several ranks (torchrun): the process group, the DDP or FSDP2 wrapping, and full state dicts across them.

A single process claims a free GPU of the machine for itself (common/gpu_slots.py); the ranks of a multi-GPU run use
the GPUs their launcher claimed, one per local rank. With one rank every function here is a plain pass-through.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

from common.devices import auto_device
from common.gpu_slots import resolve_device
from models.transformer import Transformer

from .checkpoint import CheckpointError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str) -> tuple[Dist, torch.device]:
    """The ranks and this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), torch.device(resolve_device(device_pref))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device_pref = auto_device(device_pref)
    if device_pref.startswith("cuda"):
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend=backend)
    return Dist(dist.get_rank(), world, local), device


class Parallel:
    """The model as the ranks run it: itself (one rank), DDP, or FSDP2-sharded in place."""

    def __init__(self, model: Transformer, ranks: Dist, mode: Literal["ddp", "fsdp"]):
        self.model, self.ranks = model, ranks
        self.fsdp = ranks.world > 1 and mode == "fsdp"
        moe = model.cfg.ffn.kind == "moe"
        if self.fsdp:  # shard every block, then the root (embedding, head); params become DTensors
            from torch.distributed.fsdp import fully_shard

            for block in model.blocks:
                fully_shard(block)
            fully_shard(model)
            if moe:  # experts a rank routed no token to still take part in the reduce-scatter (else: deadlock)
                model.set_reduce_scatter_unused_params(True)
        self.forward = model
        if ranks.world > 1 and not self.fsdp:
            self.forward = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=moe)

    def grad_sync(self, last_micro_batch: bool) -> contextlib.AbstractContextManager:
        """Gradients are reduced across ranks on the last micro-batch of a step only."""
        if self.fsdp:
            self.model.set_requires_gradient_sync(last_micro_batch)
        elif self.ranks.world > 1 and not last_micro_batch:
            return self.forward.no_sync()
        return contextlib.nullcontext()

    def average(self, loss_sum: torch.Tensor) -> None:
        """The step's loss and the MoE load, averaged/summed over the ranks (in place)."""
        if self.ranks.world > 1:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
            for moe in self.model.moe_layers():
                dist.all_reduce(moe.load)  # balance on the global load

    def full_states(self, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
        """Unsharded model and optimizer state dicts (a collective under FSDP: every rank must call it)."""
        if not self.fsdp:
            return self.model.state_dict(), optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(self.model, options=opts)
        return model_state, get_optimizer_state_dict(self.model, optimizer, options=opts)

    def load_states(self, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict) -> None:
        try:
            if not self.fsdp:
                self.model.load_state_dict(model_state, strict=True)
                optimizer.load_state_dict(optim_state)
                return
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, model_state, options=opts)
            set_optimizer_state_dict(self.model, optimizer, optim_state, options=opts)
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(f"checkpoint does not fit this model/optimizer: {err}") from None
