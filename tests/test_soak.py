"""The endurance benchmark, shortened for CI: 50 micrographs, ``mpirun -n 2``, SIGKILLed 3 times and continued.

The full run (1000 micrographs, 10 kills, single process and 2 ranks, memory growth) is
``benchmarks/bench_soak.py``; its figures are in ``benchmarks/results/soak.json``.
"""

from __future__ import annotations

import pytest

from benchmarks import bench_soak, jobrun


def test_killed_and_continued_mpi_job_ends_with_the_uninterrupted_picks(tmp_path):
    try:
        jobrun.mpirun_command(2)
    except LookupError as exc:
        pytest.skip(str(exc))
    results = bench_soak.run_soak(n=50, kills=3, modes=("mpi2",), workdir=tmp_path, timeout=300,
                                  log_path=tmp_path / "jobs.log")
    assert results["uninterrupted_mpi2"]["returncode"] == 0
    assert results["uninterrupted_mpi2"]["picks_equal_single_process"]
    assert results["uninterrupted"]["particles"] > 0  # the networks pick something, so equal picks mean something
    r = results["modes"]["mpi2"]
    log = (tmp_path / "jobs.log").read_text(errors="replace")[-3000:] if (tmp_path / "jobs.log").exists() else ""
    assert r["kills"] == 3, (r["kill_events"], r["ended_before_kill"], log)
    assert all(e["differing_from_reference"] == 0 for e in r["kill_events"])
    assert r["final_returncode"] == 0 and r["exit_success"]
    assert r["exactly_one_file_per_micrograph"] and r["coordinate_files"] == r["listed_in_autopick_star"] == 50
    assert r["picks_equal_uninterrupted_run"]
    assert r["temporary_files_left"] == 0
    assert r["passed"]
