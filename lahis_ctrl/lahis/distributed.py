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

Ranks that do not agree never compute: before the first collective of a job the ranks exchange a digest of their
arguments (the CLI's options; score_heads' settings and texts) and of their model's weights fingerprint
(`DistContext.check_agreement`); any difference stops every rank with one line naming the setting and the ranks.
A rank whose peers never come fails within the peer timeout (`setup(peer_timeout_s=...)`, `lahis score
--peer_timeout`, env LAHIS_PEER_TIMEOUT_S; default 600 s) with one line saying which side is missing; the longer
collective timeout (LAHIS_DIST_TIMEOUT_S, 4 hours) only applies once every rank has joined.
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
# How long a starting rank waits for the others to join (and to agree on their arguments): a rank started by hand
# without its peers, or a peer that crashed while loading, fails in minutes, not hours.
DEFAULT_PEER_TIMEOUT_S = 600
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
        _collective(torch.distributed.all_reduce, flags)
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
            _collective(torch.distributed.all_reduce, buf)
            if buf is not t:
                t.copy_(buf)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank `src`'s obj on every rank (any picklable object)."""
        if not self.active:
            return obj
        box = [obj if self.rank == src else None]
        _collective(torch.distributed.broadcast_object_list, box, src=src, device=self.comm_device())
        return box[0]

    def all_gather_object(self, obj: Any) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank."""
        if not self.active:
            return [obj]
        out: list = [None] * self.world_size
        _collective(torch.distributed.all_gather_object, out, obj)
        return out

    def barrier(self) -> None:
        self.failed_ranks(False)

    def check_agreement(self, values: dict, what: str = "arguments") -> None:
        """Refuse, on every rank, to go on when the ranks were given different `values` (arguments, texts, the
        model's weights fingerprint...): a sum over ranks of results made from different settings would be
        labelled with rank 0's. One all-gather of a short digest per value (and a short text for the message)."""
        if not self.active:
            return
        from ..core.artifacts import canonical_json, fingerprint

        mine = {k: (fingerprint(v), _short(canonical_json(v))) for k, v in sorted(values.items())}
        everyone = self.all_gather_object(mine)
        for key in sorted({k for ranks in everyone for k in ranks}):
            seen = [ranks.get(key, (None, "(missing)")) for ranks in everyone]
            if len({digest for digest, _ in seen}) > 1:
                groups: dict[str, list[int]] = {}
                for r, (_, text) in enumerate(seen):
                    groups.setdefault(text, []).append(r)
                sides = "; ".join(f"rank{'s' if len(rs) > 1 else ''} {','.join(map(str, rs))}: {text}"
                                  for text, rs in groups.items())
                raise LahisError(f"the {self.world_size} ranks disagree on {what} '{key}' ({sides}); every rank must "
                                 "run the same command on the same model (torchrun and accelerate launch pass one "
                                 "command line to all of them)")


LOCAL = DistContext()


def _collective(fn, *args, **kwargs):
    """A torch.distributed collective whose failure (a peer rank that died or cannot be reached: gloo and NCCL raise
    a bare RuntimeError or a DistError with a C++ trace) is one LahisError line."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as exc:
        if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):  # this rank's own problem: said as it is
            raise
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise LahisError(f"rank {os.environ.get('RANK', '?')}: a collective with the other ranks failed "
                         f"({_short(first, 160)}): a peer rank stopped, was killed or cannot be reached; checkpoints "
                         "written so far are kept, rerun the job to resume") from None


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def resolve_peer_timeout(value: Optional[float] = None) -> float:
    """The peer timeout in seconds: `value`, else $LAHIS_PEER_TIMEOUT_S, else DEFAULT_PEER_TIMEOUT_S (600)."""
    if value is None:
        raw = os.environ.get("LAHIS_PEER_TIMEOUT_S")
        try:
            value = float(raw) if raw not in (None, "") else DEFAULT_PEER_TIMEOUT_S
        except ValueError:
            raise LahisError(f"LAHIS_PEER_TIMEOUT_S={raw!r} is not a number of seconds") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value != value:
        raise LahisError(f"the peer timeout must be a positive number of seconds, got {value!r}")
    return float(value)


def _startup_error(exc: BaseException, world: int, waited: float) -> LahisError:
    """torch.distributed's start-up failure as one line saying what is missing and how to fix it."""
    import errno

    text = " ".join(str(exc).split())
    rank, addr = os.environ.get("RANK", "?"), f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    hint = f"raise --peer_timeout (now {waited:g} s) if they start later"
    import re

    unset = re.search(r"environment variable (\w+) expected, but not set", text)
    if unset:
        return LahisError(f"WORLD_SIZE={world} but {unset.group(1)} is not set: start the ranks with torchrun or "
                          "accelerate launch (they set RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT), or unset "
                          "WORLD_SIZE to run one process")
    if "waiting for clients" in text:
        joined = text.split("waiting for clients.")[-1].split("clients joined")[0].strip()
        return LahisError(f"rank {rank} waited {waited:g} s at {addr} for the other ranks of WORLD_SIZE={world} and "
                          f"only {joined} joined: start all {world} ranks (torchrun --nproc-per-node {world} starts "
                          f"them together), or {hint}")
    if "timed out" in text.lower() and ("connect" in text.lower() or "client" in text.lower()):
        return LahisError(f"rank {rank} could not reach rank 0 at {addr} within {waited:g} s: start rank 0 (or check "
                          f"MASTER_ADDR / MASTER_PORT and the network), or {hint}")
    if "address already in use" in text.lower() or getattr(exc, "errno", None) == errno.EADDRINUSE:
        return LahisError(f"MASTER_PORT {os.environ.get('MASTER_PORT', '?')} is in use by another program: choose a "
                          "free port (torchrun --master-port N, or --standalone)")
    if "timed out" in text.lower() or "timeout" in text.lower():
        return LahisError(f"rank {rank} of {world}: the other ranks did not join within {waited:g} s ({_short(text, 160)}); "
                          f"start every rank, or {hint}")
    return LahisError(f"torch.distributed could not start (rank {rank} of {world}, {addr}): {_short(text, 200)}")


def setup(timeout_s: Optional[int] = None, peer_timeout_s: Optional[float] = None) -> DistContext:
    """This process's DistContext; joins (and if needed initialises) the process group when WORLD_SIZE > 1.

    When the group is initialised here: NCCL if CUDA is available (after `torch.cuda.set_device(LOCAL_RANK)`,
    so set up before the model is loaded), else gloo. `peer_timeout_s` (default $LAHIS_PEER_TIMEOUT_S or 600 s)
    bounds how long this rank waits for the others to join: a missing peer fails with one line (LahisError), as
    does any other start-up failure (RANK unset, a port in use). `timeout_s` (default $LAHIS_DIST_TIMEOUT_S or 4
    hours) then bounds how long a collective waits for a slow rank. A group the caller initialised is used as it
    is (with NCCL, collectives use torch.cuda.current_device(), which the caller sets).
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
        waited = resolve_peer_timeout(peer_timeout_s)
        try:
            # the rendezvous (every rank reaching the store) is bounded by the peer timeout; the group's own
            # timeout is the long one, for collectives that wait on slow ranks once all of them are there
            store, rank, world_size = next(torch.distributed.rendezvous(
                "env://", timeout=datetime.timedelta(seconds=waited)))
            torch.distributed.init_process_group("nccl" if use_cuda else "gloo", store=store, rank=rank,
                                                 world_size=world_size, timeout=timeout)
        except (RuntimeError, ValueError, OSError) as exc:  # DistError subclasses RuntimeError
            raise _startup_error(exc, world, waited) from None
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


def rank_checkpoints(path: str | os.PathLike, other_than: Optional[int] = None) -> list[Path]:
    """Every per-rank checkpoint file of `path` that exists, whatever the world size that wrote it (`other_than`:
    only those of another world size; a one-process checkpoint is `path` itself and world size 1)."""
    path = Path(path)
    found = sorted(path.parent.glob(f"{path.stem}.rank*-of-*{path.suffix}"))
    if other_than is not None:
        found = [p for p in found if not p.name.endswith(f"-of-{other_than}{path.suffix}")]
        if other_than != 1 and path.is_file():
            found.insert(0, path)
    return found
