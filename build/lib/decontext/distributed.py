"""Sharding a batch across processes started by ``accelerate launch`` (or torchrun).

Each process protects every ``world``-th image (each image exactly once), writes its own partial
manifest, and the main process merges them after a barrier. A plain ``python`` run is one shard.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Shard:
    rank: int = 0
    world: int = 1
    device: torch.device | None = None  # the device accelerate assigned to this process
    barrier: Callable[[], None] = lambda: None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_shard() -> Shard:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Shard()
    from accelerate import PartialState

    # Without a GPU accelerate must be told to use the CPU, or it does not form the process group.
    state = PartialState(cpu=not torch.cuda.is_available())
    device = torch.device("cpu") if state.device.type == "cpu" else state.device
    return Shard(state.process_index, state.num_processes, device, state.wait_for_everyone)
