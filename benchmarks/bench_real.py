"""Accuracy on real data: PIXER vs a LoG blob picker on the EMPIAR-10028 test split.

Both run with settings fixed before looking at the test split: PIXER with its defaults (shipped weights,
classifier threshold 0.6), the LoG baseline with the threshold that maximises F1 on the train + valid split.
Matching is one-to-one (Hungarian) within half the particle diameter. The labels are incomplete (CryoPPP), so
precision reads lower than it is. ``--diameter`` gives both pickers a wrong particle diameter (the labels' 300 A
still sets the match radius), to measure how much a user's misjudged diameter costs. ``--lowpass SIGMA`` first
blurs every micrograph (train/valid for the LoG threshold too) with a Gaussian of that sd in micrograph pixels, a
stand-in for denoised or low-passed micrographs.

How incomplete the labels are is measured, not assumed: each pick's *density* (the micrograph high-passed, robustly
standardised, averaged over a disk of 0.35 diameters and negated, as ribosomes are dark) is compared with the
labelled particles' (their 10th percentile is the cut for "particle-like") and with random background points away
from every label and pick. Picks without a label that pass the cut complete the labels, and both pickers are scored
again against the completed set. The criterion is a dark blob, which is what the LoG looks for, so the completed
figures favour the LoG. Usage::

    python benchmarks/bench_real.py [--model FILE] [--split test] [--lowpass SIGMA] [--diameter A] [--map_odds 0]
        [--json OUT] [--picture PNG]
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
from relion_pixer.preprocess import density_map, values_at


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


#: A pick is particle-like when its density reaches this percentile of the labelled particles' densities.
DENSITY_PERCENTILE = 10.0


def label_completeness(pickers: dict, mics, radius: float, diameter_px: float, seed: int = 0) -> dict:
    """How many picks without a label look like particles, and each picker scored against the completed labels.

    ``pickers`` maps a name to its picks (xy, score) per micrograph. A pick is particle-like when its density
    (:func:`relion_pixer.preprocess.density_map`) reaches the labelled particles' :data:`DENSITY_PERCENTILE` th
    percentile; random points more than a diameter from every label and pick give the criterion's false-alarm
    rate. The completed labels are the expert labels plus every particle-like unlabelled pick of any picker, one per
    particle (within ``radius``).
    """
    from dataclasses import replace

    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    dens = [density_map(m.image, diameter_px) for m in mics]
    cut = float(np.percentile(np.concatenate([values_at(d, m.truth) for d, m in zip(dens, mics)]), DENSITY_PERCENTILE))
    background = []
    for d, m, *picks in zip(dens, mics, *pickers.values()):
        pts = rng.uniform(radius, np.array(m.image.shape[::-1]) - radius, (2000, 2))
        taken = np.vstack([m.truth] + [xy for xy, _ in picks])
        background.extend(values_at(d, pts[cKDTree(taken).query(pts)[0] > diameter_px]))
    out = {"density_cut": cut, "background_particle_like": float(np.mean(np.asarray(background) >= cut)),
           "unmatched": {}, "particle_like": {}}
    completed = [m.truth.copy() for m in mics]
    for name, picks in pickers.items():
        n = like = 0
        for i, ((xy, _), d, m) in enumerate(zip(picks, dens, mics)):
            loose = xy[~_matched(xy, m.truth, radius)]
            n += len(loose)
            loose = loose[values_at(d, loose) >= cut] if len(loose) else loose
            like += len(loose)
            for c in loose:
                if not len(completed[i]) or np.hypot(*(completed[i] - c).T).min() > radius:
                    completed[i] = np.vstack([completed[i], c])
        out["unmatched"][name], out["particle_like"][name] = n, like
    done = [replace(m, truth=t) for m, t in zip(mics, completed)]
    out["completed_truth"] = int(sum(len(t) for t in completed))
    out["scores"] = {name: score(picks, done, radius) for name, picks in pickers.items()}
    return out


def picture(path: str, mic, picks, cut: float, radius: float, diameter_px: float) -> None:
    """One micrograph with PIXER's picks and the labels: picks on a label green, picks without one orange when
    particle-like (density at least ``cut``) and red when not, labels without a pick cyan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scipy.ndimage

    xy = picks[0]
    pairs = match_picks(xy, mic.truth, radius)
    matched = np.zeros(len(xy), bool)
    matched[pairs.pred_index] = True
    found = np.zeros(len(mic.truth), bool)
    found[pairs.true_index] = True
    like = values_at(density_map(mic.image, diameter_px), xy) >= cut
    img = scipy.ndimage.gaussian_filter(mic.image.astype(np.float64), 2.0)
    lo, hi = np.percentile(img, [1, 99])
    fig, ax = plt.subplots(figsize=(8, 8.4))
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
    groups = [(xy[matched], "lime", f"pick on a label ({matched.sum()})"),
              (xy[~matched & like], "orange", f"pick without a label, particle-like ({(~matched & like).sum()})"),
              (xy[~matched & ~like], "red", f"pick without a label, not particle-like ({(~matched & ~like).sum()})"),
              (mic.truth[~found], "cyan", f"label without a pick ({(~found).sum()})")]
    for pts, colour, label in groups:
        for x, y in pts:
            ax.add_patch(plt.Circle((x, y), 0.9 * radius, fill=False, color=colour, lw=1.2))
        ax.plot([], [], "o", mfc="none", color=colour, label=label)
    ax.set_axis_off()
    ax.set_title(f"EMPIAR-10028 {mic.name}: PIXER (defaults) against the expert labels")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8, frameon=False)
    fig.savefig(path, dpi=64, bbox_inches="tight")
    plt.close(fig)


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
    ap.add_argument("--map_odds", type=float, default=PickParams.map_odds,
                    help="PIXER's odds cut (0: the defaults before it existed)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lowpass", type=float, default=0.0, help="Gaussian sd (micrograph px) applied first")
    ap.add_argument("--diameter", type=float, default=REAL_DIAMETER_A,
                    help="particle diameter given to both pickers, in A (the labels' 300 A still sets the match radius)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--picture", help="draw the first micrograph's picks and labels into this PNG")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = load_pretrained(args.model)
    radius = 0.5 * REAL_DIAMETER_A / 5.36
    tune = lowpass(real_micrographs("train") + real_micrographs("valid"), args.lowpass)
    log_tune = run_log(tune, args.diameter, threshold=0.5)
    log_t, log_tune_score = best_threshold(log_tune, tune, radius, np.arange(0.5, 6.01, 0.25))
    mics = lowpass(real_micrographs(args.split), args.lowpass)
    t0 = time.time()
    pixer = run_pixer(mics, args.diameter, models, PickParams(threshold=args.threshold, max_particles=500,
                                                                  map_odds=args.map_odds))
    seconds = (time.time() - t0) / len(mics)
    log = run_log(mics, args.diameter, threshold=log_t)
    figures = {
        "split": args.split,
        "lowpass_sigma_px": args.lowpass,
        "diameter_A": args.diameter,
        "radius_px": radius,
        "threshold": args.threshold,
        "map_odds": args.map_odds,
        "pixer": score(pixer, mics, radius),
        "pixer_seconds_per_micrograph": seconds,
        "log_threshold_from_train_valid": log_t,
        "log": score(log, mics, radius),
        "per_micrograph": {m.name: score([p], [m], radius)["f1"] for m, p in zip(mics, pixer)},
        "fom_matched_unmatched": fom_matched_unmatched(pixer, mics, radius),
        "unmatched_distance_diameters": unmatched_distances(pixer, mics, radius, 2 * radius),
        "completed_labels": label_completeness({"pixer": pixer, "log": log}, mics, radius, 2 * radius),
    }
    print(f"EMPIAR-10028 {args.split} split, {len(mics)} micrographs, match radius {radius:.1f} px, "
          f"particle diameter given {args.diameter:g} A"
          + (f", low-passed (Gaussian sd {args.lowpass:g} px)" if args.lowpass else ""))
    defaults = (args.threshold, args.map_odds) == (PickParams.threshold, PickParams.map_odds)
    name = "PIXER (defaults)" if defaults else f"PIXER (threshold {args.threshold:g}, map_odds {args.map_odds:g})"
    print(fmt(name, figures["pixer"]))
    print(fmt(f"LoG (threshold {log_t:g} from train+valid)", figures["log"]))
    fm = figures["fom_matched_unmatched"]
    print(f"mean figure of merit of picks with a label {fm[0]:.3f}, without one {fm[1]:.3f} "
          "(close values: the classifier sees no difference, as with unlabelled particles)")
    ud = figures["unmatched_distance_diameters"]
    print("picks without a label lie {:.2f} / {:.2f} / {:.2f} diameters (10th / 50th / 90th percentile) from the "
          "nearest label; labelled particles' nearest neighbours lie a median {:.2f} diameters away".format(
              *ud["unmatched_to_label_p10_p50_p90"], ud["label_nearest_neighbour_median"]))
    lc = figures["completed_labels"]
    print("picks without a label that look like a particle (density at least the labels' {:g}th percentile; {:.2%} "
          "of background points do): PIXER {} of {}, LoG {} of {}".format(
              DENSITY_PERCENTILE, lc["background_particle_like"], lc["particle_like"]["pixer"],
              lc["unmatched"]["pixer"], lc["particle_like"]["log"], lc["unmatched"]["log"]))
    print(f"against the labels completed by those picks ({lc['completed_truth']} particles; the criterion is a dark "
          "blob, so this favours the LoG):")
    print(fmt("  " + name, lc["scores"]["pixer"]))
    print(fmt("  LoG", lc["scores"]["log"]))
    print(f"PIXER time per 1024 px micrograph: {seconds:.2f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=1)
    if args.picture:
        picture(args.picture, mics[0], pixer[0], lc["density_cut"], radius, 2 * radius)


if __name__ == "__main__":
    main()
