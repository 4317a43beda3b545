"""Time the simulator: one 1024 px and one 4096 px micrograph, and 256 px training tiles.

Usage::

    python3 benchmarks/bench_simulate.py [--tiles 50] [--repeats 3]

Prints wall-clock figures (single process; scipy.fft uses all cores it is given).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relion_pixer import NET_DIAMETER_PX  # noqa: E402
from relion_pixer.simulate import random_config, simulate_micrograph  # noqa: E402


def _micrograph(size: int, seed: int):
    rng = np.random.default_rng(seed)
    return simulate_micrograph(
        rng,
        shape=(size, size),
        angpix=5.36,
        snr=0.1,
        families="ribosome",
        diameter_A=300.0,
        n_ice=2 * (size // 1024),
        n_aggregates=size // 1024,
        carbon_edge=True,
        quantise_8bit=True,
    )


def _time(fn, repeats: int) -> list[float]:
    out = []
    for i in range(repeats):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=50, help="number of 256 px tiles to time")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the 1024 px micrograph")
    args = ap.parse_args(argv)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"python {platform.python_version()}, numpy {np.__version__}")
    t1k = _time(lambda i: _micrograph(1024, i), args.repeats)
    m = _micrograph(1024, 0)
    print(f"1024 x 1024 micrograph (5.36 A/px, {m.meta['n_particles']} ribosome-sized particles, ice, aggregate, "
          f"carbon edge, 8-bit): median {np.median(t1k):.2f} s, min {min(t1k):.2f} s over {args.repeats}")
    t4k = _time(lambda i: _micrograph(4096, i), 1)
    print(f"4096 x 4096 micrograph (same settings, ~16x the particles): {t4k[0]:.2f} s")

    rng = np.random.default_rng(0)
    times = []
    for _ in range(args.tiles):
        cfg = random_config(rng, shape=(256, 256), particle_diameter_px=NET_DIAMETER_PX)
        t = time.perf_counter()
        simulate_micrograph(rng, **cfg)
        times.append(time.perf_counter() - t)
    times = np.asarray(times)
    print(f"256 x 256 training tile (random_config, {NET_DIAMETER_PX} px particles), {args.tiles} tiles: "
          f"median {1e3 * np.median(times):.1f} ms, 95th percentile {1e3 * np.percentile(times, 95):.1f} ms, "
          f"max {1e3 * times.max():.1f} ms -> {1.0 / times.mean():.0f} tiles/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
