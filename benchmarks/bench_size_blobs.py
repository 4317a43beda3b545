"""The map's blobs as a size estimate: does their size follow the particle's true size, whatever diameter is given?

Issue 17 suggested measuring the particle size from the probability map's blobs. For each set and each given
diameter (0.8x, 1x, 1.25x the true one) the micrographs are segmented at the given diameter's scale; the map is cut
at ``--level``; the connected regions holding exactly one candidate centre (isolated particles) give an
area-equivalent diameter each, and their median, scaled back from network pixels, is the blob estimate. Real sets:
their train + valid micrographs (never test); simulated: micrographs of 100, 150 and 220 A particles at 1 A/px and
SNR 0.1, 1 and 3, with seeds disjoint from training and from ``bench_sim.py``. An estimate worth using would read
the same at the three given diameters and be close to the true one. Usage::

    python benchmarks/bench_size_blobs.py [--n 4] [--level 0.5] [--json benchmarks/results/size_blobs.json]
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.ndimage as ndi
import torch

from bench_sim import simulate
from common import real_sets, write_json
from relion_pixer import NET_DIAMETER_PX, picking
from relion_pixer.models import load_pretrained
from relion_pixer.pipeline import segment_micrograph

GIVEN = (0.8, 1.0, 1.25)
SIM_SNRS = (0.1, 1.0, 3.0)
SIM_DIAMETERS = (100.0, 150.0, 220.0)
#: Seeds of the simulated micrographs (tune_defaults uses 700_000 + round(1000 x SNR)).
SEED = 710_000


def blob_diameters(mics, diameter_A: float, models, level: float) -> np.ndarray:
    """Area-equivalent diameters (network pixels) of the map's isolated blobs, picked at ``diameter_A``."""
    out = []
    for m in mics:
        _, prob, _ = segment_micrograph(m.image, m.angpix, diameter_A, models)
        p = prob.numpy() if hasattr(prob, "numpy") else np.asarray(prob)
        cand = picking.pick_centres(p, NET_DIAMETER_PX, threshold=0.3, margin_px=NET_DIAMETER_PX)
        regions, _ = ndi.label(p >= level)
        xy = np.round(np.asarray(cand.xy)).astype(int).reshape(-1, 2)
        ids = regions[xy[:, 1], xy[:, 0]]
        ids, count = np.unique(ids[ids > 0], return_counts=True)
        areas = ndi.sum(np.ones_like(p), regions, ids[count == 1])
        out.extend(2.0 * np.sqrt(np.asarray(areas, np.float64).reshape(-1) / np.pi))
    return np.asarray(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4, help="micrographs per set (real: the first of train + valid)")
    ap.add_argument("--level", type=float, default=0.5, help="where the map is cut into blobs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = load_pretrained()
    sets = {rs.name: (rs.micrographs("train", "valid")[: args.n], rs.diameter_A) for rs in real_sets()}
    for snr in SIM_SNRS:
        for d in SIM_DIAMETERS:
            mics, _ = simulate(args.n, snr, SEED + int(round(snr * 1000)) + int(d), 1536, 1.0, d)
            sets[f"sim_snr{snr:g}_{d:g}A"] = (mics, d)
    rows = {}
    for name, (mics, true) in sets.items():
        rows[name] = {}
        for f in GIVEN:
            d = blob_diameters(mics, true * f, models, args.level)
            est = float(np.median(d) / NET_DIAMETER_PX * true * f) if len(d) else float("nan")
            rows[name][f"{f:g}"] = {"blobs": int(len(d)), "estimate_A": est, "error": est / true - 1.0}
            print(f"{name}: given {f:g}x the true {true:g} A: {len(d)} isolated blobs -> {est:.0f} A "
                  f"({est / true - 1.0:+.2f})", flush=True)
    write_json(args.json, {"n": args.n, "level": args.level, "sets": rows})


if __name__ == "__main__":
    main()
