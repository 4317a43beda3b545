"""A physical size measured from the micrographs: the edge of the picks' average (session 19; measured, not shipped).

The job's size estimate (:mod:`relion_pixer.size`) is the scale at which the networks are surest. That is not a
physical size: it reads clean, compact simulated particles (SNR 3) about a quarter small, and networks that never
saw apoferritin read it 1.4x (``docs/benchmarks.md``). This script measures a size the networks do not decide:

1. pick the job's first :data:`relion_pixer.size.SAMPLE_MICROGRAPHS` micrographs as the job does (the picking
   diameter blended from the diameter given and the networks' estimate);
2. average the micrograph (normalised, low-passed by a Gaussian of sd 0.04 of the diameter given) over boxes
   centred on the picks, and take the rotational average of that mean image: the particle's mean radial profile;
3. from the profile's darkest point (the centre of a solid particle, the rim of a hollow shell), go outward to the
   first bright maximum that rises at least half as far as the profile's highest point within one diameter given:
   the bright halo just outside a particle's edge in a phase-contrast image. Twice its radius is the estimate
   (:func:`halo_diameter`).

Two uses are judged, each by a rule written here before the run that decides it (a ``/tmp`` prototype, a cruder
first-local-maximum version, had been run on these sets beforehand: it read the simulated sets 0.95x-1.11x, the
ribosome at 0.25x where a small ripple near the centre came first, and apoferritin at 1.5x; so rule 1 is expected
to fail on apoferritin, and rule 2 had not been measured):

1. **As the size estimate the job reports**: only if, at every diameter given (0.8x, 1x, 1.25x the metadata
   diameter), it lies within 15 % of the metadata diameter on every real set (picks of both the networks that never
   saw the protein and the shipped ones) and within 10 % on each simulated set (``tune_size.py``'s SNR 0.1 and 3
   sets and ``bench_crowd.py``'s ``crowded_small`` sets).
2. **In the picking diameter**: two variants against the job's blend ``given ** 0.5 * estimate ** 0.5``:
   ``median`` = the median of the diameter given, the networks' estimate and the profile's; ``blend3`` = ``given **
   0.5 * (estimate * profile) ** 0.25``. Scored as ``tune_size.py --set_model`` scores (mean F1 over the three
   diameters given per set; each real set read by the networks that never saw it counts once, the two simulated
   SNR sets together once). A variant replaces the blend only if that mean beats the blend's by at least 0.005, no
   set's mean F1 in it falls by more than 0.01, and on the guards (the real sets read by the shipped networks and
   the two ``crowded_small`` sets) no set's mean falls by more than 0.01. If both qualify, the higher mean.

Usage (about 15 min on the project's 2-core CPU)::

    python benchmarks/bench_size_profile.py --set_model empiar10028_ribosome80S=runs/loso_apoferritin_only/model.pt \\
        --set_model empiar10146_apoferritin=runs/loso_ribosome_only/model.pt \\
        --json benchmarks/results/size_profile.json
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from bench_crowd import crowd_set
from common import (leave_one_out_setup, picks_from_maps, real_cases, score, segment_all, sets_mean, size_estimate,
                    size_sims, write_json)
from relion_pixer import size
from relion_pixer.evaluate import json_safe

GIVEN = (0.8, 1.0, 1.25)
#: Sd of the low-pass applied before averaging, in diameters given.
LOWPASS = 0.04
#: The profile is searched out to this many diameters given (radius).
REACH = 1.0
#: The halo must rise from the darkest point at least this share of the profile's whole rise within :data:`REACH`.
PROMINENCE = 0.5
#: Rule 1's tolerances (real sets, simulated sets) and rule 2's gain and largest loss.
REAL_TOL, SIM_TOL, GAIN, LOSS = 0.15, 0.10, 0.005, 0.01


def mean_profile(images, centres, given_A: float, angpix: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Radius (A), mean radial profile of the boxes centred on ``centres`` (one ``(N, 2)`` array of x, y pixels per
    image), and the number of boxes averaged (boxes crossing an image edge are left out)."""
    half = int(np.ceil(REACH * given_A / angpix)) + 2
    total = np.zeros((2 * half + 1, 2 * half + 1))
    n = 0
    for image, xy in zip(images, centres):
        img = np.asarray(image, np.float64)
        img = ndimage.gaussian_filter((img - img.mean()) / (img.std() + 1e-12), LOWPASS * given_A / angpix)
        h, w = img.shape
        for x, y in np.round(np.asarray(xy, np.float64).reshape(-1, 2)).astype(int):
            if half <= x < w - half and half <= y < h - half:
                total += img[y - half:y + half + 1, x - half:x + half + 1]
                n += 1
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    ring = np.rint(np.hypot(xx, yy)).astype(int).ravel()
    counts = np.bincount(ring)
    profile = np.bincount(ring, (total / max(n, 1)).ravel()) / np.maximum(counts, 1)
    return np.arange(half + 1) * float(angpix), profile[:half + 1], n


def halo_diameter(radius_A: np.ndarray, profile: np.ndarray, given_A: float) -> float:
    """Twice the radius of the first bright maximum outward of the profile's darkest point (within 0.75 of the
    diameter given) that rises at least :data:`PROMINENCE` of the highest rise within :data:`REACH` diameters;
    refined by a parabola. NaN without one."""
    inside = radius_A <= REACH * given_A
    r, p = radius_A[inside], profile[inside]
    i = int(np.argmin(np.where(r <= 0.75 * given_A, p, np.inf)))
    rise = p - p[i]
    need = PROMINENCE * rise[i:].max()
    for j in range(i + 1, len(p) - 1):
        if p[j] >= p[j - 1] and p[j] >= p[j + 1] and rise[j] >= need and need > 0:
            a, b, c = p[j - 1], p[j], p[j + 1]
            denom = a - 2 * b + c
            shift = 0.5 * (a - c) / denom if denom < 0 else 0.0
            return float(2 * (r[j] + shift * (r[1] - r[0])))
    return float("nan")


def main() -> None:
    args, set_files, shipped = leave_one_out_setup(__doc__.split("\n\n")[0])
    cases = [(f"{group}/{name}", mics, d, net) for group, name, mics, d, net in real_cases(set_files, shipped)]
    cases += [(f"sim/{name}", mics, 150.0, shipped) for name, mics in size_sims().items()]
    for name in ("crowded_small", "crowded_small_noisy"):
        _, mics, diameter = crowd_set(name, 4)
        cases.append((f"crowd/{name}", mics, diameter, shipped))
    out = {"set_models": set_files, "given": GIVEN, "cases": {}}
    for case, mics, d, net in cases:
        radius_px = 0.5 * d / mics[0].angpix
        rows = []
        for g in GIVEN:
            given = g * d
            est = size_estimate(mics, given, net)
            blend = size.picking_diameter(est)
            picks = picks_from_maps(segment_all(mics, blend, net), blend, net)
            sample = slice(0, size.SAMPLE_MICROGRAPHS)
            r_A, prof, boxes = mean_profile([m.image for m in mics[sample]], [p[0] for p in picks[sample]], given,
                                            mics[0].angpix)
            halo = halo_diameter(r_A, prof, given)
            diameters = {"blend": blend}
            if np.isfinite(halo):
                diameters["median"] = float(np.median([given, est.diameter_A, halo]))
                diameters["blend3"] = float(given ** 0.5 * (est.diameter_A * halo) ** 0.25)
            row = {"given": g, "estimate": est.diameter_A / d, "profile": halo / d, "boxes": boxes,
                   "profile_curve": prof.tolist(), "diameters": {k: v / d for k, v in diameters.items()}, "f1": {}}
            for key, dk in diameters.items():
                if key != "blend" and abs(dk - blend) < 1e-6 * d:
                    row["f1"][key] = row["f1"]["blend"]
                    continue
                p = picks if key == "blend" else picks_from_maps(segment_all(mics, dk, net), dk, net)
                row["f1"][key] = score(p, mics, radius_px)["f1"]
            rows.append(row)
            print(f"{case} given {g:g}x: networks {row['estimate']:.2f}x, profile {row['profile']:.2f}x "
                  f"({boxes} boxes); F1 " + ", ".join(f"{k} {v:.3f} at {row['diameters'][k]:.2f}x"
                                                     for k, v in row["f1"].items()), flush=True)
        out["cases"][case] = rows

    # rule 1: the profile as the reported estimate
    ok1 = True
    for case, rows in out["cases"].items():
        tol = REAL_TOL if case.split("/")[0] in ("loso", "shipped") else SIM_TOL
        worst = max(abs(r["profile"] - 1) if np.isfinite(r["profile"]) else np.inf for r in rows)
        ok1 &= bool(worst <= tol)
        print(f"rule 1 {case}: profile {', '.join(format(r['profile'], '.2f') + 'x' for r in rows)} (worst {worst:.2f}, "
              f"tolerance {tol:.2f})")
    out["rule1_ships"] = ok1

    # rule 2: the profile in the picking diameter
    def set_mean(rows, key):
        return float(np.mean([r["f1"].get(key, r["f1"]["blend"]) for r in rows]))

    decided = {}
    for key in ("blend", "median", "blend3"):
        per = {case: set_mean(rows, key) for case, rows in out["cases"].items()}
        loso = [v for c, v in per.items() if c.startswith("loso/")]
        sims = [v for c, v in per.items() if c.startswith("sim/")]
        decided[key] = {"mean": sets_mean(loso, sims), "per_set": per}
    base = decided["blend"]
    qualified = []
    for key in ("median", "blend3"):
        loss = max(base["per_set"][c] - v for c, v in decided[key]["per_set"].items())
        gain = decided[key]["mean"] - base["mean"]
        decided[key].update(gain=gain, worst_loss=loss)
        if gain >= GAIN and loss <= LOSS:
            qualified.append(key)
        print(f"rule 2 {key}: mean {decided[key]['mean']:.4f} vs blend {base['mean']:.4f} (gain {gain:+.4f}); worst "
              f"set loss {loss:+.4f}; per set " + ", ".join(f"{c} {v:.3f}" for c, v in decided[key]["per_set"].items()))
    chosen = max(qualified, key=lambda k: decided[k]["mean"]) if qualified else "blend"
    out.update(rule2=decided, rule2_chosen=chosen)
    print(f"rule 1 (the profile as the reported estimate): {'ships' if ok1 else 'does not ship'}; "
          f"rule 2 (the picking diameter): {chosen}")
    write_json(args.json, json_safe(out))


if __name__ == "__main__":
    main()
