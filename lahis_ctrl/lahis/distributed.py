"""Data-parallel LAHIS scoring under torch.distributed (torchrun, accelerate launch): ranks, sharding, agreement.

A job started with `torchrun --nproc-per-node N -m lahis_ctrl score ...` (or `accelerate launch`, which sets the
same environment variables: WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) runs N copies of the same
program. `setup()` joins them into one process group: NCCL when CUDA is available (each rank on the GPU of its
LOCAL_RANK), gloo on CPUs. It initialises the group only when WORLD_SIZE > 1 and nobody has initialised one
already (a caller's own group is used as it is); a plain one-process run never touches torch.distributed.

Collective calls must never leave a rank waiting for a peer that has raised. The rule here:

  * everything that fails the same way on every rank (arguments, texts, tokenisation, faithful mode under
    several ranks) is checked before the first collective, so every rank raises the same error;
  * what can fail on one rank only (its checkpoint file, a corpus download, the computation itself, writing a
    file) runs inside `DistContext.agree(fn)`: every rank runs `fn`, then all of them exchange a flag per
    rank, and if any rank failed every rank raises (the failed one its own exception, the others a LahisError
    naming the failed ranks). No collective is ever entered by some ranks and skipped by others.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

import torch

from ..core.errors import LahisError

log = logging.getLogger(__name__)

T = TypeVar("T")

SPLITS = ("texts", "languages")
FAITHFUL_REFUSAL = ("faithful mode is sequential by definition (each text's gradient is taken after the AdamW step "
                    "of the previous one), so it cannot split one language's texts over {world} ranks: run it in one "
                    "process, use mode 'fast', or split whole languages over the ranks (split 'languages')")
# Long enough for ranks that resume from checkpoints at different points to meet at the final all-reduce.
DEFAULT_TIMEOUT_S = int(os.environ.get("LAHIS_DIST_TIMEOUT_S", 4 * 3600))
_OWNED_GROUP = False  # True when setup() initialised the process group (then it also destroys it)


def env_world_size() -> int:
    """The job's number of processes: the initialised group's size, else $WORLD_SIZE (1 when unset)."""
    if _initialized():
        return torch.distributed.get_world_size()
    return max(1, _env_int("WORLD_SIZE", 1))


def check_mode(mode: str, split: str = "texts", distributed: bool = True) -> None:
    """Refuse, before any rank joins a collective, what cannot run: an unknown split, and faithful mode with one
    language's texts split over several ranks."""
    if split not in SPLITS:
        raise LahisError(f"unknown split '{split}': use one of {SPLITS}")
    world = env_world_size() if distributed else 1
    if world > 1 and mode == "faithful" and split == "texts":
        raise LahisError(FAITHFUL_REFUSAL.format(world=world))


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError as exc:
        raise LahisError(f"{name}={os.environ.get(name)!r} is not a number") from exc


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: rank, world size, local rank (its GPU), and the collectives LAHIS uses.

    With world_size 1 every method is the identity (no torch.distributed call at all).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def comm_device(self) -> torch.device:
        """Where tensors must be for a collective: this rank's GPU under NCCL, the CPU under gloo."""
        backend = str(torch.distributed.get_backend())
        if "nccl" in backend and "gloo" not in backend:
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    # ------------------------------------------------------------------ collectives
    def failed_ranks(self, failed: bool) -> list[int]:
        """Every rank says whether it failed; all of them learn which ranks did (one all-reduce)."""
        if not self.active:
            return [0] if failed else []
        flags = torch.zeros(self.world_size, dtype=torch.int64, device=self.comm_device())
        flags[self.rank] = int(failed)
        torch.distributed.all_reduce(flags)
        return [r for r, f in enumerate(flags.tolist()) if f]

    def agree(self, fn: Callable[[], T], what: str = "a step",
              kept: str = "progress saved in checkpoints is kept") -> T:
        """Run fn() on every rank; if it raised on any rank, raise on every rank (no rank is left waiting).

        The rank(s) where fn raised re-raise their own exception; the others raise a LahisError naming them (and
        saying what of the run is `kept`).
        """
        if not self.active:
            return fn()
        error: Optional[BaseException] = None
        result = None
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the peers have been told
            error = exc
        failed = self.failed_ranks(error is not None)
        if error is not None:
            raise error
        if failed:
            raise LahisError(f"{what} failed on rank(s) {', '.join(map(str, failed))} of {self.world_size} "
                             f"(their error is printed above); {kept}: rerun to resume")
        return result

    def all_reduce_sum_(self, *tensors: torch.Tensor) -> None:
        """Sum each tensor over the ranks, in place (moved to the communication device and back)."""
        if not self.active:
            return
        dev = self.comm_device()
        for t in tensors:
            buf = t.to(dev)
            torch.distributed.all_reduce(buf)
            if buf is not t:
                t.copy_(buf)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank `src`'s obj on every rank (any picklable object)."""
        if not self.active:
            return obj
        box = [obj if self.rank == src else None]
        torch.distributed.broadcast_object_list(box, src=src, device=self.comm_device())
        return box[0]

    def all_gather_object(self, obj: Any) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank."""
        if not self.active:
            return [obj]
        out: list = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        self.failed_ranks(False)


LOCAL = DistContext()


def setup(timeout_s: Optional[int] = None) -> DistContext:
    """This process's DistContext; joins (and if needed initialises) the process group when WORLD_SIZE > 1.

    When the group is initialised here: NCCL if CUDA is available (after `torch.cuda.set_device(LOCAL_RANK)`,
    so set up before the model is loaded), else gloo; `timeout_s` (default $LAHIS_DIST_TIMEOUT_S or 4 hours)
    bounds how long a collective waits for a slow rank. A group the caller initialised is used as it is (with
    NCCL, collectives use torch.cuda.current_device(), which the caller sets).
    Idempotent: later calls return the same context.
    """
    global _OWNED_GROUP
    world = env_world_size()
    if world <= 1:
        return LOCAL
    if not torch.distributed.is_available():
        raise LahisError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    local_rank = _env_int("LOCAL_RANK", 0)
    if not _initialized():
        use_cuda = torch.cuda.is_available() and torch.distributed.is_nccl_available()
        if use_cuda:
            if local_rank >= torch.cuda.device_count():
                raise LahisError(f"LOCAL_RANK {local_rank} but this machine shows {torch.cuda.device_count()} GPU(s): start "
                                 "at most one rank per GPU (--nproc-per-node), or hide the GPUs (CUDA_VISIBLE_DEVICES=) "
                                 "to run on CPUs with gloo")
            torch.cuda.set_device(local_rank)
        timeout = datetime.timedelta(seconds=int(timeout_s or DEFAULT_TIMEOUT_S))
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
        _OWNED_GROUP = True
        atexit.register(shutdown)
        log.info("rank %d of %d joined the process group (%s)", torch.distributed.get_rank(), world,
                 torch.distributed.get_backend())
    # a group the caller initialised: its device choice (torch.cuda.current_device()) is left as it is
    return DistContext(rank=torch.distributed.get_rank(), world_size=torch.distributed.get_world_size(),
                       local_rank=local_rank)


def context(enabled: bool = True) -> DistContext:
    """`setup()` when enabled, else the one-process context (each rank works alone)."""
    return setup() if enabled else LOCAL


def shutdown() -> None:
    """Destroy the process group if `setup()` created it (the CLI calls this when a command ends)."""
    global _OWNED_GROUP
    if _OWNED_GROUP and _initialized():
        torch.distributed.destroy_process_group()
    _OWNED_GROUP = False


def rank_device(ctx: DistContext) -> Optional[torch.device]:
    """The GPU a rank should load its model on (cuda:LOCAL_RANK) when several ranks share a CUDA machine."""
    if ctx.active and torch.cuda.is_available():
        return torch.device("cuda", ctx.local_rank)
    return None


# ====================================================================== sharding
def shard_batches(costs: Sequence[int], world_size: int) -> list[list[int]]:
    """Deal batches (by index) to ranks so each rank gets about the same number of tokens; deterministic.

    `costs`: the padded tokens of each batch (rows x longest row: what its forward and backward cost).
    Longest-processing-time first: batches in decreasing cost (ties: lower index first) each go to the rank
    with the fewest tokens so far (ties: lower rank). Every rank then runs its batches in increasing index
    order, so the batches are exactly those of a one-process run, only dealt out.
    """
    if world_size < 1:
        raise LahisError(f"world_size must be >= 1, got {world_size}")
    loads = [0] * world_size
    shards: list[list[int]] = [[] for _ in range(world_size)]
    for b in sorted(range(len(costs)), key=lambda i: (-int(costs[i]), i)):
        r = min(range(world_size), key=lambda k: (loads[k], k))
        loads[r] += int(costs[b])
        shards[r].append(b)
    return [sorted(s) for s in shards]


def split_languages(languages: Sequence[str], world_size: int) -> list[list[str]]:
    """Whole languages per rank: language i goes to rank i % world_size (in the order given)."""
    return [list(languages[r::world_size]) for r in range(world_size)]


def rank_checkpoint_path(path: str | os.PathLike, rank: int, world_size: int) -> Path:
    """`<lang>.ckpt.safetensors` -> `<lang>.ckpt.rank<r>-of-<N>.safetensors` (a one-process run keeps `path`)."""
    path = Path(path)
    if world_size <= 1:
        return path
    return path.with_name(f"{path.stem}.rank{rank}-of-{world_size}{path.suffix}")


def rank_checkpoints(path: str | os.PathLike) -> list[Path]:
    """Every per-rank checkpoint file of `path` that exists, whatever the world size that wrote it."""
    path = Path(path)
    return sorted(path.parent.glob(f"{path.stem}.rank*-of-*{path.suffix}"))
