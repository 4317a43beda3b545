"""Where crowded micrographs lose their particles: recall after each stage of the picking path (measured, not a rule).

On crowded micrographs at the kept-apart beta-galactosidase set's pixel scale (``bench_crowd.py``'s ``crowded_small``
sets), F1 falls with the diameter given (0.932 -> 0.856 at SNR 1, 0.804 -> 0.695 at SNR 0.3, 0.8x -> 1.25x), far from
issue 17's 0.03 spread. This script follows every true particle through the job's stages, at the diameter the job
picks at (size estimate and blend, as a job runs; spacing check off, the default), and says which stage loses it:

1. ``peaks``: every local maximum of the smoothed map (the grid search with no floor; the job's edge margin);
2. ``floor``: those at or above ``map_threshold`` (the job's candidates);
3. ``cuts``: those that pass the micrograph's own cuts (``map_relative``, ``map_odds``);
4. ``picks``: those the decision keeps (the classifier's vetoes, ``threshold``): the job's picks.

Recall and precision after each stage (one-to-one within half a diameter). A particle no peak matches is **merged**
when it lies inside the network's particle region (``P(particle) >= 0.5`` at its centre: the map sees it, but joined to
a neighbour or with its peak displaced), **unseen** otherwise; and every particle the map does not see (``P(particle)
< 0.5`` at its centre, peak or not) is counted by its number of neighbours within 1.2 diameters. The real sets' train
+ valid micrographs (shipped networks) are read the same way for contrast.

Usage::

    python benchmarks/bench_crowd_stages.py [--n 8] [--sets crowded_small crowded_small_noisy] [--real]
        [--json benchmarks/results/crowd_stages.json]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bench_crowd import GIVEN, SETS, crowd_set
from common import job_diameter, real_sets, score, write_json
from relion_pixer import NET_DIAMETER_PX, preprocess
from relion_pixer.evaluate import match_picks
from relion_pixer.models import load_pretrained
from relion_pixer.pipeline import MARGIN_PER_DIAMETER, PickParams, map_cut, pick_from_map, segment_micrograph

STAGES = ("peaks", "floor", "cuts", "picks")
#: Neighbours are counted within this many true diameters, and grouped as below (counts, inclusive).
NEIGHBOUR_RADIUS = 1.2
NEIGHBOUR_GROUPS = {"0-2": (0, 2), "3-4": (3, 4), "5+": (5, 10**6)}


def stage_picks(mic, diameter_A: float, models, params: PickParams, radius_px: float) -> tuple[dict, dict]:
    """One micrograph's picks (micrograph pixels) after each of :data:`STAGES` at the picking diameter ``diameter_A``,
    and its particles no peak matches within ``radius_px`` counted as ``merged`` or ``unseen``."""
    from relion_pixer import picking

    net, prob, factors = segment_micrograph(mic.image, mic.angpix, diameter_A, models)
    margin = MARGIN_PER_DIAMETER * NET_DIAMETER_PX
    peaks = picking.pick_centres(prob, NET_DIAMETER_PX, margin_px=margin, threshold=None)
    floor = picking.pick_centres(prob, NET_DIAMETER_PX, margin_px=margin, threshold=params.map_threshold)
    cuts = floor.xy[map_cut(floor.score, params)]
    final = pick_from_map(net, prob, factors, diameter_A, models, params)  # exactly the job's picks
    out = {"peaks": preprocess.to_original(peaks.xy, factors), "floor": preprocess.to_original(floor.xy, factors),
           "cuts": preprocess.to_original(cuts, factors), "picks": final.xy}
    m = match_picks(out["peaks"], mic.truth, radius_px)
    missed = np.ones(len(mic.truth), bool)
    missed[m.true_index] = False
    p = prob.detach().float().cpu().numpy() if hasattr(prob, "detach") else np.asarray(prob)
    ij = np.rint(preprocess.to_network(mic.truth, factors)[:, ::-1]).astype(int).reshape(-1, 2)
    ij = np.clip(ij, 0, np.array(p.shape) - 1)
    seen = p[ij[:, 0], ij[:, 1]] >= 0.5
    # neighbours of each particle within NEIGHBOUR_RADIUS true diameters: is a surrounded particle seen less often?
    from scipy.spatial import cKDTree

    near = cKDTree(mic.truth).query_ball_point(mic.truth, NEIGHBOUR_RADIUS * 2.0 * radius_px) if len(mic.truth) else []
    neighbours = np.array([len(n) - 1 for n in near], dtype=int)
    groups = {}
    for label, (lo, hi) in NEIGHBOUR_GROUPS.items():
        inn = (neighbours >= lo) & (neighbours <= hi)
        groups[label] = [int(inn.sum()), int((inn & ~seen).sum())]
    return out, {"merged": int((missed & seen).sum()), "unseen": int((missed & ~seen).sum()), "by_neighbours": groups}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--n", type=int, default=8, help="micrographs per simulated set")
    ap.add_argument("--sets", nargs="*", default=["crowded_small", "crowded_small_noisy"], choices=list(SETS))
    ap.add_argument("--real", action="store_true", help="also every real set's train + valid micrographs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = load_pretrained(args.model)
    params = PickParams()
    sets = {name: crowd_set(name, args.n)[1:] for name in args.sets}  # (micrographs, diameter in A)
    if args.real:
        for rs in real_sets():
            sets[f"real_{rs.name}"] = (rs.micrographs("train", "valid"), rs.diameter_A)
    out = {"model": args.model, "given": GIVEN, "sets": {}}
    for name, (mics, diameter) in sets.items():
        rows = []
        radius = 0.5 * diameter / mics[0].angpix
        for g in GIVEN:
            d = job_diameter(mics, g * diameter, models)
            per = [stage_picks(m, d, models, params, radius) for m in mics]
            row = {"given": g, "picked_at": d / diameter,
                   "merged": sum(c["merged"] for _, c in per), "unseen": sum(c["unseen"] for _, c in per)}
            # share of the particles the map does not see (P(particle) < 0.5 at the centre), by neighbours
            row["not_seen_by_neighbours"] = {
                label: [sum(c["by_neighbours"][label][k] for _, c in per) for k in (0, 1)] for label in NEIGHBOUR_GROUPS}
            for stage in STAGES:
                s = score([(p[stage], np.ones(len(p[stage]))) for p, _ in per], mics, radius)
                row[stage] = {k: s[k] for k in ("precision", "recall", "f1", "picks")}
            row["truth"] = s["truth"]
            rows.append(row)
            lost = "; ".join(f"{stage} R {row[stage]['recall']:.3f} (P {row[stage]['precision']:.3f})"
                             for stage in STAGES)
            shares = ", ".join(f"{label}: {k / n:.2f} of {n}" if n else f"{label}: none"
                               for label, (n, k) in row["not_seen_by_neighbours"].items())
            print(f"{name} given {g:.2f}x (picked at {row['picked_at']:.3f}x): {lost}; no peak: "
                  f"{row['merged']} merged, {row['unseen']} unseen of {row['truth']}; not seen, by neighbours within "
                  f"{NEIGHBOUR_RADIUS} diameters: {shares}", flush=True)
        out["sets"][name] = rows
    write_json(args.json, out)


if __name__ == "__main__":
    main()
