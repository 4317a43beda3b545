"""Whole-job speed and peak memory: `relion_pixer pick` on 4096 x 4096 float32 micrographs.

Writes simulated 4096 px float32 MRC micrographs (150 A particles at 1 A/px), then runs the real command line
(reading the MRC, resampling, segmentation, picking, classification, writing the STAR files) in a fresh process,
once on one micrograph and once on all of them; the difference gives the time per micrograph without the
one-off start-up (imports, loading weights). Peak memory is the child process's maximum resident set size.
Usage::

    python benchmarks/bench_speed.py [--n 5] [--threads 2] [--device cpu|cuda] [--size 4096]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_micrographs(folder: Path, n: int, size: int) -> list[Path]:
    import mrcfile

    from relion_pixer.simulate import random_config, simulate_micrograph

    rng = np.random.default_rng(7)
    cfg = random_config(rng, snr=0.05, angpix=1.0, particle_diameter_px=150.0, empty=False)
    base = simulate_micrograph(rng, shape=(size, size), **cfg).image.astype(np.float32)
    paths = []
    for i in range(n):
        path = folder / f"mic{i:03d}.mrc"
        # distinct files (so nothing is cached between them): the same field, rolled
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(np.roll(base, 97 * i, axis=1))
            mrc.voxel_size = 1.0
        paths.append(path)
    return paths


def run(paths: list[Path], out: Path, threads: int, device: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of one `relion_pixer pick` process."""
    cmd = [sys.executable, "-m", "relion_pixer", "pick", *map(str, paths), "--angpix", "1.0",
           "--particle_diameter", "150", "--o", str(out), "--j", str(threads), "--device", device]
    code = (
        "import resource, subprocess, sys, time, json; t = time.time(); "
        "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
        "print(json.dumps([r.returncode, time.time() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, env=env, check=True)
    rc, seconds, maxrss_kb = json.loads(res.stdout.strip().splitlines()[-1])
    if rc != 0:
        raise SystemExit(f"relion_pixer pick failed with exit code {rc}: {' '.join(cmd)}")
    return seconds, maxrss_kb / 1024**2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.time()
        paths = write_micrographs(tmp, args.n, args.size)
        print(f"wrote {args.n} simulated {args.size} px float32 micrographs in {time.time() - t0:.1f} s")
        one, rss1 = run(paths[:1], tmp / "out1", args.threads, args.device)
        many, rss = run(paths, tmp / "outn", args.threads, args.device)
    per = (many - one) / max(1, args.n - 1)
    figures = {
        "size": args.size,
        "micrographs": args.n,
        "threads": args.threads,
        "device": args.device,
        "seconds_one_job_one_micrograph": round(one, 2),
        "seconds_one_job_all": round(many, 2),
        "seconds_per_micrograph": round(per, 3),
        "micrographs_per_second": round(1 / per, 2) if per > 0 else None,
        "peak_rss_gb": round(max(rss, rss1), 2),
        "cpu": os.cpu_count(),
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
