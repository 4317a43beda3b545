"""Why the size estimate reads clean particles small: the networks' confidence at each scale, taken three ways.

The size estimate (:mod:`relion_pixer.size`) is the scale at which :func:`relion_pixer.size.confidence` is highest:
the mean log-odds of the upper half of the candidate scores, each score the map smoothed by a Gaussian of a sixth of
the network diameter. It reads simulated 150 A particles at SNR 3 about a quarter small (raw 0.65x-0.69x; 0.75x-0.80x
calibrated) and the real sets and SNR 0.1 within 10 %. Session 26 guessed that the networks are less sure of clean
particles at the true scale. This measures it, on the micrographs a job's estimate reads (each real set's first
:data:`relion_pixer.size.SAMPLE_MICROGRAPHS` train + valid micrographs; ``tune_size.py``'s simulated 150 A sets at SNR
0.1 and 3), segmented at each scale of :data:`relion_pixer.size.FACTORS` of the metadata diameter, with the
candidates of the job's measure scored three ways (:func:`measures`):

- ``job``: the job's confidence (the smoothed map, sigma = diameter / 6);
- ``narrow``: the same with sigma = diameter / 12;
- ``peak``: the map itself, its highest value within a quarter diameter of each candidate (no smoothing), so the
  networks' certainty without the share of the smoothing Gaussian their mask covers.

For each it reports the scale of the highest value (no parabola, no calibration) and, for ``peak``, the scales within
0.1 of its highest value (the plateau where the networks are as sure as they get). Nothing here changes the job; a
``/tmp`` prototype of this script (session 27) read the figures first. Usage::

    python benchmarks/bench_size_confidence.py [--n 3] [--json benchmarks/results/size_confidence.json]
"""

from __future__ import annotations

import argparse

import numpy as np

from common import parse_with_models, real_sets, size_sims, write_json
from relion_pixer import NET_DIAMETER_PX, picking, size
from relion_pixer.pipeline import segment_micrograph

#: Smoothing of each measure, as a fraction of the network diameter (None: the job's, diameter / 6).
SIGMAS = {"job": None, "narrow": 1.0 / 12.0}
#: How far from a candidate (network diameters) ``peak`` looks for the map's highest value.
PEAK_RADIUS = 0.25
#: A scale is on the peak's plateau when within this much log-odds of the highest.
PLATEAU = 0.1


def measures(prob) -> dict:
    """The three confidences of one probability map (see the module docstring), and the number of candidates."""
    p = np.asarray(prob.numpy() if hasattr(prob, "numpy") else prob, dtype=np.float32)
    margin = size.ESTIMATE_MARGIN * NET_DIAMETER_PX
    out = {}
    for name, frac in SIGMAS.items():
        sigma = None if frac is None else frac * NET_DIAMETER_PX
        cand = picking.pick_centres(p, NET_DIAMETER_PX, threshold=0.05, margin_px=margin, sigma=sigma)
        out[name] = size.upper_half_log_odds(cand.score)
        if frac is None:
            r = PEAK_RADIUS * NET_DIAMETER_PX
            peaks = []
            for x, y in np.asarray(cand.xy).reshape(-1, 2):
                y0, x0 = int(max(0, np.floor(y - r))), int(max(0, np.floor(x - r)))
                peaks.append(float(p[y0:int(np.ceil(y + r)) + 1, x0:int(np.ceil(x + r)) + 1].max()))
            out["peak"] = size.upper_half_log_odds(peaks)
            out["candidates"] = int(len(cand.score))
    return out


def curves(sample, diameter_A: float, models, factors=size.FACTORS) -> dict:
    """Mean of :func:`measures` over the ``(image, angpix)`` sample at each scale of ``diameter_A``."""
    out = {}
    for f in factors:
        rows = []
        for image, angpix in sample:
            try:
                _, prob, _ = segment_micrograph(image, angpix, diameter_A * f, models)
            except ValueError:
                continue
            rows.append(measures(prob))
        if rows:
            out[float(f)] = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
    return out


def summary(curve: dict) -> dict:
    """The scale of each measure's highest value, and the peak's plateau (its ends and their geometric middle)."""
    fs = np.array(sorted(curve))
    out = {}
    for key in (*SIGMAS, "peak"):
        v = np.array([curve[f][key] for f in fs])
        out[f"best_{key}"] = float(fs[int(np.nanargmax(v))])
    v = np.array([curve[f]["peak"] for f in fs])
    on = fs[v >= np.nanmax(v) - PLATEAU]
    out["peak_plateau"] = [float(on.min()), float(on.max())]
    out["peak_plateau_middle"] = float(np.sqrt(on.min() * on.max()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3, help="simulated micrographs per SNR")
    args, models = parse_with_models(ap)
    sets = {}
    for rs in real_sets():
        mics = rs.micrographs("train", "valid")[: size.SAMPLE_MICROGRAPHS]
        sets[rs.name] = ([(m.image, m.angpix) for m in mics], rs.diameter_A)
    for name, mics in size_sims(args.n).items():
        sets[f"sim_150A_{name}"] = ([(m.image, m.angpix) for m in mics], 150.0)
    figures = {}
    for name, (sample, diameter_A) in sets.items():
        curve = curves(sample, diameter_A, models)
        figures[name] = {"summary": summary(curve), "curve": {f"{f:.3f}": v for f, v in curve.items()}}
        s = figures[name]["summary"]
        print(f"{name}: best scale job {s['best_job']:.2f}, narrow {s['best_narrow']:.2f}, peak {s['best_peak']:.2f}; "
              f"peak plateau {s['peak_plateau'][0]:.2f}-{s['peak_plateau'][1]:.2f}", flush=True)
        print("   scale   job  narrow  peak  candidates")
        for f, v in curve.items():
            print(f"   {f:5.2f} {v['job']:6.2f} {v['narrow']:6.2f} {v['peak']:6.2f} {v['candidates']:6.0f}")
    if args.json:
        write_json(args.json, {"factors": list(size.FACTORS), "sigmas": {k: v for k, v in SIGMAS.items()},
                               "peak_radius": PEAK_RADIUS, "plateau": PLATEAU, "sets": figures})


if __name__ == "__main__":
    main()
