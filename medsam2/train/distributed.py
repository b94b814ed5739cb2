"""Multi-GPU training with PyTorch DDP under `torchrun`.

`torchrun --nproc-per-node N -m medsam2.cli train CONFIG` starts N processes and sets RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; each process joins the group through those
(``init_method="env://"``), takes its GPU by LOCAL_RANK (NCCL) or runs on CPU (gloo). Without those
variables training runs in this one process. A one-process torchrun joins a group too and runs
the same DDP code as N processes (so one GPU is enough to check the NCCL path).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from medsam2.engine.models import resolve_device
from medsam2.errors import InputError


@dataclass(frozen=True)
class Distribution:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    joined: bool = False  # in a torchrun process group, even one of a single process

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that writes files, logs and shows progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """DDP wraps the step and values are exchanged between the processes."""
        return self.joined

    def gather(self, value: Any) -> list[Any]:
        """`value` of every rank, in rank order (on every rank)."""
        if not self.active:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the ranks."""
        if not self.active:
            return values
        gathered = self.gather(values)
        return {key: sum(v[key] for v in gathered) / self.world_size for key in values}


def training_device(setting: str, distribution: Distribution) -> torch.device:
    """The device of this process: under torchrun with CUDA, its own GPU by LOCAL_RANK."""
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    device = resolve_device(setting, "training.device (or --device)")
    if device.type == "cuda" and distribution.active:
        if distribution.local_rank >= torch.cuda.device_count():
            raise InputError(
                f"LOCAL_RANK {distribution.local_rank}: only {torch.cuda.device_count()} GPU(s) here; "
                "start at most that many processes per node"
            )
        device = torch.device("cuda", distribution.local_rank)
    if device.type == "cuda":
        # set_device needs an index: a bare "cuda" means the current GPU
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def process_group(device_setting: str) -> Iterator[tuple[Distribution, torch.device]]:
    """Join the torchrun process group if there is one (left together on success); yields this
    process's place and device."""
    if not all(name in os.environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        yield Distribution(), training_device(device_setting, Distribution())
        return
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    distribution = Distribution(rank, world_size, int(os.environ.get("LOCAL_RANK", "0")), joined=True)
    device = training_device(device_setting, distribution)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
    yield distribution, device
    # Every rank waits for the others (rank 0 still writes the model) before any tears the group
    # down: a gloo process whose peer leaves mid-teardown can abort. After an error the group is
    # left as it is (tearing it down while a peer sits in a collective can hang); torchrun stops the rest.
    dist.barrier()
    dist.destroy_process_group()
