"""Data-parallel training on torch.distributed: which process this is, and the few collective steps training needs.

`torchrun --nproc-per-node N -m seqcompress fit ...` (or `seqcompress fit --nproc N`, which starts the same
workers through PyTorch's elastic launcher, `launch`) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT in each worker's environment. `start` joins the process group they describe (gloo on CPU, NCCL on
CUDA); without them it returns the one-process world and nothing else changes.

What each rank does (the rest is in `train`): every rank streams the same shuffled global batches (the order
comes from the shared seed) and computes on its share of each, so N processes take the steps one process takes
with the same global batch; the model is wrapped in DistributedDataParallel, which averages gradients; held-out
totals are summed over ranks; rank 0 alone writes the model, checkpoints and logs, and decides when a time
budget is spent.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from seqcompress.defaults import LAUNCHED_ENV, PEER_LOST_EXIT
from seqcompress.errors import InputError, PeerLost, SeqCompressError

TIMEOUT_ENV = "SEQCOMPRESS_DIST_TIMEOUT"  # seconds a collective waits for a rank that stopped answering
DEFAULT_TIMEOUT_S = 300


_PEER_SIGNS = ("gloo", "nccl", "connection closed", "connection reset", "broken pipe", "timed out", "timeout")


def _from_a_peer(exc: BaseException) -> bool:
    """Whether a collective failed because another rank is gone (the backends raise plain RuntimeErrors)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return False
    return isinstance(exc, dist.DistError) or any(sign in str(exc).lower() for sign in _PEER_SIGNS)


class Stopped(SeqCompressError):
    """The launcher received a signal (SIGTERM, SIGINT, SIGHUP) and stopped its workers."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {_signal_name(signum)}")
        self.signum = signum


class WorkerFailed(SeqCompressError):
    """A worker of `launch` ended with an error (exit status 1, or PEER_LOST_EXIT when the job lost a peer that
    its launcher does not watch: it said why itself) or was killed."""

    def __init__(self, rank: int, exitcode: int) -> None:
        how = f"was killed by {_signal_name(-exitcode)}" if exitcode < 0 else f"failed with exit status {exitcode}"
        super().__init__(f"worker rank {rank} {how}; the job was stopped")
        self.rank, self.exitcode = rank, exitcode




@contextlib.contextmanager
def peers_checked() -> Iterator[None]:
    """Turns the error a collective raises when another rank is gone (gloo: "Connection closed by peer", NCCL:
    a timeout or an aborted communicator) into PeerLost, one line instead of a backend trace."""
    try:
        yield
    except (RuntimeError, dist.DistError) as exc:
        if not (dist.is_available() and dist.is_initialized()) or not _from_a_peer(exc):
            raise  # this rank's own failure (out of memory, a CUDA error): it says so itself
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PeerLost(f"rank {dist.get_rank()}: a collective operation failed, another process of the job stopped "
                       f"or lost its connection ({first[:200]})") from exc


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank among `size` processes, `local_rank` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and reports."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def from_env() -> World:
    """The world torchrun describes in the environment (one process when it describes none)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise InputError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)") from None
    if size < 1 or not 0 <= rank < size:
        raise InputError(f"RANK {rank} is not in a world of WORLD_SIZE {size}")
    return World(rank, size, local)


def current() -> World:
    """The world of the process group this process has joined (one process when it has joined none)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), from_env().local_rank)
    return World()


def start(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group of the environment's world, if it has more than one process, and return it with
    this rank's device (cuda:LOCAL_RANK on CUDA)."""
    world = from_env()
    if not world.parallel:
        return world, device
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK {world.local_rank} has no GPU: {torch.cuda.device_count()} visible")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout,
                                device_id=device if device.type == "cuda" else None)
    return world, device


def finish() -> None:
    """The last collective of a job that went well: no rank leaves the process group while another (rank 0,
    saving the model) still belongs to it, so a worker never sees its peers' sockets close under it."""
    if dist.is_available() and dist.is_initialized():
        with peers_checked():
            dist.barrier()


def stop() -> None:
    """Leave the process group (at the end of a worker)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_values(values: Sequence[float]) -> list[float]:
    """Each value summed over all ranks (float64); the values themselves in a one-process world."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.tolist()


def sum_dict(sums: dict[str, float]) -> dict[str, float]:
    """A dict of additive totals summed over ranks; every rank must hold the same keys (sorted here)."""
    keys = sorted(sums)
    return dict(zip(keys, sum_values([sums[k] for k in keys])))


def gather_bytes(data: bytes) -> list[bytes] | None:
    """Every rank's `data`, in rank order, on rank 0 (None on the others); [data] in a one-process world.
    Bytes travel as uint8 tensors, so what crosses between processes is never unpickled."""
    if not (dist.is_available() and dist.is_initialized()):
        return [data]
    device, size = _device(), dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(size)]
    dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64, device=device))
    longest = int(max(s.item() for s in sizes))
    mine = torch.zeros(longest, dtype=torch.uint8, device=device)
    mine[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else mine[:0]
    pieces = [torch.empty(longest, dtype=torch.uint8, device=device) for _ in range(size)]
    dist.all_gather(pieces, mine)
    if dist.get_rank() != 0:
        return None
    return [bytes(p[: int(s.item())].cpu().numpy()) for p, s in zip(pieces, sizes)]


def rank0_says(flag: bool) -> bool:
    """Rank 0's `flag` on every rank (a time budget is decided on one clock, or ranks would disagree and hang)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([float(flag) if dist.get_rank() == 0 else 0.0], device=_device())
    dist.broadcast(t, 0)
    return bool(t.item())


def agree(error: BaseException | None) -> None:
    """A barrier that fails on every rank when it failed on one: each rank says whether its checks passed, so a
    rank that refuses (a bad option, an existing model) does not leave the others waiting in a collective."""
    if not (dist.is_available() and dist.is_initialized()):
        if error is not None:
            raise error
        return
    failed, on_rank0 = sum_values([float(error is not None), float(error is not None and dist.get_rank() == 0)])
    if error is not None and not (on_rank0 and dist.get_rank()):
        raise error
    if failed:  # rank 0 says why (the same for every rank, as a rule), or the rank that alone failed
        raise PeerLost(f"rank {dist.get_rank()}: the job stopped before training"
                       + (f" ({error})" if error is not None else ""))


def launch(nproc: int, argv: Sequence[str], nnodes: int = 1, node_rank: int = 0,
           endpoint: str | None = None) -> int:
    """Run `python -m seqcompress ARGV` in `nproc` worker processes through PyTorch's elastic launcher (what
    torchrun runs); returns 0, or raises WorkerFailed naming the first rank that failed, or Stopped.
    One node by default (a free port on 127.0.0.1); `nnodes`/`endpoint` join a c10d rendezvous."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise InputError(f"nproc must be at least 1, got {nproc}")
    # One node talks over the loopback interface only: the store's address the workers get (MASTER_ADDR) and
    # gloo's own connections then never depend on how (or whether) this machine's hostname resolves, or on
    # which network interface the hostname's address lands on.
    alone = nnodes == 1 and endpoint is None
    config = LaunchConfig(
        min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=nproc, run_id="seqcompress", rdzv_backend="c10d",
        rdzv_endpoint=endpoint or "127.0.0.1:0", max_restarts=0, monitor_interval=0.5,
        rdzv_configs={"rank": node_rank} if nnodes > 1 else {}, local_addr="127.0.0.1" if alone else None,
    )
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    os.environ[LAUNCHED_ENV] = "1"
    loopback = _loopback_interface() if alone and "GLOO_SOCKET_IFNAME" not in os.environ else None
    if loopback:
        os.environ["GLOO_SOCKET_IFNAME"] = loopback
    for name in list(logging.root.manager.loggerDict):  # the elastic agent's notes; our one line says it all
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, sys.executable)("-m", "seqcompress", *argv)
    except SignalException as exc:  # the launcher was told to stop; the agent has stopped the workers
        raise Stopped(int(exc.sigval)) from None
    except ChildFailedError as exc:
        # The first failure of a worker that failed by itself, before one that stopped because another one did
        # (PEER_LOST_EXIT), before one the launcher stopped (SIGTERM); within each, the launcher's own order (whole
        # seconds, then rank).
        stops = {-signal.SIGTERM, 128 + signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGINT}

        def order(item):
            rank, failure = item
            return (failure.exitcode in stops, failure.exitcode == PEER_LOST_EXIT, failure.timestamp, rank)

        rank, failure = min(exc.failures.items(), key=order)
        if failure.exitcode in stops:  # every worker was stopped by a signal: Ctrl-C or a stop sent to them
            interrupted = any(f.exitcode in (-signal.SIGINT, 128 + signal.SIGINT) for f in exc.failures.values())
            raise Stopped(signal.SIGINT if interrupted else signal.SIGTERM) from None
        raise WorkerFailed(rank, failure.exitcode) from None
    finally:
        os.environ.pop(LAUNCHED_ENV, None)  # for the workers only: this process reports
        if loopback:
            os.environ.pop("GLOO_SOCKET_IFNAME", None)
    return 0


def _loopback_interface() -> str | None:
    """The name of the loopback network interface (lo on Linux, lo0 on macOS), or None where there is none."""
    try:
        names = {name for _, name in socket.if_nameindex()}
    except OSError:
        return None
    return next((name for name in ("lo", "lo0") if name in names), None)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
