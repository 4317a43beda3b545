#!/usr/bin/env python3
"""Benchmark label generation by reprojection: particles per minute on the CPU.

A synthetic refinement: ``--particles`` particles at random orientations (uniform on the sphere) and positions,
spread over ``--mics`` micrographs of ``--size`` x ``--size`` pixels, projected from the 65^3 70S ribosome map of
``../shared/data/maps`` (or, when that is absent, a 65^3 map of Gaussian blobs). Three micrograph pixel sizes
relative to the map's voxel: the same, twice as coarse (the map is Fourier-cropped to the micrograph scale) and
twice as fine (the working projection is upsampled, masks are 4x larger).

Prints, per case: total time of ``make_labels`` (reading, projecting, resampling, binarising, pasting, writing
label MRCs and STAR files), particles per minute, and the time in projection alone.

Usage::

    python3 benchmarks/bench_labels.py [--particles 2000] [--mics 20] [--size 1024] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import mrcfile  # noqa: E402
import pandas as pd  # noqa: E402
import starfile  # noqa: E402
import torch  # noqa: E402

from relion_pixer.labels import MaskRenderer, make_labels  # noqa: E402

SHARED_MAP = REPO.parent / "shared" / "data" / "maps" / "clean70SRibosome_vol_65p.mrc"


def _map() -> tuple[np.ndarray, str]:
    if SHARED_MAP.is_file():
        return mrcfile.read(SHARED_MAP).astype(np.float32), SHARED_MAP.name
    n = 65
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = np.zeros((n, n, n), np.float32)
    for (bx, by, bz), s in (((0, 0, 0), 8), ((10, 4, -2), 5), ((-7, 9, 3), 4), ((2, -11, 6), 4)):
        vol += np.exp(-((x - bx) ** 2 + (y - by) ** 2 + (z - bz) ** 2) / (2 * s * s))
    return vol, "gaussian blobs (shared map absent)"


def run_case(root: Path, vol: np.ndarray, map_apix: float, mic_apix: float, n_parts: int, n_mics: int, size: int,
             seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(root / "map.mrc", overwrite=True) as mrc:
        mrc.set_data(vol)
        mrc.voxel_size = map_apix
    names = []
    for k in range(n_mics):
        name = f"MotionCorr/job002/Micrographs/mic{k:03d}.mrc"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        with mrcfile.new_mmap(root / name, shape=(size, size), mrc_mode=2, overwrite=True) as mrc:
            mrc.voxel_size = mic_apix
        names.append(name)
    df = pd.DataFrame({
        "rlnMicrographName": [names[i % n_mics] for i in range(n_parts)],
        "rlnCoordinateX": rng.uniform(0, size, n_parts).round(),
        "rlnCoordinateY": rng.uniform(0, size, n_parts).round(),
        "rlnAngleRot": rng.uniform(-180, 180, n_parts),
        "rlnAngleTilt": np.degrees(np.arccos(rng.uniform(-1, 1, n_parts))),
        "rlnAnglePsi": rng.uniform(-180, 180, n_parts),
        "rlnOriginXAngst": rng.normal(0, 3, n_parts),
        "rlnOriginYAngst": rng.normal(0, 3, n_parts),
        "rlnOpticsGroup": 1,
    })
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnImagePixelSize": [map_apix], "rlnMicrographPixelSize": [mic_apix]})
    starfile.write({"optics": optics, "particles": df}, root / "run_data.star", overwrite=True)

    renderer = MaskRenderer(vol, map_apix, mic_apix)
    t = time.perf_counter()
    renderer.projections(df["rlnAngleRot"], df["rlnAngleTilt"], df["rlnAnglePsi"])
    t_proj = time.perf_counter() - t

    import os

    cwd = os.getcwd()
    os.chdir(root)
    try:
        t = time.perf_counter()
        result = make_labels("run_data.star", "map.mrc", "External/job001/", log=lambda *_: None)
        total = time.perf_counter() - t
    finally:
        os.chdir(cwd)
    return {
        "mic/map pixel": mic_apix / map_apix,
        "working box": renderer.box,
        "mask box (px)": renderer.mask_box,
        "total s": total,
        "particles/min": n_parts / total * 60.0,
        "projection s": t_proj,
        "projection particles/min": n_parts / t_proj * 60.0,
        "label coverage": float(np.mean([mrcfile.read(root / p).astype(bool).mean()
                                         for p in result.table["pixerLabelName"]])),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", type=int, default=2000)
    ap.add_argument("--mics", type=int, default=20)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    vol, source = _map()
    print(f"map: {source}, {vol.shape[0]}^3; {args.particles} particles into {args.mics} micrographs of "
          f"{args.size}^2 px; torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mic_apix in (2.0, 4.0, 1.0):
            rows.append(run_case(Path(tmp) / f"case{mic_apix}", vol, 2.0, mic_apix, args.particles, args.mics,
                                 args.size))
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.precision", 3):
        print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
