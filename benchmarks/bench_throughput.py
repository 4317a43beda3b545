"""Throughput of the whole job on the CPU: 1 process, 2 worker processes, ``mpirun -n 2``, same machine, same run.

A RELION project of ``--n`` simulated micrographs (default 4096 px, 150 A particles at 1 A/px, as
bench_speed.py) is picked by the real command line in each configuration:

* ``1x1``: one process, ``--j 1`` (the baseline: one rank with one thread);
* ``1x2threads``: one process, ``--j 2``;
* ``2workers``: one process with ``--workers 2 --j 2`` (two worker processes with one thread each);
* ``mpi2``: ``mpirun -n 2`` with ``--j 1`` (two ranks with one thread each).

Steady-state throughput is taken from the coordinate files' modification times: with ``k`` processes picking, the
``N - k`` micrographs finished after the k-th file took ``t_N - t_k`` (start-up and the first micrographs left
out). The whole job's wall time, start-up included, is reported too, and the CPU seconds the job's processes used
per micrograph (what 2 processes cost beyond 1 when the cores are shared with other work). The configurations run in turn ``--repeat``
times (best of each kept), so that load from elsewhere on the machine hits them alike. Usage::

    nice -n 10 python benchmarks/bench_throughput.py --n 16 --size 4096 --json benchmarks/results/throughput_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jobrun import job_command, job_env, machine, write_project  # noqa: E402

DIAMETER_A = 150.0
CONFIGS = {
    "1x1": dict(threads=1, workers=1, ranks=1),
    "1x2threads": dict(threads=2, workers=1, ranks=1),
    "2workers": dict(threads=2, workers=2, ranks=1),
    "mpi2": dict(threads=1, workers=1, ranks=2),
}


def run_config(project: Path, name: str, n: int) -> dict:
    """One job of configuration ``name`` in a fresh job directory; wall and steady-state micrographs per second."""
    cfg = CONFIGS[name]
    job = f"External/{name}/"
    shutil.rmtree(project / job, ignore_errors=True)
    load_before = os.getloadavg()[0]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.run(job_command(job, DIAMETER_A, **cfg), cwd=project, env=job_env(), capture_output=True,
                          text=True)
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    times = sorted(p.stat().st_mtime for p in (project / job / "Movies").glob("*_autopick.star"))
    if len(times) != n:
        raise SystemExit(f"{name}: {len(times)} coordinate files for {n} micrographs")
    k = cfg["workers"] * cfg["ranks"]
    steady = (n - k) / (times[-1] - times[k - 1])
    # the 1-minute load average before and after: above the job's own processes, someone else shared the cores
    return {"wall_s": round(wall, 2), "micrographs_per_s": round(steady, 3),
            "micrographs_per_s_with_start_up": round(n / wall, 3), **cfg,
            "cpu_seconds_per_micrograph_with_start_up": round(cpu / n, 3),
            "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    names = args.configs.split(",")
    best: dict[str, dict] = {}
    runs: dict[str, list] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        t0 = time.time()
        write_project(project, args.n, size=args.size, diameter_A=DIAMETER_A, bases=2)
        print(f"wrote {args.n} simulated {args.size} px micrographs in {time.time() - t0:.1f} s", flush=True)
        for r in range(args.repeat):
            for name in names:
                res = run_config(project, name, args.n)
                runs[name].append(res)
                print(f"  round {r + 1} {name}: {res}", flush=True)
                if name not in best or res["micrographs_per_s"] > best[name]["micrographs_per_s"]:
                    best[name] = res
    base = best.get("1x1", {}).get("micrographs_per_s")
    figures = {
        "micrographs": args.n, "size_px": args.size, "particle_diameter_A": DIAMETER_A, "angpix": 1.0,
        "device": "cpu", "repeat": args.repeat, "machine": machine(),
        "best": best, "runs": runs,
        "speedup_vs_1x1": {name: round(b["micrographs_per_s"] / base, 2) for name, b in best.items()} if base else {},
    }
    if base and "mpi2" in best:
        figures["mpi2_target_1.7x_met"] = figures["speedup_vs_1x1"]["mpi2"] >= 1.7
    print(json.dumps({k: v for k, v in figures.items() if k != "runs"}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
