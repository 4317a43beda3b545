"""Accuracy on real data: PIXER vs a LoG blob picker on the EMPIAR-10028 test split.

Both run with settings fixed before looking at the test split: PIXER with its defaults (shipped weights,
classifier threshold 0.6), the LoG baseline with the threshold that maximises F1 on the train + valid split.
Matching is one-to-one (Hungarian) within half the particle diameter. The labels are incomplete (CryoPPP), so
precision reads lower than it is. ``--diameter`` gives both pickers a wrong particle diameter (the labels' 300 A
still sets the match radius), to measure how much a user's misjudged diameter costs. ``--lowpass SIGMA`` first
blurs every micrograph (train/valid for the LoG threshold too) with a Gaussian of that sd in micrograph pixels, a
stand-in for denoised or low-passed micrographs. Usage::

    python benchmarks/bench_real.py [--model FILE] [--split test] [--lowpass SIGMA] [--diameter A] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from common import (
    REAL_DIAMETER_A,
    best_threshold,
    fmt,
    real_micrographs,
    run_log,
    run_pixer,
    score,
)
from relion_pixer.evaluate import match_picks
from relion_pixer.models import load_pretrained
from relion_pixer.pipeline import PickParams


def _matched(xy: np.ndarray, truth: np.ndarray, radius: float) -> np.ndarray:
    """Which picks match a label (one-to-one, within ``radius``)."""
    matched = np.zeros(len(xy), bool)
    matched[match_picks(xy, truth, radius).pred_index] = True
    return matched


def fom_matched_unmatched(picks, mics, radius: float) -> tuple[float, float]:
    """Mean figure of merit of the picks that match a label, and of those that match none."""
    hit, miss = [], []
    for (xy, fom), m in zip(picks, mics):
        matched = _matched(xy, m.truth, radius)
        hit.extend(fom[matched])
        miss.extend(fom[~matched])
    return (float(np.mean(hit)) if hit else float("nan"), float(np.mean(miss)) if miss else float("nan"))


def unmatched_distances(picks, mics, radius: float, diameter_px: float) -> dict:
    """Where the unmatched picks lie: their distance to the nearest label, and the labels' own nearest-neighbour
    distance, in particle diameters (unlabelled neighbours of labelled particles sit about one diameter away)."""
    from scipy.spatial import cKDTree

    away, neighbour = [], []
    for (xy, _), m in zip(picks, mics):
        matched = _matched(xy, m.truth, radius)
        tree = cKDTree(m.truth)
        if (~matched).any():
            away.extend(tree.query(xy[~matched])[0] / diameter_px)
        if len(m.truth) > 1:
            neighbour.extend(tree.query(m.truth, k=2)[0][:, 1] / diameter_px)
    q = np.percentile(away, [10, 50, 90]).tolist() if away else [float("nan")] * 3
    return {"unmatched_to_label_p10_p50_p90": q,
            "label_nearest_neighbour_median": float(np.median(neighbour)) if neighbour else float("nan")}


def lowpass(mics, sigma: float):
    """The micrographs blurred by a Gaussian of sd ``sigma`` pixels (unchanged when 0)."""
    import scipy.ndimage

    if sigma > 0:
        for m in mics:
            m.image = scipy.ndimage.gaussian_filter(m.image, sigma).astype(np.float32)
    return mics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model file (default: shipped weights)")
    ap.add_argument("--split", default="test", choices=["train", "valid", "test"])
    ap.add_argument("--threshold", type=float, default=PickParams.threshold)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lowpass", type=float, default=0.0, help="Gaussian sd (micrograph px) applied first")
    ap.add_argument("--diameter", type=float, default=REAL_DIAMETER_A,
                    help="particle diameter given to both pickers, in A (the labels' 300 A still sets the match radius)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = load_pretrained(args.model)
    radius = 0.5 * REAL_DIAMETER_A / 5.36
    tune = lowpass(real_micrographs("train") + real_micrographs("valid"), args.lowpass)
    log_tune = run_log(tune, args.diameter, threshold=0.5)
    log_t, log_tune_score = best_threshold(log_tune, tune, radius, np.arange(0.5, 6.01, 0.25))
    mics = lowpass(real_micrographs(args.split), args.lowpass)
    t0 = time.time()
    pixer = run_pixer(mics, args.diameter, models, PickParams(threshold=args.threshold, max_particles=500))
    seconds = (time.time() - t0) / len(mics)
    log = run_log(mics, args.diameter, threshold=log_t)
    figures = {
        "split": args.split,
        "lowpass_sigma_px": args.lowpass,
        "diameter_A": args.diameter,
        "radius_px": radius,
        "pixer": score(pixer, mics, radius),
        "pixer_seconds_per_micrograph": seconds,
        "log_threshold_from_train_valid": log_t,
        "log": score(log, mics, radius),
        "per_micrograph": {m.name: score([p], [m], radius)["f1"] for m, p in zip(mics, pixer)},
        "fom_matched_unmatched": fom_matched_unmatched(pixer, mics, radius),
        "unmatched_distance_diameters": unmatched_distances(pixer, mics, radius, 2 * radius),
    }
    print(f"EMPIAR-10028 {args.split} split, {len(mics)} micrographs, match radius {radius:.1f} px, "
          f"particle diameter given {args.diameter:g} A"
          + (f", low-passed (Gaussian sd {args.lowpass:g} px)" if args.lowpass else ""))
    print(fmt("PIXER (defaults)", figures["pixer"]))
    print(fmt(f"LoG (threshold {log_t:g} from train+valid)", figures["log"]))
    fm = figures["fom_matched_unmatched"]
    print(f"mean figure of merit of picks with a label {fm[0]:.3f}, without one {fm[1]:.3f} "
          "(close values: the classifier sees no difference, as with unlabelled particles)")
    ud = figures["unmatched_distance_diameters"]
    print("picks without a label lie {:.2f} / {:.2f} / {:.2f} diameters (10th / 50th / 90th percentile) from the "
          "nearest label; labelled particles' nearest neighbours lie a median {:.2f} diameters away".format(
              *ud["unmatched_to_label_p10_p50_p90"], ud["label_nearest_neighbour_median"]))
    print(f"PIXER time per 1024 px micrograph: {seconds:.2f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=1)


if __name__ == "__main__":
    main()
