"""Benchmark of relion_pixer.picking: speed on a 1024 x 1024 map, and accuracy on synthetic probability maps.

Run from the repository root::

    python3 benchmarks/bench_picking.py            # full run (about a minute on 2 cores)
    python3 benchmarks/bench_picking.py --quick    # fewer maps

Synthetic maps (self-contained, until the simulator is used here): label maps of discs and ellipses about
32 px across at random positions and orientations, turned into "probability maps" the way a segmentation
network's output looks: each particle gets its own confidence (0.7-1.0), the map is blurred (sigma 2 px) and
Gaussian noise (sd 0.15) is added, clipped to [0, 1].

* Isolated particles: centres at least 1.25 diameters apart. Target: precision and recall >= 0.98
  (one-to-one matching within half a diameter, :mod:`relion_pixer.evaluate`).
* Touching pairs: pairs of particles whose outlines touch (centre distance 0.95-1.05 x the sum of their
  radii along the pair's axis), otherwise isolated. The grid/climb picker is compared with plain non-maximum
  suppression on the *same* score map, threshold and minimum distance: a pixel is a pick when it is the
  maximum of the disc of radius ``min_distance`` around it (``peak_local_max`` style).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relion_pixer.evaluate import match_picks, pooled_precision_recall_f1  # noqa: E402
from relion_pixer.picking import DEFAULT_THRESHOLD, MIN_DISTANCE_PER_DIAMETER, pick_centres, score_map  # noqa: E402

D = 32.0


# ---------------------------------------------------------------------------------------------- synthetic maps


def _paint(label, conf, x, y, a, b, theta, value):
    """Paint an ellipse (semi-axes a >= b, angle theta) into the label map and its confidence into conf."""
    r = int(np.ceil(a)) + 1
    h, w = label.shape
    y0, y1, x0, x1 = max(0, int(y) - r), min(h, int(y) + r + 2), max(0, int(x) - r), min(w, int(x) + r + 2)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    c, s = np.cos(theta), np.sin(theta)
    u = (xx - x) * c + (yy - y) * s
    v = -(xx - x) * s + (yy - y) * c
    inside = (u / a) ** 2 + (v / b) ** 2 <= 1
    label[y0:y1, x0:x1][inside] = 1
    conf[y0:y1, x0:x1][inside] = np.maximum(conf[y0:y1, x0:x1][inside], value)


def _random_shape(rng):
    """Semi-axes and angle of a disc (half the time) or an ellipse, about D across."""
    a = D / 2 * rng.uniform(0.85, 1.0)
    b = a if rng.random() < 0.5 else a * rng.uniform(0.6, 0.9)
    return a, b, rng.uniform(0, np.pi)


def _extent(a, b, theta, direction):
    """Distance from an ellipse's centre to its outline along a unit direction."""
    c, s = np.cos(theta), np.sin(theta)
    u = direction[0] * c + direction[1] * s
    v = -direction[0] * s + direction[1] * c
    return 1.0 / np.sqrt((u / a) ** 2 + (v / b) ** 2)


def synthetic_map(rng, shape=(1024, 1024), n=80, pairs=0, min_sep=1.25 * D, blur=2.0, noise=0.15, specks=0):
    """Return (prob_map float32, centres N x 2, is_pair N bool).

    ``specks``: number of small false-alarm blobs (radius 3-6 px, confidence 0.5-0.9) away from particles.
    """
    h, w = shape
    label = np.zeros(shape, np.uint8)
    conf = np.zeros(shape, np.float32)
    centres, flags, reach = [], [], []

    def free(p, r):
        return all(np.hypot(*(p - q)) >= r + rq + (min_sep - D) for q, rq in zip(centres, reach))

    tries = 0
    while len(centres) < n + 2 * pairs and tries < 20000:
        tries += 1
        want_pair = sum(flags) < 2 * pairs
        s1 = _random_shape(rng)
        p1 = rng.uniform([D, D], [w - 1 - D, h - 1 - D])
        if want_pair:
            s2 = _random_shape(rng)
            u = rng.normal(size=2)
            u /= np.hypot(*u)
            sep = (_extent(*s1, u) + _extent(*s2, -u)) * rng.uniform(0.95, 1.05)
            p2 = p1 + sep * u
            mid = (p1 + p2) / 2
            if not (D <= p2[0] <= w - 1 - D and D <= p2[1] <= h - 1 - D) or not free(mid, sep / 2 + D / 2):
                continue
            for p, sh in ((p1, s1), (p2, s2)):
                _paint(label, conf, *p, *sh, rng.uniform(0.7, 1.0))
                centres.append(p)
                flags.append(True)
                reach.append(D / 2)
        else:
            if not free(p1, D / 2):
                continue
            _paint(label, conf, *p1, *s1, rng.uniform(0.7, 1.0))
            centres.append(p1)
            flags.append(False)
            reach.append(D / 2)
    placed = 0
    while placed < specks and tries < 40000:
        tries += 1
        p = rng.uniform([0, 0], [w - 1, h - 1])
        if all(np.hypot(*(p - q)) >= D for q in centres):
            r = rng.uniform(3, 6)
            _paint(label, conf, *p, r, r, 0.0, rng.uniform(0.5, 0.9))
            placed += 1
    prob = scipy.ndimage.gaussian_filter(conf, blur) + rng.normal(0, noise, shape).astype(np.float32)
    return np.clip(prob, 0, 1).astype(np.float32), np.array(centres).reshape(-1, 2), np.array(flags, bool)


# ---------------------------------------------------------------------------------------------- baseline


def nms_baseline(score, min_distance, threshold):
    """Plain non-maximum suppression: pixels that are the maximum of the disc of radius min_distance around them."""
    r = int(np.floor(min_distance))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    footprint = xx**2 + yy**2 <= min_distance**2
    peak = (score == scipy.ndimage.maximum_filter(score, footprint=footprint, mode="constant", cval=-np.inf)) & (
        score >= threshold
    )
    y, x = np.nonzero(peak)
    return np.stack([x, y], axis=1).astype(np.float64)


# ---------------------------------------------------------------------------------------------- benchmarks


def bench_speed(repeats: int) -> None:
    import torch

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    prob, _, _ = synthetic_map(rng, n=250, pairs=20)
    print(f"\n== speed: {prob.shape[1]} x {prob.shape[0]} map, diameter {D:g} px, {torch.get_num_threads()} threads ==")
    pick_centres(prob, D)  # warm-up
    t_all, t_smooth = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        score_map(prob, D)
        t1 = time.perf_counter()
        res = pick_centres(prob, D)
        t2 = time.perf_counter()
        t_smooth.append(t1 - t0)
        t_all.append(t2 - t1)
    print(f"CPU pick_centres: median {1e3 * np.median(t_all):.1f} ms, best {1e3 * np.min(t_all):.1f} ms "
          f"({len(res.xy)} picks); of which smoothing median {1e3 * np.median(t_smooth):.1f} ms   [target <= 50 ms]")
    if torch.cuda.is_available():
        try:
            import cupy  # noqa: F401
        except ImportError:
            print("GPU: CUDA present but cupy not installed: skipped")
            return
        t = torch.from_numpy(prob).cuda()
        pick_centres(t, D)
        times = []
        for _ in range(max(repeats, 20)):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            r = pick_centres(t, D)  # returns host arrays, so the time includes the transfer back
            times.append(time.perf_counter() - t0)
        same = len(r.xy) == len(res.xy) and match_picks(r.xy, res.xy, 0.05).tp == len(res.xy)
        print(f"GPU pick_centres: median {1e3 * np.median(times):.2f} ms, best {1e3 * np.min(times):.2f} ms "
              f"({len(r.xy)} picks, same as CPU: {same})   [target <= 2 ms]")
    else:
        print("GPU: no CUDA device: skipped")


def bench_accuracy(n_maps: int) -> None:
    rng = np.random.default_rng(1)
    thr = DEFAULT_THRESHOLD
    md = MIN_DISTANCE_PER_DIAMETER * D
    radius = D / 2

    print(f"\n== accuracy: isolated particles, {n_maps} maps 1024 x 1024 each, match radius {radius:g} px ==")
    settings = [
        ("noise sd 0.15", dict()),
        ("noise sd 0.30 + 30 false-alarm specks/map", dict(noise=0.3, specks=30)),
    ]
    for label, kw in settings:
        preds, trues, errs = [], [], []
        for _ in range(n_maps):
            prob, true, _ = synthetic_map(rng, n=80, **kw)
            xy, _ = pick_centres(prob, D)
            m = match_picks(xy, true, radius)
            preds.append(xy)
            trues.append(true)
            errs.append(m.distance)
        s = pooled_precision_recall_f1(preds, trues, radius)
        e = np.concatenate(errs)
        print(f"{label}: precision {s.precision:.4f}, recall {s.recall:.4f}, F1 {s.f1:.4f} "
              f"({s.tp} / {s.n_true} particles, {s.n_pred} picks); centre error mean {e.mean():.2f} px, "
              f"95th pct {np.percentile(e, 95):.2f} px   [target >= 0.98 / 0.98]")

    print(f"\n== touching pairs vs plain NMS (same score map, threshold {thr:g}, min distance {md:g} px) ==")
    rec = {"grid/climb": [0, 0, 0, 0], f"NMS r={md:g}": [0, 0, 0, 0], f"NMS r={D:g}": [0, 0, 0, 0]}
    n_pair = n_iso = 0
    for _ in range(n_maps):
        prob, true, is_pair = synthetic_map(rng, n=30, pairs=25)
        n_pair += int(is_pair.sum())
        n_iso += int((~is_pair).sum())
        score = score_map(prob, D)
        found = {
            "grid/climb": pick_centres(prob, D).xy,
            f"NMS r={md:g}": nms_baseline(score, md, thr),
            f"NMS r={D:g}": nms_baseline(score, D, thr),
        }
        for name, xy in found.items():
            m = match_picks(xy, true, radius)
            hit = np.zeros(len(true), bool)
            hit[m.true_index] = True
            r = rec[name]
            r[0] += int(hit[is_pair].sum())
            r[1] += int(hit[~is_pair].sum())
            r[2] += m.fp
            r[3] += m.n_pred
    print(f"{n_pair} particles in touching pairs, {n_iso} isolated")
    print(f"{'method':<14} {'pair recall':>11} {'isolated recall':>15} {'false picks':>11} {'precision':>9}")
    for name, (hp, hi, fp, npred) in rec.items():
        print(f"{name:<14} {hp / n_pair:11.4f} {hi / n_iso:15.4f} {fp:11d} {(npred - fp) / max(npred, 1):9.4f}")
    print("(NMS r=D/2 is the baseline at the same distance; NMS r=D, the usual 'one particle per diameter', for context)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer maps and repeats")
    args = p.parse_args(argv)
    load = ", load average %.1f %.1f %.1f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    print(f"relion_pixer picking benchmark; {os.cpu_count()} CPUs visible{load}")
    bench_speed(repeats=10 if args.quick else 30)
    bench_accuracy(n_maps=4 if args.quick else 20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
