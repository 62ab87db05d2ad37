"""Collection on several processes of one ``torch.distributed`` process group (``torchrun``).

``torchrun --nproc-per-node N -m tokcal collect MODEL DATA -o OUT`` (or a collector called with
``out_dir`` under an initialised process group) assigns document i of the input list to rank
``i % world_size``; each rank writes its own parts and journal (writer ``rank00000``, ...) into the
same dataset directory (:mod:`tokcal.sources.dataset`), and after a barrier rank 0 merges the
manifest. Only the barrier crosses the network: no logits, no tables. ``sequence_id`` stays the
document's index in the full input list, so the dataset equals a single-process collection row for
row (after sorting by sequence and position).

A rerun resumes: every rank skips the documents any journal lists (also with another number of
ranks), so a kill of any rank at any moment loses only unflushed work, never a listed document.

Imports torch lazily: importing this module is cheap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shard:
    """This process's share of the documents: ``index % world == rank``; ``writer`` names its files."""

    rank: int = 0
    world: int = 1

    @property
    def writer(self) -> str:
        return "main" if self.world == 1 else f"rank{self.rank:05d}"

    def mine(self, index: int) -> bool:
        return index % self.world == self.rank


def current_shard() -> Shard:
    """The shard of this process: from an initialised ``torch.distributed`` process group, else one
    process. Never imports torch when it was not imported already (a torch-free caller has no group)."""
    import sys

    if "torch" not in sys.modules:
        return Shard()
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return Shard()
    return Shard(dist.get_rank(), dist.get_world_size())


def launched_by_torchrun() -> bool:
    """True when the environment of ``torchrun`` (``WORLD_SIZE`` > 1 and a rendezvous address) is set."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "MASTER_ADDR" in os.environ


def init_from_env(device: str | None) -> tuple[Shard, str]:
    """Initialise the process group torchrun describes (nccl on CUDA, else gloo); returns the shard and
    this rank's device (``cuda:LOCAL_RANK`` when CUDA is present and ``device`` is not given)."""
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group(backend=backend)
    return current_shard(), device


def barrier_and_merge(writer: Any) -> None:
    """Wait for every rank, then let rank 0 merge the dataset manifest (others return at once)."""
    shard = current_shard()
    if shard.world > 1:
        import torch.distributed as dist

        dist.barrier()
    if shard.rank == 0:
        writer.merge()
    if shard.world > 1:
        import torch.distributed as dist

        dist.barrier()  # nobody reads the directory before the merge is written


def leave_group() -> None:
    """Destroy the process group :func:`init_from_env` made, if any: a rank that exits with it alive can
    abort in its teardown ("terminate called without an active exception")."""
    import sys

    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
