"""Endurance: the job SIGKILLed at random moments and continued, single process and under ``mpirun -n 2``.

A RELION project of ``--n`` small simulated micrographs (256 px, 60 A particles at 1 A/px) is picked by the real
command line (``python -m relion_pixer --o External/... --in_mics ... --continue``) in three ways:

1. once without interruption (the reference picks; its resident memory is sampled every 0.2 s: the growth from the
   10-20 % mark of the run to its last 10 % is the long-lived process's memory growth);
2. per mode (``single``: one process; ``mpi2``: ``mpirun -n 2``; ``workers2``: one process with 2 workers), started, SIGKILLed (the whole session: launcher
   and ranks, as a queue system does) at random moments ``--kills`` times, then continued to the end. A kill falls
   at a random time 0.05-2 s after the start (20 %: often during start-up; at the latest when half of what is left
   is done) or after a random number of new
   coordinate files (80 %, plus 0-50 ms, so that some land mid-write);
3. ``mpirun -n 2`` once without interruption: its picks must equal the reference's too, and its memory is sampled.

After each kill every coordinate file that exists must be byte-identical to the reference's; at the end every
micrograph must have exactly one coordinate file, equal to the reference's, no temporary file may be left, and the
continued run must end with RELION_JOB_EXIT_SUCCESS. The final continued run's memory is sampled too. Usage::

    nice -n 10 python benchmarks/bench_soak.py --n 1000 --kills 10 --json benchmarks/results/soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobrun import job_command, job_env, kill_session, machine, rss_mb, session_pids, write_project  # noqa: E402

from relion_pixer import io, relion  # noqa: E402

DIAMETER_A = 60.0
#: mode -> (MPI ranks, worker processes per rank); one torch thread per process
MODES = {"single": (1, 1), "mpi2": (2, 1), "workers2": (1, 2)}


def coordinate_files(job_dir: Path) -> dict[str, Path]:
    """Coordinate files under the job directory, by name relative to it."""
    movies = job_dir / "Movies"
    if not movies.is_dir():
        return {}
    return {f"Movies/{e.name}": Path(e.path) for e in os.scandir(movies) if e.name.endswith("_autopick.star")}


def temp_files(job_dir: Path) -> list[Path]:
    return list(job_dir.rglob(f"*{io.TMP_SUFFIX}")) if job_dir.exists() else []


def start(project: Path, job: str, mode: str, log) -> subprocess.Popen:
    ranks, workers = MODES[mode]
    cmd = job_command(job, DIAMETER_A, threads=workers, workers=workers, ranks=ranks) + ["--continue"]
    # a run of its own temporary directory: a SIGKILLed mpirun leaves its session directory behind (jobrun.job_env)
    tmp = Path(tempfile.mkdtemp(prefix="run_", dir=project.parent))
    return subprocess.Popen(cmd, cwd=project, env=job_env(tmp), stdout=log, stderr=log, start_new_session=True)


def run_to_end(project: Path, job: str, mode: str, n: int, log, timeout: float) -> dict:
    """Run (or continue) the job to its end, sampling the resident memory of its Python processes."""
    job_dir = project / job
    t0 = time.time()
    proc = start(project, job, mode, log)
    samples = []  # (seconds, coordinate files, MB)
    while proc.poll() is None:
        if time.time() - t0 > timeout:
            kill_session(proc.pid)
            raise SystemExit(f"{job} did not finish within {timeout:.0f} s")
        mb = rss_mb(session_pids(proc.pid))
        if mb > 0:
            samples.append((time.time() - t0, len(coordinate_files(job_dir)), mb))
        time.sleep(0.2)
    return {"returncode": proc.returncode, "seconds": time.time() - t0, "memory": memory_growth(samples, n)}


def memory_growth(samples: list, n: int) -> dict:
    """Resident memory from the 10-20 % mark of a run to its last 10 % (median of the samples in each window)."""
    if not samples:
        return {"samples": 0}
    files = np.array([s[1] for s in samples])
    mb = np.array([s[2] for s in samples])
    lo, hi = files.min(), files.max()
    span = max(1, hi - lo)
    early = mb[(files >= lo + 0.1 * span) & (files <= lo + 0.2 * span)]
    late = mb[files >= lo + 0.9 * span]
    out = {"samples": int(len(samples)), "micrographs_in_run": int(span), "peak_mb": round(float(mb.max()), 1)}
    if len(early) and len(late):
        base, end = float(np.median(early)), float(np.median(late))
        out.update(early_mb=round(base, 1), late_mb=round(end, 1), growth_pct=round(100.0 * (end / base - 1.0), 2))
    return out


def soak(project: Path, mode: str, n: int, kills: int, reference: dict[str, bytes], rng: np.random.Generator,
         log, timeout: float) -> dict:
    """Kill the job ``kills`` times at random moments, checking what it left after each kill; then finish it."""
    ranks, workers = MODES[mode]
    job = f"External/soak_{mode}/"
    job_dir = project / job
    events = []
    wrong = set()
    ended = None  # a run that ended by itself before its kill (the job log says why)
    t0 = time.time()
    while len(events) < kills:
        before = len(coordinate_files(job_dir))
        if before >= n:
            break
        proc = start(project, job, mode, log)
        t_start = time.time()
        if rng.random() < 0.2:
            moment = "random time"
            deadline = t_start + rng.uniform(0.05, 2.0)
            half = before + max(1, (n - before) // 2)  # on a fast machine: still before the job could finish
            while time.time() < deadline and proc.poll() is None and len(coordinate_files(job_dir)) < half:
                time.sleep(0.01)
        else:
            moment = "after new files"
            target = before + int(rng.integers(1, max(2, (n - before) // (kills - len(events) + 1))))
            while len(coordinate_files(job_dir)) < target and proc.poll() is None:
                if time.time() - t_start > timeout:
                    break
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is not None:  # finished by itself before the kill: no more kills possible
            ended = {"returncode": proc.returncode, "after_s": round(time.time() - t_start, 2), "files_before": before,
                     "files_after": len(coordinate_files(job_dir))}
            break
        kill_session(proc.pid)
        proc.wait()
        while session_pids(proc.pid):  # ranks and workers gone
            time.sleep(0.01)
        files = coordinate_files(job_dir)
        bad = [name for name, path in files.items() if path.read_bytes() != reference.get(name)]
        wrong.update(bad)
        events.append({"after_s": round(time.time() - t_start, 2), "moment": moment, "files_before": before,
                       "files_after": len(files), "differing_from_reference": len(bad),
                       "temporary_files_left": len(temp_files(job_dir))})
        print(f"  {mode} kill {len(events)}: {moment}, {before} -> {len(files)} files, "
              f"{len(bad)} differing, {events[-1]['temporary_files_left']} temporary", flush=True)
    final = run_to_end(project, job, mode, n, log, timeout)
    files = coordinate_files(job_dir)
    differing = sorted(name for name, path in files.items() if path.read_bytes() != reference.get(name))
    listed = io.read_star(job_dir / "autopick.star")["coordinate_files"]
    per_micrograph = {}
    for name in files:
        stem = name.rsplit("_autopick.star", 1)[0]
        per_micrograph[stem] = per_micrograph.get(stem, 0) + 1
    result = {
        "mode": mode,
        "ranks": ranks,
        "workers": workers,
        "kills": len(events),
        "kill_events": events,
        "ended_before_kill": ended,
        "seconds": round(time.time() - t0, 1),
        "final_returncode": final["returncode"],
        "exit_success": (job_dir / relion.EXIT_SUCCESS).exists(),
        "coordinate_files": len(files),
        "listed_in_autopick_star": len(listed),
        "exactly_one_file_per_micrograph": len(per_micrograph) == n and set(per_micrograph.values()) == {1}
        and set(files) == set(reference),
        "picks_equal_uninterrupted_run": not differing and not wrong and set(files) == set(reference),
        "files_ever_differing": len(wrong | set(differing)),
        "temporary_files_left": len(temp_files(job_dir)),
        "final_run_memory": final["memory"],
    }
    result["passed"] = bool(result["exit_success"] and result["final_returncode"] == 0
                            and result["exactly_one_file_per_micrograph"] and result["picks_equal_uninterrupted_run"]
                            and result["temporary_files_left"] == 0 and result["listed_in_autopick_star"] == n
                            and result["kills"] >= kills)
    return result


def run_soak(n: int = 1000, kills: int = 10, modes=("single", "mpi2"), size: int = 256, seed: int = 0,
             workdir: Path | None = None, timeout: float = 3600.0, log_path: Path | None = None) -> dict:
    """The whole benchmark; returns the results (``passed`` per mode, memory growth of the uninterrupted run)."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        project = Path(tmp)
        t0 = time.time()
        write_project(project, n, size=size, diameter_A=DIAMETER_A, seed=seed)
        print(f"wrote {n} simulated {size} px micrographs in {time.time() - t0:.1f} s", flush=True)
        log = open(log_path or os.devnull, "ab")
        try:
            ref = run_to_end(project, "External/reference/", "single", n, log, timeout)
            if ref["returncode"] != 0:
                raise SystemExit(f"the uninterrupted run failed with exit code {ref['returncode']}")
            ref_dir = project / "External/reference"
            reference = {name: path.read_bytes() for name, path in coordinate_files(ref_dir).items()}
            particles = sum(len(io.read_coordinates_star(p)) for p in coordinate_files(ref_dir).values()
                            if p.stat().st_size)
            print(f"uninterrupted run: {ref['seconds']:.1f} s, {particles} particles, memory {ref['memory']}",
                  flush=True)
            uninterrupted_mpi = None
            if "mpi2" in modes:
                mpi = run_to_end(project, "External/reference_mpi2/", "mpi2", n, log, timeout)
                got = {k: p.read_bytes() for k, p in coordinate_files(project / "External/reference_mpi2").items()}
                uninterrupted_mpi = {"returncode": mpi["returncode"], "seconds": round(mpi["seconds"], 1),
                                     "picks_equal_single_process": got == reference, "memory": mpi["memory"]}
                print(f"uninterrupted mpirun -n 2: {uninterrupted_mpi}", flush=True)
            results = {"micrographs": n, "size_px": size, "particle_diameter_A": DIAMETER_A, "angpix": 1.0,
                       "kills_asked": kills, "seed": seed, "machine": machine(),
                       "uninterrupted": {"seconds": round(ref["seconds"], 1), "particles": particles,
                                         "memory": ref["memory"]},
                       "uninterrupted_mpi2": uninterrupted_mpi,
                       "modes": {}}
            for mode in modes:
                results["modes"][mode] = soak(project, mode, n, kills, reference, rng, log, timeout)
                print(f"{mode}: {json.dumps({k: v for k, v in results['modes'][mode].items() if k != 'kill_events'})}",
                      flush=True)
        finally:
            log.close()
    runs = [results["uninterrupted"]] + ([results["uninterrupted_mpi2"]] if results["uninterrupted_mpi2"] else [])
    growths = [r["memory"].get("growth_pct") for r in runs]
    results["memory_growth_below_5pct"] = all(g is not None and g < 5.0 for g in growths)
    mpi_ok = results["uninterrupted_mpi2"] is None or (results["uninterrupted_mpi2"]["returncode"] == 0
                                                       and results["uninterrupted_mpi2"]["picks_equal_single_process"])
    results["passed"] = (all(r["passed"] for r in results["modes"].values()) and mpi_ok
                         and results["memory_growth_below_5pct"])
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--modes", default="single,mpi2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log", type=Path, help="append the jobs' run.out / run.err here")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = run_soak(args.n, args.kills, tuple(args.modes.split(",")), args.size, args.seed, log_path=args.log)
    print(json.dumps({k: v for k, v in results.items() if k != "modes"}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    sys.exit(0 if results["passed"] else 1)


if __name__ == "__main__":
    main()
