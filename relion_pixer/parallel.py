"""Scale-out of the picking job: worker processes within a node, MPI ranks across nodes, GPU assignment.

* :func:`mpi_world` tells whether the job was started by an MPI launcher (``mpirun``, ``mpiexec``, ``srun``) and,
  only then, imports :mod:`mpi4py` (the optional ``[mpi]`` extra). Without a launcher nothing MPI is touched.
* :func:`parse_gpu_ids` / :func:`device_for` read RELION's ``--gpu`` syntax (``"0,1:2,3"``: ranks separated by
  ``:``, the workers of one rank by ``,``; empty: every visible device) and give each worker its device.
* :func:`run_dynamic` runs tasks in spawned worker processes, handing them out one at a time as workers become free,
  so that a slow micrograph never holds up a fixed share of the others.
* :class:`SharedTasks` does the same across MPI ranks: rank 0 hands the job's micrographs out one at a time to
  whichever rank asks, from a thread that polls MPI without busy-waiting.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

__all__ = [
    "MPIError",
    "World",
    "launcher_size",
    "launcher_rank",
    "mpi_world",
    "gather_when_all_done",
    "wait_for_all",
    "SharedTasks",
    "parse_gpu_ids",
    "device_for",
    "available_cpus",
    "threads_per_worker",
    "die_with_parent",
    "WorkerDied",
    "run_dynamic",
]

#: Environment variables an MPI launcher sets to the number of ranks (Open MPI, MPICH / Intel MPI / Slurm PMI,
#: MVAPICH) and to this process's rank.
SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK", "PMIX_RANK")


class MPIError(RuntimeError):
    """Started by an MPI launcher with several ranks, but MPI cannot be used (mpi4py missing or broken)."""


@dataclass(frozen=True)
class World:
    """The ranks of one job: ``comm`` is an mpi4py communicator, or None for a single process.

    Attributes
    ----------
    comm : mpi4py.MPI.Comm or None
        ``MPI.COMM_WORLD`` when launched with several ranks.
    rank, size : int
        This process's rank and the number of ranks (0 and 1 without MPI).
    """

    comm: Any = None
    rank: int = 0
    size: int = 1

    @property
    def leader(self) -> bool:
        """Rank 0: reads the input, writes the job-wide outputs and the exit marker."""
        return self.rank == 0


def _env_int(names: Sequence[str], default: int) -> int:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return default


def launcher_size() -> int:
    """Number of ranks an MPI launcher started (from its environment variables; 1 without a launcher)."""
    return max(1, _env_int(SIZE_VARS, 1))


def launcher_rank() -> int:
    """This process's rank as the MPI launcher's environment says (0 without a launcher); needs no mpi4py."""
    return _env_int(RANK_VARS, 0) if launcher_size() > 1 else 0


def mpi_world() -> World:
    """The job's ranks: mpi4py's ``COMM_WORLD`` under an MPI launcher with several ranks, else a single process.

    mpi4py is imported only here and only when a launcher's environment variables say there are several ranks, so
    a machine without MPI runs the job exactly as before.

    Raises
    ------
    MPIError
        Several ranks were launched but mpi4py is not installed or cannot initialise MPI.
    """
    size = launcher_size()
    if size <= 1:
        return World()
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise MPIError(f"started by an MPI launcher with {size} ranks, but mpi4py is not installed "
                       f"({exc}); install it with: pip install 'relion-pixer[mpi]', or run without mpirun") from None
    except Exception as exc:  # noqa: BLE001 - an mpi4py that finds no MPI library raises RuntimeError / OSError
        raise MPIError(f"started by an MPI launcher with {size} ranks, but MPI cannot be initialised: "
                       f"{type(exc).__name__}: {exc}") from None
    comm = MPI.COMM_WORLD
    return World(comm, comm.Get_rank(), comm.Get_size())


def gather_when_all_done(world: World, value: Any, poll_s: float = 0.05, stops: tuple = (),
                         on_stop: Callable[[BaseException], Any] | None = None) -> list | None:
    """Gather ``value`` from every rank to rank 0 once all ranks have arrived (None on the other ranks).

    A rank that finishes its share early waits in a non-blocking barrier, polled every ``poll_s`` seconds, instead of
    in MPI's blocking gather: MPI libraries busy-poll there, which takes a core from the ranks still picking on a
    shared or oversubscribed node, and a blocked rank would not see SIGTERM until the others arrive.

    An exception of the types ``stops`` raised while waiting (a signal turned into one, e.g. a queue system's SIGTERM
    reaching every rank as they finish) does not leave the wait: ``on_stop(exc)`` gives the value to gather instead,
    and the rank waits on in the same barrier, so that every rank still takes part in the gather (a rank leaving it
    would leave rank 0 in the gather for ever, or the job without its list of finished work).
    """
    request = world.comm.Ibarrier()
    while True:
        try:
            _wait(request, poll_s)
            break
        except stops as exc:
            if on_stop is None:
                raise
            value = on_stop(exc)
    return world.comm.gather(value, root=0)


def wait_for_all(world: World, poll_s: float = 0.05) -> None:
    """Return once every rank has called this: a barrier polled every ``poll_s`` seconds, so that a waiting rank
    sleeps instead of busy-polling a core (as MPI's blocking collectives do) and still sees signals."""
    _wait(world.comm.Ibarrier(), poll_s)


def _wait(request, poll_s: float) -> None:
    """Return once the MPI ``request`` has completed, testing it every ``poll_s`` seconds (no busy-wait)."""
    while not request.Test():
        time.sleep(poll_s)


class SharedTasks:
    """The job's tasks, handed out one at a time to whichever MPI rank asks next (dynamic, like the workers).

    Every rank iterates over its instance: each task comes to exactly one rank, in order of asking, so a rank that
    meets slow (crowded, large) micrographs takes fewer of them. Rank 0 serves the others' requests from a thread
    that polls MPI every ``poll_s`` seconds (MPI's blocking calls would busy-wait on a core the ranks pick on) and
    takes its own tasks directly; a rank waiting for an answer polls the same way. Without ``MPI_THREAD_MULTIPLE``
    (needed for rank 0's thread) each rank takes every ``size``-th task, as a static share. Rank 0 must call
    :meth:`close` once every rank has stopped asking (after :func:`wait_for_all`).

    ``len()`` is the number of tasks of the whole job.
    """

    _ASK, _ANSWER = 7101, 7102

    def __init__(self, world: World, tasks: Sequence, poll_s: float = 0.002):
        self.world, self.tasks, self.poll_s = world, list(tasks), float(poll_s)
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self.dynamic = world.size > 1 and _thread_multiple()
        if self.dynamic and world.leader:
            self._thread = threading.Thread(target=self._serve, name="pixer-mpi-tasks", daemon=True)
            self._thread.start()

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        if self.world.size == 1:
            yield from self.tasks
            return
        if not self.dynamic:
            yield from self.tasks[self.world.rank :: self.world.size]
            return
        while True:
            i = self._take() if self.world.leader else self._ask()
            if i < 0:
                return
            yield self.tasks[i]

    def _take(self) -> int:
        with self._lock:
            if self._next >= len(self.tasks):
                return -1
            self._next += 1
            return self._next - 1

    def _ask(self, stop: bool = False) -> int:
        import numpy as np

        answer = np.zeros(1, np.int64)
        reply = self.world.comm.Irecv(answer, source=0, tag=self._ANSWER)  # posted before asking: no deadlock
        _wait(self.world.comm.Isend(np.full(1, int(stop), np.int64), dest=0, tag=self._ASK), self.poll_s)
        _wait(reply, self.poll_s)
        return int(answer[0])

    def _serve(self) -> None:
        import numpy as np
        from mpi4py import MPI

        comm = self.world.comm
        ask = np.zeros(1, np.int64)
        status = MPI.Status()
        request = comm.Irecv(ask, source=MPI.ANY_SOURCE, tag=self._ASK)
        while True:
            if not request.Test(status):
                if self._stop.is_set():
                    request.Cancel()
                    request.Wait()
                    return
                time.sleep(self.poll_s)
                continue
            source = status.Get_source()
            if ask[0]:  # a rank stopping the job: no more tasks for anyone
                self.stop()
            answer = np.array([self._take()], np.int64)
            request = comm.Irecv(ask, source=MPI.ANY_SOURCE, tag=self._ASK)
            _wait(comm.Isend(answer, dest=source, tag=self._ANSWER), self.poll_s)

    def stop(self) -> None:
        """Hand out no more tasks, to any rank (a rank stopping the job: ``strict``, a signal): on rank 0 at once; on
        another rank by telling rank 0, which answers once it has stopped. Each rank still finishes what it has."""
        if not self.dynamic:
            return
        if self.world.leader:
            with self._lock:
                self._next = len(self.tasks)
        else:
            self._ask(stop=True)

    def close(self) -> None:
        """Stop rank 0's thread (every rank must have stopped asking)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None


def _thread_multiple() -> bool:
    from mpi4py import MPI

    return MPI.Query_thread() == MPI.THREAD_MULTIPLE


# ----------------------------------------------------------------------------------------------------------------
# devices and threads
# ----------------------------------------------------------------------------------------------------------------


def parse_gpu_ids(text: str | None) -> list[list[int]]:
    """Read RELION's ``--gpu`` value: one list of device ids per rank (``:``), per worker within it (``,``).

    Parameters
    ----------
    text : str or None
        ``"0,1:2,3"`` (rank 0 uses devices 0 and 1, rank 1 devices 2 and 3), ``"0:1"``, ``"1"``; ``None`` or an
        empty string: every visible device. Spaces are ignored.

    Returns
    -------
    list of list of int
        ``[]`` for "every visible device"; otherwise one list per rank group, an empty list where a group was left
        empty (that rank uses every visible device).

    Raises
    ------
    ValueError
        A part that is not a whole number >= 0.
    """
    if text is None or not str(text).strip():
        return []
    groups = []
    for group in str(text).replace(" ", "").split(":"):
        ids = []
        for part in group.split(","):
            if part == "":
                continue
            if not part.isdigit():
                raise ValueError(f"--gpu must list device numbers as RELION does (e.g. 0,1 or 0:1), not {text!r}")
            ids.append(int(part))
        groups.append(ids)
    return groups


def device_for(groups: list[list[int]], rank: int, worker: int, workers: int, visible: int) -> str:
    """The CUDA device of one worker of one rank, as ``"cuda:N"``.

    Parameters
    ----------
    groups : list of list of int
        From :func:`parse_gpu_ids`. Ranks beyond the groups given reuse them cyclically, as RELION does; so do
        workers beyond a group's ids. An empty group (or none) spreads ranks and workers over all visible devices.
    rank, worker, workers : int
        This rank, this worker within it, and the number of workers per rank.
    visible : int
        Number of visible CUDA devices.

    Raises
    ------
    ValueError
        No visible device, or an id that is not visible.
    """
    if visible < 1:
        raise ValueError("no CUDA device is visible")
    group = groups[rank % len(groups)] if groups else []
    if not group:
        return f"cuda:{(rank * workers + worker) % visible}"
    device = group[worker % len(group)]
    if device >= visible:
        raise ValueError(f"--gpu asks for device {device}, but only {visible} CUDA device(s) are visible "
                         f"(numbered 0 to {visible - 1})")
    return f"cuda:{device}"


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def threads_per_worker(threads: int | None, workers: int) -> int:
    """Torch threads for each of ``workers`` processes sharing ``threads`` (default: the available cores)."""
    total = threads if threads else available_cpus()
    return max(1, total // max(1, workers))


# ----------------------------------------------------------------------------------------------------------------
# worker processes
# ----------------------------------------------------------------------------------------------------------------


def die_with_parent() -> None:
    """Make this (worker) process end when the process that started it dies, even by SIGKILL, so that a killed job
    leaves no workers behind (Linux: ``prctl(PR_SET_PDEATHSIG)``; elsewhere nothing is done)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - no prctl
        return
    if os.getppid() == 1:  # the parent died before the call above
        os._exit(1)


class WorkerDied(RuntimeError):
    """A worker process ended without finishing its task (killed, out of memory, crashed)."""


def run_dynamic(
    tasks: Iterable[tuple],
    workers: int,
    initializer: Callable,
    initargs: tuple,
    task_fn: Callable,
    on_result: Callable[[Any], bool],
    should_stop: Callable[[], bool],
    poll_s: float = 0.5,
) -> bool:
    """Run ``task_fn(*task)`` for every task in ``workers`` spawned processes, one task per free worker.

    At most ``workers + 1`` tasks are in flight, so that stopping (``should_stop`` true, or ``on_result`` returning
    False) leaves little queued: the tasks that have started finish and are reported; those still queued are
    cancelled where the pool has not yet taken them, and the rest are not run. ``should_stop`` is asked before any
    task is handed out, so a stop already asked for runs none. An
    exception of a task, or :class:`KeyboardInterrupt` in this process, stops the pool: queued tasks are cancelled
    and, for an interrupt, the workers are terminated at once.

    Parameters
    ----------
    tasks : iterable of tuple
        Arguments of each call of ``task_fn``.
    workers : int
        Number of processes (each runs ``initializer(*initargs)`` once, e.g. to load a model).
    initializer, task_fn : callable
        Module-level functions (they are pickled by reference into the spawned processes).
    on_result : callable
        Called in this process with each task's return value, in the order tasks finish; False stops handing out.
    should_stop : callable
        Polled about every ``poll_s`` seconds and after each result; True stops handing out.

    Returns
    -------
    bool
        True when every task ran, False when stopped early.

    Raises
    ------
    WorkerDied
        A worker process died (its task is lost; the others' finished work is kept).
    Exception
        Whatever a task raised, re-raised here.
    """
    ctx = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and CUDA state
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=initializer, initargs=initargs)
    pending: set = set()
    queue = iter(tasks)
    stopped = exhausted = False
    clean = False
    try:
        stopped = should_stop()
        while True:
            while not (stopped or exhausted) and len(pending) < workers + 1:
                try:
                    task = next(queue)
                except StopIteration:
                    exhausted = True
                    break
                pending.add(pool.submit(task_fn, *task))
            if not pending:
                break
            done, pending = cf.wait(pending, timeout=poll_s, return_when=cf.FIRST_COMPLETED)
            for future in done:
                if future.cancelled():
                    continue
                try:
                    result = future.result()
                except cf.process.BrokenProcessPool:
                    raise WorkerDied("a worker process died before finishing its micrograph (killed, out of memory "
                                     "or crashed); finished micrographs are kept, run the job again to continue") from None
                if not on_result(result):
                    stopped = True
            if not stopped and should_stop():
                stopped = True
            if stopped:
                for future in pending:
                    future.cancel()  # those the pool has not taken yet; the started ones finish and report
        clean = True
        return not stopped
    except BaseException as exc:
        for future in pending:
            future.cancel()
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SIGTERM turned into an exception
            _terminate(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=not clean)


def _terminate(pool: cf.ProcessPoolExecutor) -> None:
    """Stop the pool's processes now (an interrupt or SIGTERM of the job must not wait for micrographs)."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            proc.terminate()
        except Exception:  # noqa: BLE001 - already gone
            pass
