"""Scale-out of the picking job (relion_pixer.parallel, job.py): worker processes, --gpu, MPI ranks.

The MPI tests launch real ``mpirun`` processes (Open MPI or MPICH with mpi4py, which ``make setup`` installs); they
skip, saying why, only where no MPI launcher or no mpi4py can be found.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import jobrun
from relion_pixer import io, job, parallel, relion
from test_job import IN_MICS, RELION_CMD, FakePicker, check_relion_outputs, made_project, run, write_mrc

REPO = Path(__file__).resolve().parents[1]
JOB = "External/job012"


# ------------------------------------------------------------------------------------------------------------------
# pickable pickers for worker processes (module level, so that spawned workers can import them)
# ------------------------------------------------------------------------------------------------------------------


def _job_dir_of() -> Path:
    return Path.cwd() / JOB


def slow_picker(image, angpix, diameter_A, params):
    """FakePicker's picks after a pause, so that several micrographs are in flight at once."""
    time.sleep(0.15)
    return FakePicker()(image, angpix, diameter_A, params)


def abort_after_two(image, angpix, diameter_A, params):
    """Touch RELION_JOB_ABORT_NOW once two coordinate files exist (what RELION's Abort button does)."""
    time.sleep(0.15)
    if len(list((_job_dir_of() / "Movies").glob("*_autopick.star"))) >= 2:
        (_job_dir_of() / relion.ABORT_NOW).touch()
    return FakePicker()(image, angpix, diameter_A, params)


def out_of_memory(image, angpix, diameter_A, params):
    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


def dies_on_the_third(image, angpix, diameter_A, params):
    """The worker that gets micrograph 3 is killed (the kernel's OOM killer, a segfault in a library)."""
    if float(image[0, 0]) == MARKED:
        os.kill(os.getpid(), 9)
    return FakePicker()(image, angpix, diameter_A, params)


MARKED = 1234.5


# ------------------------------------------------------------------------------------------------------------------
# options and devices
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, groups", [
    (None, []), ("", []), ("  ", []), ("0", [[0]]), ("0,1", [[0, 1]]), ("0:1", [[0], [1]]),
    ("0,1:2,3", [[0, 1], [2, 3]]), ("1:", [[1], []]), (" 0 , 2 ", [[0, 2]]),
])
def test_gpu_ids_in_relion_syntax(text, groups):
    assert parallel.parse_gpu_ids(text) == groups


@pytest.mark.parametrize("text", ["a", "0;1", "-1", "0.5", "cuda:0"])
def test_bad_gpu_ids(text):
    with pytest.raises(ValueError, match="--gpu"):
        parallel.parse_gpu_ids(text)


def test_device_for_ranks_and_workers():
    d = parallel.device_for
    # "0:1": rank 0 on device 0, rank 1 on device 1, a third rank cycles back to the first group (as RELION does)
    assert [d([[0], [1]], r, 0, 1, 2) for r in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    # "0,1": the workers of one rank share the listed devices
    assert [d([[0, 1]], 0, w, 3, 2) for w in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    # empty: ranks and workers spread over all visible devices
    assert [d([], r, w, 2, 4) for r in range(2) for w in range(2)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert d([[2], []], 1, 1, 2, 3) == "cuda:0"  # (1 * 2 + 1) % 3
    with pytest.raises(ValueError, match="device 3, but only 2"):
        d([[3]], 0, 0, 1, 2)
    with pytest.raises(ValueError, match="no CUDA device"):
        d([], 0, 0, 1, 0)


def test_threads_per_worker():
    assert parallel.threads_per_worker(8, 2) == 4
    assert parallel.threads_per_worker(3, 2) == 1
    assert parallel.threads_per_worker(1, 4) == 1
    assert parallel.threads_per_worker(None, 1) == parallel.available_cpus()


def test_workers_and_gpu_options():
    base = ["--o", "x/", "--in_mics", "m.star", "--particle_diameter", "150"]
    opts = job.parse_args(base)
    assert opts.workers == 1 and opts.gpu is None
    opts = job.parse_args(base + ["--workers", "3", "--gpu", "0:1", "--j", "6"])
    assert (opts.workers, opts.gpu, opts.threads) == (3, "0:1", 6)
    assert job.parse_args(base + ["--gpu"]).gpu == ""  # RELION's empty value: every visible device
    with pytest.raises(job.UsageError, match="--workers must be at least 1"):
        job.parse_args(base + ["--workers", "0"])
    with pytest.raises(job.UsageError, match="--gpu must list device numbers"):
        job.parse_args(base + ["--gpu", "x"])
    assert any("--gpu 1 is ignored with --device cpu" in w
               for w in job.parse_args(base + ["--device", "cpu", "--gpu", "1"]).warnings)
    assert "workers N" in job.HELP and "gpu IDS" in job.HELP


def test_no_launcher_means_no_mpi(monkeypatch):
    for name in parallel.SIZE_VARS + parallel.RANK_VARS:
        monkeypatch.delenv(name, raising=False)
    assert parallel.mpi_world() == parallel.World()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")  # mpirun -n 1: a single process, as without mpirun
    assert parallel.mpi_world().comm is None


# ------------------------------------------------------------------------------------------------------------------
# worker processes
# ------------------------------------------------------------------------------------------------------------------


def _outputs(root: Path) -> dict[str, bytes]:
    """Every coordinate file and the coordinate list, by path."""
    jd = root / JOB
    files = {str(p.relative_to(jd)): p.read_bytes() for p in sorted(jd.rglob("*_autopick.star"))}
    files["autopick.star"] = (jd / "autopick.star").read_bytes()
    return files


def test_workers_pick_everything_once_with_the_same_outputs(tmp_path, monkeypatch):
    one = made_project(tmp_path / "one", n=7)
    two = made_project(tmp_path / "two", n=7)
    monkeypatch.chdir(one)
    rc, _, err = run(RELION_CMD, slow_picker)
    assert rc == 0, err
    monkeypatch.chdir(two)
    rc, out, err = run(RELION_CMD + " --workers 3", slow_picker)
    assert rc == 0, err
    assert "3 worker processes on cpu" in out
    assert "3 processes picked in parallel" in out
    assert len([line for line in out.splitlines() if ": 4 particles," in line]) == 7
    check_relion_outputs(two)
    assert _outputs(two) == _outputs(one)


def test_workers_abort_and_continue(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=8)
    monkeypatch.chdir(root)
    jd = root / JOB
    rc, out, _ = run(RELION_CMD + " --workers 2", abort_after_two)
    assert rc == 2
    assert "RELION_JOB_ABORT_NOW found" in out
    assert (jd / relion.EXIT_ABORTED).exists() and not (jd / relion.ABORT_NOW).exists()
    finished = sorted((jd / "Movies").glob("*_autopick.star"))
    assert 2 <= len(finished) < 8
    assert len(io.read_star(jd / "autopick.star")["coordinate_files"]) == len(finished)
    assert not list(jd.rglob(f"*{io.TMP_SUFFIX}"))
    rc, out, err = run(RELION_CMD + " --workers 2", slow_picker)
    assert rc == 0, err
    assert f"{8 - len(finished)} to pick, {len(finished)} already picked" in out
    check_relion_outputs(root)


def test_a_worker_engine_error_fails_the_job_with_its_reason(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=3)
    monkeypatch.chdir(root)
    rc, _, err = run(RELION_CMD + " --workers 2", out_of_memory)
    assert rc == 1
    assert err.strip().endswith("ERROR: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert (root / JOB / relion.EXIT_FAILURE).exists()
    assert not list((root / JOB).rglob(f"*{io.TMP_SUFFIX}"))


def test_a_killed_worker_fails_the_job_and_keeps_the_rest(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=5)
    entries = io.read_micrographs_star(root / IN_MICS, project_dir=root)
    data = np.random.default_rng(1).normal(size=(256, 256)).astype(np.float32)
    data[0, 0] = MARKED
    write_mrc(entries[2].path, data, None)
    monkeypatch.chdir(root)
    rc, _, err = run(RELION_CMD + " --workers 2", dies_on_the_third)
    assert rc == 1
    assert "ERROR: a worker process died before finishing its micrograph" in err and "MPI rank" not in err
    assert (root / JOB / relion.EXIT_FAILURE).exists()
    assert not (root / JOB / "Movies" / "mic_002_autopick.star").exists()
    assert not list((root / JOB).rglob(f"*{io.TMP_SUFFIX}"))
    # the micrographs finished before the worker died are listed (and the node written), as after an abort
    finished = sorted(str(p.relative_to(root)) for p in (root / JOB / "Movies").glob("*_autopick.star"))
    listed = io.read_star(root / JOB / "autopick.star")["coordinate_files"]["rlnMicrographCoordinates"]
    assert finished and sorted(listed) == finished
    assert (root / JOB / relion.OUTPUT_NODES).exists()
    # continuing picks exactly what is missing
    rc, out, err = run(RELION_CMD + " --workers 2", slow_picker)
    assert rc == 0, err
    check_relion_outputs(root)


def test_bad_micrographs_with_workers_are_skipped_or_fatal_with_strict(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=4)
    entries = io.read_micrographs_star(root / IN_MICS, project_dir=root)
    entries[1].path.write_bytes(b"not an mrc file at all" * 10)
    monkeypatch.chdir(root)
    rc, out, err = run(RELION_CMD + " --workers 2", slow_picker)
    assert rc == 0, err
    assert "skipping micrograph: MotionCorr/job002/Movies/mic_001.mrc: file is too small to be an MRC file" in err
    assert "Skipped 1 micrograph(s)" in out
    assert len(io.read_star(root / JOB / "autopick.star")["coordinate_files"]) == 3
    shutil.rmtree(root / JOB)
    rc, out, err = run(RELION_CMD + " --workers 2 --strict", slow_picker)  # a broken header: found before any work
    assert rc == 1 and "mic_001.mrc: file is too small to be an MRC file (220 bytes) (--strict: stopping before" in err
    assert (root / JOB / relion.EXIT_FAILURE).exists()
    shutil.rmtree(root / JOB)
    image = np.zeros((64, 64), np.float32)
    image[3, 3] = np.inf  # found by the worker that reads its pixels
    write_mrc(entries[1].path, image, 1.5)
    rc, out, err = run(RELION_CMD + " --workers 2 --strict", slow_picker)
    assert rc == 1 and "mic_001.mrc: contains 1 NaN or infinite pixel values (--strict: stopping)" in err
    assert (root / JOB / relion.EXIT_FAILURE).exists()


def test_worker_setup_error_is_reported_like_without_workers(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=2)
    monkeypatch.chdir(root)
    opts = job.parse_args((RELION_CMD + " --workers 2 --device cpu --model missing.pt").split())
    import io as _stdio

    out, err = _stdio.StringIO(), _stdio.StringIO()
    assert job.run_job(opts, out=out, err=err) == 1
    assert "missing.pt" in err.getvalue() and err.getvalue().startswith("ERROR:")
    assert (root / JOB / relion.EXIT_FAILURE).exists()


def _sim_project(root: Path, n: int, size: int = 384) -> Path:
    """A project whose micrographs hold simulated particles (150 A at 1.5 A/px), so that the networks pick."""
    jobrun.write_project(root, n, size=size, angpix=1.5, diameter_A=150.0, bases=n, seed=5)
    return root


def test_real_networks_with_workers_give_byte_identical_files(tmp_path):
    """The whole chain in 2 worker processes (1 thread each) writes the same bytes as the job's own process."""
    one = _sim_project(tmp_path / "one", n=4)
    two = tmp_path / "two"
    shutil.copytree(one, two)
    base = [sys.executable, str(REPO / "external_job.py")] + RELION_CMD.split() + ["--device", "cpu"]
    for root, extra in ((one, []), (two, ["--j", "2", "--workers", "2"])):
        proc = subprocess.run(base + extra, cwd=root, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    assert re.search(r"2 worker processes on cpu \((float32|bfloat16)\), 1 thread\(s\) each", proc.stdout)
    got, want = _outputs(two), _outputs(one)
    assert got == want
    assert sum(len(io.read_coordinates_star(two / JOB / name)) for name in got if name != "autopick.star") > 0


# ------------------------------------------------------------------------------------------------------------------
# MPI
# ------------------------------------------------------------------------------------------------------------------


def mpirun_command(n: int) -> list[str]:
    """``mpirun -n N`` for this machine's MPI (:func:`benchmarks.jobrun.mpirun_command`); skips when there is none."""
    try:
        return jobrun.mpirun_command(n)
    except LookupError as exc:
        pytest.skip(str(exc))


MPI_DRIVER = """
import os, sys, time
sys.path.insert(0, {repo!r})
import numpy as np
from relion_pixer import job, relion
from relion_pixer.pipeline import PickResult

RANK = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0")))
SIZE = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("PMI_SIZE", "1")))
MODE = {mode!r}

CALLS = 0
ABORT = "External/job012/RELION_JOB_ABORT_NOW"

STARTED = "External/job012/rank1_started"
SECOND = "External/job012/rank0_second"

def touch(path):
    open(path, "w").close()

def wait_for(path):
    deadline = time.time() + 60
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.02)

def pick(image, angpix, d, params):
    global CALLS
    CALLS += 1
    if SIZE > 1 and CALLS == 1 and MODE != "real":
        # rank 0 finishes its first micrograph only once rank 1 has one, so that each rank picks some whatever the
        # load on the machine (micrographs are handed out as the ranks ask)
        if RANK == 1:
            touch(STARTED)
        elif RANK == 0:
            wait_for(STARTED)
    time.sleep(0.1 if MODE != "uneven" or RANK == 0 else 2.0)
    if MODE.startswith("tail"):
        # one micrograph each; the slow rank, once the other has had time to finish and wait for it, sends SIGTERM to
        # both ranks (a queue system stopping the job at its end)
        import signal
        touch(f"External/job012/pid{{RANK}}_{{os.getpid()}}")
        if RANK == int(MODE[-1]):
            time.sleep(1.5)
            other = [f for f in os.listdir("External/job012") if f.startswith(f"pid{{1 - RANK}}_")]
            os.kill(int(other[0].split("_")[1]), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    if MODE == "fail" and RANK == 1:
        raise RuntimeError("the GPU of rank 1 fell off the bus")
    if MODE == "abort" and CALLS == 2:
        # rank 1 presses Abort during its second micrograph once rank 0 is in its second too, and rank 0 finishes
        # its second only once Abort is there: each rank stops after exactly two whatever the load on the machine
        if RANK == 0:
            touch(SECOND)
            wait_for(ABORT)
        else:
            wait_for(SECOND)
            touch(ABORT)
    h, w = image.shape
    xy = np.array([[w * 0.25, h * 0.25], [w * 0.75, h * 0.75]]) + float(image[0, 0])
    return PickResult(xy, np.array([0.9, 0.7]), None, (1.0, 1.0))

rc = job.main(sys.argv[1:]) if MODE == "real" else job.run_job(job.parse_args(sys.argv[1:]), pick_fn=pick)
import resource
u = resource.getrusage(resource.RUSAGE_SELF)
print(f"cpu of rank {{RANK}}: {{u.ru_utime + u.ru_stime:.2f}}", flush=True)
sys.exit(rc)
"""


def _mpi_run(root: Path, tmp_path: Path, n: int, mode: str, extra: list[str] = (), timeout: int = 240):
    driver = tmp_path / f"driver_{mode}.py"
    driver.write_text(MPI_DRIVER.format(repo=str(REPO), mode=mode))
    cmd = mpirun_command(n) + [sys.executable, str(driver)] + RELION_CMD.split() + list(extra)
    return jobrun.run_mpi(cmd, cwd=root, timeout=timeout)


def test_mpi_ranks_share_the_micrographs_and_rank0_writes_the_job_outputs(tmp_path):
    one = made_project(tmp_path / "one", n=7)
    two = tmp_path / "two"
    shutil.copytree(one, two)
    proc = _mpi_run(two, tmp_path, 2, "ok")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert " + 2 MPI ranks share the micrographs" in proc.stdout
    # handed out one at a time: every micrograph once, each rank some
    assert proc.stdout.count(" rank 0: [") + proc.stdout.count(" rank 1: [") == 7
    assert proc.stdout.count(" rank 0: [") >= 1 and proc.stdout.count(" rank 1: [") >= 1
    assert proc.stdout.count("Total number of particles") == 1  # only rank 0 sums up
    check_relion_outputs(two)
    single = subprocess.run([sys.executable, str(tmp_path / "driver_ok.py")] + RELION_CMD.split(), cwd=one,
                            capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr
    assert _outputs(two) == _outputs(one)


def test_a_slow_rank_takes_fewer_micrographs_and_the_other_waits_without_spinning(tmp_path):
    """Rank 1 takes 2 s a micrograph, rank 0 0.1 s: handed out one at a time, rank 1 picks one while rank 0 picks
    the other five, then waits more than a second for rank 1, without polling MPI all that time (nor while
    serving)."""
    import re

    root = made_project(tmp_path / "p", n=6)
    proc = _mpi_run(root, tmp_path, 2, "uneven")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(" rank 0: [") == 5 and proc.stdout.count(" rank 1: [") == 1, proc.stdout
    cpu = {int(r): float(s) for r, s in re.findall(r"cpu of rank (\d): ([\d.]+)", proc.stdout)}
    assert set(cpu) == {0, 1}
    assert cpu[0] < cpu[1] + 1.5, cpu  # a busy-polling gather or task server would add the whole wait


def test_a_failing_rank_fails_the_job_with_its_reason(tmp_path):
    root = made_project(tmp_path / "p", n=6)
    proc = _mpi_run(root, tmp_path, 2, "fail")
    assert proc.returncode != 0
    jd = root / JOB
    assert "ERROR: MPI rank 1 of 2 failed: the GPU of rank 1 fell off the bus" in proc.stderr
    assert (jd / relion.EXIT_FAILURE).exists() and not (jd / relion.EXIT_SUCCESS).exists()
    assert not list(jd.rglob(f"*{io.TMP_SUFFIX}"))
    finished = sorted((jd / "Movies").glob("*_autopick.star"))
    assert len(finished) == 5  # rank 1 failed on its first; rank 0 picked the rest, complete and listed
    assert len(io.read_star(jd / "autopick.star")["coordinate_files"]) == 5
    for f in finished:
        assert len(io.read_coordinates_star(f)) == 2


def test_abort_reaches_every_rank_and_continue_finishes(tmp_path):
    root = made_project(tmp_path / "p", n=12)
    proc = _mpi_run(root, tmp_path, 2, "abort")
    jd = root / JOB
    assert proc.returncode != 0, proc.stdout
    assert proc.stdout.count("RELION_JOB_ABORT_NOW found: stopping after 2 of 12 micrographs") == 2  # both ranks
    assert (jd / relion.EXIT_ABORTED).exists() and not (jd / relion.ABORT_NOW).exists()
    finished = sorted((jd / "Movies").glob("*_autopick.star"))
    assert len(finished) == 4
    assert len(io.read_star(jd / "autopick.star")["coordinate_files"]) == len(finished)
    proc = _mpi_run(root, tmp_path, 2, "ok")
    assert proc.returncode == 0, proc.stderr
    assert f"{12 - len(finished)} to pick, {len(finished)} already picked" in proc.stdout
    check_relion_outputs(root)


def test_strict_under_mpi_stops_every_rank(tmp_path):
    """With ``strict``, a bad micrograph on one rank stops the job: no rank is handed another micrograph (the other
    rank had picked every one left, then the job failed)."""
    root = made_project(tmp_path / "p", n=12)
    entries = io.read_micrographs_star(root / IN_MICS, project_dir=root)
    image = np.zeros((256, 256), np.float32)
    image[3, 3] = np.nan  # found only when its pixels are read
    write_mrc(entries[2].path, image, 1.5)
    proc = _mpi_run(root, tmp_path, 2, "ok", ["--strict"])
    assert proc.returncode != 0
    assert "mic_002.mrc: contains 1 NaN or infinite pixel values (--strict: stopping)" in proc.stderr
    assert (root / JOB / relion.EXIT_FAILURE).exists()
    finished = sorted((root / JOB / "Movies").glob("*_autopick.star"))
    assert 2 <= len(finished) <= 5, proc.stdout  # those before it, and at most one more per rank
    assert len(io.read_star(root / JOB / "autopick.star")["coordinate_files"]) == len(finished)


@pytest.mark.parametrize("slow", [0, 1])
def test_sigterm_while_a_rank_waits_for_the_others_lists_the_finished_work(tmp_path, slow):
    """SIGTERM to every rank while one has finished its share and waits for the other (the end of every job): one
    aborted marker and the finished micrograph listed. The waiting rank had left the wait: rank 0 then waited in the
    gather for ever (no marker), or, waiting itself, marked the job aborted without listing anything."""
    root = made_project(tmp_path / "p", n=2)
    proc = _mpi_run(root, tmp_path, 2, f"tail{slow}", timeout=120)
    jd = root / JOB
    assert proc.returncode != 0
    markers = (relion.EXIT_SUCCESS, relion.EXIT_FAILURE, relion.EXIT_ABORTED)
    assert [m for m in markers if (jd / m).exists()] == [relion.EXIT_ABORTED], proc.stderr
    finished = sorted((jd / "Movies").glob("*_autopick.star"))
    assert len(finished) == 1
    assert list(io.read_star(jd / "autopick.star")["coordinate_files"]["rlnMicrographCoordinates"]) == \
        [str(finished[0].relative_to(root))]
    assert (jd / relion.OUTPUT_NODES).exists() and not list(jd.rglob(f"*{io.TMP_SUFFIX}"))


def test_mpi_bad_input_is_reported_once_by_rank0(tmp_path):
    root = made_project(tmp_path / "p", n=2)
    (root / IN_MICS).write_text("data_\nloop_\n_rlnSomethingElse #1\nx\n")
    proc = _mpi_run(root, tmp_path, 2, "ok")
    assert proc.returncode != 0
    # the job's own lines start with "ERROR:"; the MPI runtime may add its own notes (e.g. "PMIX ERROR: ...")
    ours = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(ours) == 1, proc.stderr
    assert (root / JOB / relion.EXIT_FAILURE).exists()


def test_mpi_with_a_cuda_device_that_is_absent_fails_once_and_ends(tmp_path):
    """``--device cuda`` on a node without CUDA: rank 0 says so once and every rank ends (the other ranks had raised
    the same error before the first barrier, leaving rank 0 waiting for ever after writing the failure marker)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    root = made_project(tmp_path / "p", n=2)
    proc = _mpi_run(root, tmp_path, 2, "real", ["--device", "cuda"], timeout=120)
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
    assert ours == ["ERROR: --device cuda was asked for, but no CUDA device is available (use --device cpu)"], \
        proc.stderr
    assert (root / JOB / relion.EXIT_FAILURE).exists()


def test_real_networks_under_mpi_with_workers_match_a_single_process(tmp_path):
    """``mpirun -n 2 external_job.py --workers 2 --j 2`` (2 ranks x 2 workers x 1 thread, through job.main) writes the
    same bytes as one process with one thread."""
    one = _sim_project(tmp_path / "one", n=6)
    two = tmp_path / "two"
    shutil.copytree(one, two)
    args = RELION_CMD.replace(" --j 1", "").split() + ["--device", "cpu"]
    proc = subprocess.run([sys.executable, str(REPO / "external_job.py")] + args + ["--j", "1"], cwd=one,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    proc = jobrun.run_mpi(mpirun_command(2) + [sys.executable, str(REPO / "external_job.py")] + args
                          + ["--j", "2", "--workers", "2"], cwd=two, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert " + 2 MPI ranks share the micrographs" in proc.stdout
    assert len(re.findall(r"2 worker processes on cpu \((float32|bfloat16)\), 1 thread\(s\) each", proc.stdout)) == 2
    assert _outputs(two) == _outputs(one)
    check_relion_outputs(two, empty=None)


def test_launcher_without_mpi4py_is_a_clear_failure(tmp_path):
    """An MPI launcher's environment but no usable mpi4py: rank 0 says so and writes the failure marker."""
    root = made_project(tmp_path / "p", n=1)
    fake = tmp_path / "fake"
    (fake / "mpi4py").mkdir(parents=True)
    (fake / "mpi4py" / "__init__.py").write_text("raise ImportError('No module named mpi4py (test stand-in)')\n")
    env = dict(os.environ, OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_RANK="0",
               PYTHONPATH=os.pathsep.join([str(fake), str(REPO)]))
    cmd = [sys.executable, str(REPO / "external_job.py")] + RELION_CMD.split()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1
    assert "started by an MPI launcher with 2 ranks, but mpi4py is not installed" in proc.stderr
    assert (root / JOB / relion.EXIT_FAILURE).exists()
    env["OMPI_COMM_WORLD_RANK"] = "1"  # the other ranks stay quiet
    (root / JOB / relion.EXIT_FAILURE).unlink()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1 and proc.stderr == "" and not (root / JOB / relion.EXIT_FAILURE).exists()


WORKER_DRIVER = """
import sys, time
sys.path.insert(0, {repo!r})
import numpy as np
from relion_pixer import job
from relion_pixer.pipeline import PickResult

def slow(image, angpix, d, params):
    time.sleep(0.4)
    xy = np.tile(np.array([[10.0, 20.0]]), (2000, 1))
    return PickResult(xy, np.linspace(1, 0.6, 2000), None, (1.0, 1.0))

if __name__ == "__main__":
    sys.exit(job.run_job(job.parse_args(sys.argv[1:]), pick_fn=slow))
"""


def test_sigterm_with_workers_stops_them_and_marks_the_job_aborted(tmp_path):
    root = made_project(tmp_path / "p", n=12, size=128)
    driver = tmp_path / "driver.py"
    driver.write_text(WORKER_DRIVER.format(repo=str(REPO)))
    proc = subprocess.Popen([sys.executable, str(driver)] + RELION_CMD.split() + ["--workers", "2"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    movies = root / JOB / "Movies"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(movies.glob("*_autopick.star")) if movies.exists() else []) < 2:
        time.sleep(0.02)
    proc.terminate()  # the job's own process only, as `kill PID` does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "stopped by SIGTERM" in err
    jd = root / JOB
    assert (jd / relion.EXIT_ABORTED).exists() and not (jd / relion.EXIT_SUCCESS).exists()
    assert not list(jd.rglob(f"*{io.TMP_SUFFIX}"))
    finished = list(movies.glob("*_autopick.star"))
    assert 2 <= len(finished) < 12
    for f in finished:
        assert len(io.read_coordinates_star(f)) == 2000
    assert len(io.read_star(jd / "autopick.star")["coordinate_files"]) == len(finished)
    time.sleep(1.0)
    assert len(list(movies.glob("*_autopick.star"))) == len(finished)  # no worker goes on picking


SHARED_TASKS_DRIVER = """
import random, sys, time
sys.path.insert(0, {repo!r})
from relion_pixer import parallel

world = parallel.mpi_world()
tasks = parallel.SharedTasks(world, list(range(40)))
random.seed(world.rank)
mine = []
for t in tasks:
    mine.append(t)
    time.sleep(random.uniform(0, 0.02) * (1 + world.rank))
got = parallel.gather_when_all_done(world, mine)
tasks.close()
if world.leader:
    print("dynamic", tasks.dynamic, "counts", [len(g) for g in got], "all", sorted(sum(got, [])) == list(range(40)))
"""


def test_shared_tasks_hand_each_task_to_exactly_one_of_three_ranks(tmp_path):
    driver = tmp_path / "shared.py"
    driver.write_text(SHARED_TASKS_DRIVER.format(repo=str(REPO)))
    proc = jobrun.run_mpi(mpirun_command(3) + [sys.executable, str(driver)], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "dynamic True" in proc.stdout and "all True" in proc.stdout, proc.stdout


def test_an_mpi_launch_that_failed_to_start_is_tried_again_and_a_job_failure_is_not(tmp_path):
    """``jobrun.run_mpi`` launches again only when the launcher itself failed to start (nothing of the job ran)."""
    script = tmp_path / "flaky.py"
    script.write_text(
        "import pathlib, sys\n"
        f"count = pathlib.Path({str(tmp_path / 'count')!r})\n"
        "n = int(count.read_text()) if count.exists() else 0\n"
        "count.write_text(str(n + 1))\n"
        "if n == 0:\n"
        f"    sys.stderr.write({jobrun.LAUNCHER_FAILURES[0]!r}); sys.exit(213)\n"
        "sys.exit(int(sys.argv[1]))\n")
    assert jobrun.run_mpi([sys.executable, str(script), "0"], timeout=60).returncode == 0
    assert (tmp_path / "count").read_text() == "2"  # the launch failure, then the run
    (tmp_path / "count").write_text("1")  # no launch failure: a failing job is returned as it is, once
    assert jobrun.run_mpi([sys.executable, str(script), "3"], timeout=60).returncode == 3
    assert (tmp_path / "count").read_text() == "2"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_end_when_the_job_is_killed_outright(tmp_path):
    """SIGKILL of the job (a queue's hard kill, the out-of-memory killer) takes its worker processes with it."""
    import signal
    import subprocess

    script = tmp_path / "job.py"
    script.write_text(
        "import time\nfrom relion_pixer import parallel\n\n\ndef init():\n    parallel.die_with_parent()\n\n\n"
        "def task(i):\n    time.sleep(60)\n\n\nif __name__ == '__main__':\n"
        "    parallel.run_dynamic([(i,) for i in range(2)], 2, init, (), task, lambda r: True, lambda: False)\n")
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path)
    children: list[int] = []
    deadline = time.time() + 30
    while time.time() < deadline and len(children) < 2:
        time.sleep(0.2)
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        children = [int(c) for c in out]
    assert len(children) >= 2, "the workers did not start"
    time.sleep(1.0)  # their initializer has run
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.time() + 10
    alive = children
    while time.time() < deadline and alive:
        time.sleep(0.2)
        alive = [c for c in children if Path(f"/proc/{c}").exists()
                 and "zombie" not in Path(f"/proc/{c}/status").read_text(errors="replace").lower()]
    assert not alive, f"workers {alive} outlived the job"


def test_run_dynamic_runs_nothing_when_a_stop_is_asked_before_it_starts():
    """An abort already there when the pool starts runs no task (it had run workers + 1 before first asking)."""
    import math

    results = []
    assert parallel.run_dynamic([(float(i),) for i in range(6)], 2, int, (), math.sqrt, results.append,
                                lambda: True) is False
    assert results == []
    # a stop from the first result: at most the tasks already taken by the pool report, not every task
    results = []
    assert parallel.run_dynamic([(float(i),) for i in range(40)], 2, int, (), math.sqrt,
                                lambda r: results.append(r) and False, lambda: False) is False
    assert 1 <= len(results) <= 4
