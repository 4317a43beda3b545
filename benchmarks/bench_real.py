"""Accuracy on real data, every shared set: PIXER as a user runs it against a LoG blob picker.

The main yardstick. Every set under ``../shared/data/real/`` with a metadata file (``benchmarks/real_sets/<set>.toml``
or the set's own ``pixer_set.toml``: pixel size, particle diameter, split; a new set needs nothing else) is scored on
one split (default test): PIXER with its defaults exactly as the job runs them (shipped weights; the particle size
estimated on the split's first micrographs, as a job estimates it on its first ones), the LoG baseline with the
threshold that maximises F1 on the set's train + valid split (generous to it). Matching is one-to-one (Hungarian)
within half the set's particle diameter. Per set and pooled (true positives, picks and labels summed over the sets):
precision, recall, F1; the figure of merit's average precision over every candidate the map stage passes (threshold
0) beside the map score's alone on the same candidates; and a diameter sweep (PIXER given 0.8x-1.25x the set's
diameter, the match radius unchanged).

Where a set's labels are incomplete (``labels_complete = false``), how incomplete is measured, not assumed: each
pick's *density* (the micrograph high-passed, robustly standardised, averaged over a disk of 0.35 diameters and
negated, particles being dark) is compared with the labelled particles' (their 10th percentile is the cut for
"particle-like") and with random background points away from every label and pick. Picks without a label that pass
the cut complete the labels, and both pickers are scored again against the completed set. The criterion is a dark
blob, which is what the LoG looks for, so the completed figures favour the LoG. Usage::

    python benchmarks/bench_real.py [--model FILE] [--split test] [--sets NAME ...] [--no_sweep]
        [--estimate_size No] [--spacing No] [--lowpass SIGMA] [--bin N] [--json OUT] [--picture PNG]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from common import (add_dark_spare_argument, apply_dark_spare, best_threshold, binned, fmt, job_and_candidates,
                    job_sizes, lowpass, real_sets, run_log, score, segment_all, write_json)
from relion_pixer.evaluate import match_picks, pooled_average_precision
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


def add_completed_f1(rows: dict, pickers: dict, mics, rs) -> None:
    """Each picker scored against the labels completed with every picker's particle-like unlabelled picks
    (:func:`label_completeness`) into ``rows[name]["completed_f1"]``, and a line saying so: for a set whose
    labellers left particles out, reported beside the F1 and never deciding."""
    done = label_completeness(pickers, mics, rs.radius_px, 2 * rs.radius_px)
    for key in pickers:
        rows[key]["completed_f1"] = done["scores"][key]["f1"]
    print(f"{rs.title}, against the labels completed with every model's particle-like picks "
          f"({done['completed_truth']} particles): "
          + ", ".join(f"{key} {rows[key]['completed_f1']:.4f}" for key in pickers), flush=True)


def picture(path: str, mic, picks, cut: float, radius: float, diameter_px: float, title: str) -> None:
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
    ax.set_title(f"{title} {mic.name}: PIXER (defaults) against the labels")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8, frameon=False)
    fig.savefig(path, dpi=64, bbox_inches="tight")
    plt.close(fig)


def gallery(path: str, mics, picks, radius: float, title: str, matched_shown: int = 6) -> None:
    """Every pick without a label (yellow ring), then ``matched_shown`` picks on a label (cyan ring) to compare: a
    crop of two diameters around each, low-passed, with the labels (green) and the other picks (red) in it, titled
    with the figure of merit and the distance to the micrograph's edge in diameters. For judging by eye whether the
    unmatched picks are particles the labellers left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scipy.ndimage

    diameter = 2 * radius
    half = int(round(diameter))
    crops, shown = [], 0
    for (xy, fom), m in zip(picks, mics):
        img = scipy.ndimage.gaussian_filter(m.image.astype(np.float64), 2.0)
        height, width = img.shape
        pairs = match_picks(xy, m.truth, radius)
        unmatched = np.setdiff1d(np.arange(len(xy)), pairs.pred_index)
        matched = pairs.pred_index[: max(0, matched_shown - shown)]
        shown += len(matched)
        for kind, idx in (("no label", unmatched), ("on a label", matched)):
            for i in idx:
                x, y = np.round(xy[i]).astype(int)
                x0, y0 = max(0, x - half), max(0, y - half)
                crop = img[y0:min(height, y + half), x0:min(width, x + half)]
                near = lambda pts: pts[(np.abs(pts[:, 0] - x) < half) & (np.abs(pts[:, 1] - y) < half)] - [x0, y0]
                edge = min(x, y, width - 1 - x, height - 1 - y) / diameter
                crops.append((kind, fom[i], crop, near(m.truth), near(xy), (x - x0, y - y0), edge))
    crops.sort(key=lambda c: c[0] != "no label")
    cols = 6
    rows = max(1, -(-len(crops) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.0, rows * 2.15), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (kind, f, crop, labels, others, centre, edge) in zip(axes.ravel(), crops):
        lo, hi = np.percentile(crop, [1, 99])
        ax.imshow(crop, cmap="gray", vmin=lo, vmax=hi)
        ax.scatter(labels[:, 0], labels[:, 1], s=30, facecolors="none", edgecolors="lime", linewidths=1)
        ax.scatter(others[:, 0], others[:, 1], s=6, c="red")
        ax.scatter([centre[0]], [centre[1]], s=110, facecolors="none", linewidths=1.5,
                   edgecolors="yellow" if kind == "no label" else "cyan")
        ax.set_title(f"FOM {f:.2f}, edge {edge:.1f} d", fontsize=7)
    fig.suptitle(f"{title}: PIXER's picks without a label (yellow), then some on a label (cyan); labels green",
                 fontsize=9)
    fig.savefig(path, dpi=72, bbox_inches="tight")
    plt.close(fig)


#: Diameters the sweep gives PIXER, as multiples of the set's diameter.
SWEEP = (0.8, 0.9, 1.0, 1.12, 1.25)


def pixer_picks(mics, diameter_A: float, models, params: PickParams, estimate: bool, spacing: bool | None = None,
                segment=segment_all):
    """PIXER as a job runs it: per micrograph (xy, fom) at ``params``, and at threshold 0 (xy, fom, map score) for
    the average precisions, from one segmentation and one pass of the classifier (the picks at ``params`` are the
    threshold-0 candidates the decision's cut keeps, then with ``params.repick`` the job's second pass, whose
    additions join the candidates); the diameter it picked at (the size estimate's blend where ``estimate``, then the
    pick-spacing check where ``spacing``, None: the job's default); and its size estimate (A; None without one).
    ``segment`` makes the maps (:func:`common.segment_all`'s arguments and output), so that a benchmark can try
    another way of making them."""
    est, _, d = job_sizes(mics, diameter_A, models, estimate, spacing=spacing)
    picks, every = [], []
    for seg in segment(mics, d, models):
        job, r0 = job_and_candidates(seg, d, models, params)
        picks.append((job.xy, job.fom))
        every.append((r0.xy, r0.fom, r0.map_score))
    return picks, every, d, (est.diameter_A if est is not None else None)


def average_precisions(every, mics, radius: float) -> dict:
    """Average precision of the figure of merit and of the map score alone, over the same candidates."""
    xy, truth = [e[0] for e in every], [m.truth for m in mics]
    return {"fom": pooled_average_precision(xy, [e[1] for e in every], truth, radius),
            "map_score": pooled_average_precision(xy, [e[2] for e in every], truth, radius)}


def pooled(scores: list[dict]) -> dict:
    """Precision, recall and F1 of several sets' scores with true positives, picks and labels summed."""
    tp = sum(s["recall"] * s["truth"] for s in scores)
    picks, truth = sum(s["picks"] for s in scores), sum(s["truth"] for s in scores)
    p, r = tp / picks if picks else float("nan"), tp / truth if truth else float("nan")
    return {"precision": p, "recall": r, "f1": 2 * tp / (picks + truth) if picks + truth else float("nan"),
            "picks": int(picks), "truth": int(truth)}


def bench_set(rs, models, params: PickParams, split: str, estimate: bool, sweep: bool, picture_path=None,
              lowpass_sigma: float = 0.0, spacing: bool | None = None, gallery_dir=None, bin_factor: int = 1) -> dict:
    radius = rs.radius_px / bin_factor
    tune = lowpass(binned(rs.micrographs("train", "valid"), bin_factor), lowpass_sigma)
    log_t, _ = best_threshold(run_log(tune, rs.diameter_A, threshold=0.5), tune, radius, np.arange(0.5, 6.01, 0.25))
    mics = lowpass(binned(rs.micrographs(split), bin_factor), lowpass_sigma)
    t0 = time.time()
    picks, every, d_used, est_A = pixer_picks(mics, rs.diameter_A, models, params, estimate, spacing)
    seconds = (time.time() - t0) / len(mics)
    if gallery_dir:
        Path(gallery_dir).mkdir(parents=True, exist_ok=True)
        gallery(str(Path(gallery_dir) / f"{rs.name}_{split}_unmatched.png"), mics, picks, radius, rs.title)
    log = run_log(mics, rs.diameter_A, threshold=log_t)
    # the labels of particles lying wholly inside at the picking diameter (what a margin of half a diameter keeps)
    inside = [replace(m, truth=m.truth[np.all((m.truth >= 0.5 * d_used / m.angpix)
                                              & (m.truth <= np.array(m.image.shape[::-1]) - 1 - 0.5 * d_used / m.angpix),
                                              axis=1)]) for m in mics]
    out = {
        "title": rs.title, "split": split, "micrographs": len(mics), "diameter_A": rs.diameter_A,
        "angpix": rs.angpix * bin_factor, "radius_px": radius, "diameter_picked_at_A": d_used,
        "size_estimate_A": est_A, "size_estimate_error": est_A / rs.diameter_A - 1.0 if est_A else None,
        "pixer": score(picks, mics, radius), "log": score(log, mics, radius), "log_threshold_from_train_valid": log_t,
        "pixer_labels_inside": score(picks, inside, radius), "log_labels_inside": score(log, inside, radius),
        "average_precision": average_precisions(every, mics, radius),
        "pixer_seconds_per_micrograph": seconds,
        "per_micrograph": {m.name: score([p], [m], radius)["f1"] for m, p in zip(mics, picks)},
        "unmatched_distance_diameters": unmatched_distances(picks, mics, radius, 2 * radius),
        "fom_matched_unmatched": fom_matched_unmatched(picks, mics, radius),
    }
    if not rs.labels_complete:
        lc = label_completeness({"pixer": picks, "log": log}, mics, radius, 2 * radius)
        out["completed_labels"] = lc
        if picture_path:
            picture(picture_path, mics[0], picks[0], lc["density_cut"], radius, 2 * radius, rs.title)
    if sweep:
        out["sweep"] = {}
        for f in SWEEP:
            p, _, d, _ = pixer_picks(mics, f * rs.diameter_A, models, params, estimate, spacing)
            out["sweep"][f"{f:g}"] = {"given_A": f * rs.diameter_A, "picked_at_A": d, **score(p, mics, radius)}
        f1 = [v["f1"] for v in out["sweep"].values()]
        out["sweep_f1_spread"] = float(max(f1) - min(f1))
    return out


def report(name: str, r: dict) -> None:
    print(f"{r['title']} ({name}), {r['split']} split, {r['micrographs']} micrographs, match radius "
          f"{r['radius_px']:.1f} px; diameter {r['diameter_A']:g} A, picked at {r['diameter_picked_at_A']:.0f} A"
          + (f"; size estimate {r['size_estimate_A']:.0f} A ({r['size_estimate_error']:+.0%})"
             if r.get("size_estimate_A") else ""))
    print(fmt("  PIXER (defaults)", r["pixer"]))
    print(fmt(f"  LoG (threshold {r['log_threshold_from_train_valid']:g})", r["log"]))
    if r["pixer_labels_inside"]["truth"] < r["pixer"]["truth"]:
        print(f"  against the {r['pixer_labels_inside']['truth']} labels whose particle lies wholly inside at the picking "
              "diameter (what a margin of half a diameter, the default before session 15, keeps):")
        print(fmt("    PIXER (defaults)", r["pixer_labels_inside"]))
        print(fmt("    LoG", r["log_labels_inside"]))
    dpx = 2 * r["radius_px"]
    print("  centring, median distance from a matched pick to its label: PIXER {:.1f} px ({:.3f} diameter), LoG "
          "{:.1f} px ({:.3f})".format(r["pixer"]["median_distance_px"], r["pixer"]["median_distance_px"] / dpx,
                                      r["log"]["median_distance_px"], r["log"]["median_distance_px"] / dpx))
    ap = r["average_precision"]
    print(f"  average precision over the candidates: figure of merit {ap['fom']:.3f}, map score alone "
          f"{ap['map_score']:.3f}")
    if "completed_labels" in r:
        lc = r["completed_labels"]
        print("  unlabelled picks that look like a particle (density at least the labels' {:g}th percentile; {:.2%} of "
              "background points do): PIXER {} of {}, LoG {} of {}".format(
                  DENSITY_PERCENTILE, lc["background_particle_like"], lc["particle_like"]["pixer"],
                  lc["unmatched"]["pixer"], lc["particle_like"]["log"], lc["unmatched"]["log"]))
        print(fmt("  PIXER, completed labels", lc["scores"]["pixer"]))
        print(fmt("  LoG, completed labels", lc["scores"]["log"]))
    if "sweep" in r:
        print("  diameter sweep: " + ", ".join(f"{k}x F1 {v['f1']:.3f} (at {v['picked_at_A']:.0f} A)"
                                              for k, v in r["sweep"].items())
              + f"; spread {r['sweep_f1_spread']:.3f}")
    print(f"  PIXER time per micrograph {r['pixer_seconds_per_micrograph']:.2f} s", flush=True)


def main() -> None:
    from relion_pixer.relion import parse_bool

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model file (default: shipped weights)")
    ap.add_argument("--split", default="test", choices=["train", "valid", "test"])
    ap.add_argument("--sets", nargs="*", help="only these sets (folder names under shared/data/real)")
    ap.add_argument("--threshold", type=float, default=PickParams.threshold)
    ap.add_argument("--estimate_size", default="Yes", help="Yes (the job's default) or No: pick at the diameter given")
    ap.add_argument("--spacing", default="Yes", help="Yes (the job's default since session 25) or No: the pick-spacing "
                    "check after the size estimate (check_spacing)")
    ap.add_argument("--crowded", default="Yes", help="Yes (the job's default) or No: the second pass with the picks "
                    "masked out (crowded)")
    ap.add_argument("--no_sweep", action="store_true", help="skip the diameter sweep")
    ap.add_argument("--lowpass", type=float, default=0.0, help="Gaussian sd (micrograph px) applied to every micrograph")
    ap.add_argument("--bin", type=int, default=1, help="bin every micrograph by this factor first, as a user's binned "
                    "micrographs (pixel size times the factor; the lowpass sd is in binned pixels)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--picture", help="draw the first incompletely labelled set's first micrograph into this PNG")
    ap.add_argument("--gallery", metavar="DIR", help="draw each set's picks without a label into DIR/<set>_<split>_"
                    "unmatched.png, beside some on a label")
    add_dark_spare_argument(ap)
    args = ap.parse_args()
    dark_spare = apply_dark_spare(args.dark_spare)
    torch.set_num_threads(args.threads)
    models = load_pretrained(args.model)
    params = PickParams(threshold=args.threshold, repick=parse_bool(args.crowded, "--crowded"))
    estimate = parse_bool(args.estimate_size, "--estimate_size")
    spacing = parse_bool(args.spacing, "--spacing")
    figures = {"split": args.split, "threshold": args.threshold, "estimate_size": estimate, "spacing": spacing,
               "crowded": params.repick, "dark_spare": dark_spare,
               "lowpass_sigma_px": args.lowpass, "bin": args.bin,
               "sets": {}}
    for rs in real_sets(args.sets):
        r = bench_set(rs, models, params, args.split, estimate, not args.no_sweep,
                      args.picture if args.picture and not any("completed_labels" in v for v in
                                                               figures["sets"].values()) else None, args.lowpass,
                      spacing, args.gallery, args.bin)
        figures["sets"][rs.name] = r
        report(rs.name, r)
    sets = figures["sets"].values()
    figures["pooled"] = {"pixer": pooled([r["pixer"] for r in sets]), "log": pooled([r["log"] for r in sets])}
    print(fmt("pooled PIXER", figures["pooled"]["pixer"]))
    print(fmt("pooled LoG", figures["pooled"]["log"]))
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
