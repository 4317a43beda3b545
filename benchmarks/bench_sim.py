"""Accuracy on simulated micrographs never used in training: picking F1 (PIXER vs LoG) and mask IoU.

Micrographs are simulated at a native sampling (default: 150 A particles at 1 A/px, i.e. 150 px across, in
2048 px micrographs, as typical data are recorded; ``--angpix 2.5 --diameter 200 --size 1024`` gives a harder
80 px case), at the requested SNR (defined at that native sampling, see relion_pixer.simulate), with seeds
disjoint from training.
The whole picker runs on them as on real data. Truth counts the particles lying wholly inside the micrograph
(centre at least half a diameter from the edge), as expert labels do and as PIXER's default edge margin picks.
The LoG threshold is tuned on a separate simulated set. Reports:
pooled precision/recall/F1 at half a diameter (one-to-one), PIXER picking at the diameter given (the guard) and, beside
it, as a job runs it (at the diameter its size estimate blends in, :func:`common.job_diameter`), and the mean particle IoU of the segmentation mask
(probability >= 0.5) against the simulator's label map at network scale, with the share of particles it misses
(IoU < 0.1), the median IoU of those it finds, and the mean IoU per quartile of the true masks' areas (thin,
elongated particles have the smallest masks and the least signal); beside it the IoU of the best masks the
network's output head can draw at its output stride (``relion_pixer.evaluate.best_mask_at_stride``), which a
perfect network of this design would reach at least. It also reports the picks with the classifier's threshold at 0
(how much the classifier stage removes) and the median distance of matched picks from the true centre at network
scale. Usage::

    python benchmarks/bench_sim.py --snr 0.01 --n 12 [--angpix 1 --diameter 150 --size 2048] [--phase_shift 90 [--defocus 0.02]]
        [--seed 900000] [--families elongated cylinder] [--map_threshold 0.05 --map_relative 0.2 --map_odds 0.05]
        [--model FILE] [--json OUT]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch

from common import (Micrograph, add_dark_spare_argument, apply_dark_spare, best_head_ious, best_threshold, fmt,
                    job_diameter, particle_mask_ious, picks_from_maps, run_log, score, segment_all, write_json)
from relion_pixer import NET_DIAMETER_PX
from relion_pixer.evaluate import match_picks
from relion_pixer.models import load_pretrained
from relion_pixer.pipeline import PickParams
from relion_pixer.simulate import random_config, simulate_micrograph

def simulate(n: int, snr: float, seed: int, size: int, angpix: float, diameter_A: float,
             phase_shift: float = 0.0, families: tuple | None = None, defocus_um: float | None = None,
             **options) -> tuple[list[Micrograph], list]:
    """``n`` held-apart micrographs; ``families`` restricts the particle shapes (None: the default mix, drawn as in
    training); ``defocus_um`` fixes the defocus (None: drawn; the other draws stay the same either way);
    ``options`` go to ``simulate_micrograph`` (none may draw random numbers)."""
    rng = np.random.default_rng(seed)
    mics, sims = [], []
    extra = {"families": tuple(families)} if families else {}
    if defocus_um is not None:
        extra["defocus_um"] = float(defocus_um)
    for i in range(n):
        cfg = random_config(rng, snr=snr, angpix=angpix, particle_diameter_px=diameter_A / angpix, empty=False,
                            phase_shift=phase_shift, **extra)
        sim = simulate_micrograph(rng, shape=(size, size), **cfg, **options)
        xy = np.asarray(sim.coords, np.float64).reshape(-1, 2)
        # like expert labels (and RELION's Extract), count only particles lying wholly inside the micrograph
        half = 0.5 * diameter_A / angpix
        inside = np.all((xy >= half) & (xy <= np.array([size - 1, size - 1]) - half), axis=1)
        mics.append(Micrograph(f"sim{i:03d}", sim.image, angpix, xy[inside]))
        sims.append(sim)
    return mics, sims


def median_offset(picks, mics: list[Micrograph], radius: float, to_net: float) -> float:
    """Median distance of matched picks from their true centre, in network-scale pixels."""
    dist = [match_picks(xy, m.truth, radius).distance for (xy, _), m in zip(picks, mics)]
    dist = np.concatenate(dist) if dist else np.zeros(0)
    return float(np.median(dist) * to_net) if len(dist) else float("nan")


def sim_arguments(description: str) -> argparse.ArgumentParser:
    """The options that choose a simulated set (shared with bench_detectability.py: the same defaults give the
    same held-apart micrographs)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model")
    ap.add_argument("--snr", type=float, default=0.01)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--angpix", type=float, default=1.0)
    ap.add_argument("--diameter", type=float, default=150.0, help="particle diameter in A")
    ap.add_argument("--seed", type=int, default=900_000,
                    help="seed of the scored micrographs (the LoG's tuning set uses seed + 1); the default set is "
                         "the held-apart one the README reports, other seeds give validation sets")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    return ap


def tuned_log_threshold(args, phase_shift: float = 0.0, families=None, defocus_um: float | None = None) -> float:
    """The LoG threshold with the best F1 on a tuning set (seed + 1) simulated like the scored one."""
    tune, _ = simulate(max(4, args.n // 3), args.snr, args.seed + 1, args.size, args.angpix, args.diameter,
                       phase_shift, families, defocus_um)
    radius = 0.5 * args.diameter / args.angpix
    return best_threshold(run_log(tune, args.diameter, 0.5), tune, radius, np.arange(0.5, 6.01, 0.25))[0]


def main() -> None:
    ap = sim_arguments(__doc__.split("\n\n")[0])
    ap.add_argument("--phase_shift", type=float, default=0.0,
                    help="phase plate: extra phase shift in degrees (about 90 for a Volta phase plate)")
    ap.add_argument("--defocus", type=float, default=None,
                    help="defocus in um for every micrograph (default: drawn, 0.5-3.5); near 0 with --phase_shift 90 "
                         "the particles show no CTF fringes")
    ap.add_argument("--map_threshold", type=float, default=PickParams.map_threshold,
                    help="candidate threshold (default: the picker's); to compare weights with their own best pair")
    ap.add_argument("--map_relative", type=float, default=PickParams.map_relative)
    ap.add_argument("--map_odds", type=float, default=PickParams.map_odds)
    ap.add_argument("--families", nargs="+", help="only these particle shape families (relion_pixer.simulate."
                    "ALL_FAMILIES), e.g. elongated cylinder, or smooth; default: the default mix")
    add_dark_spare_argument(ap)
    args = ap.parse_args()
    dark_spare = apply_dark_spare(args.dark_spare)
    torch.set_num_threads(args.threads)
    models = load_pretrained(args.model)
    d = args.diameter
    radius = 0.5 * d / args.angpix
    log_t = tuned_log_threshold(args, args.phase_shift, args.families, args.defocus)
    mics, sims = simulate(args.n, args.snr, args.seed, args.size, args.angpix, d, args.phase_shift, args.families,
                          args.defocus)
    maps = segment_all(mics, d, models)
    params = PickParams(map_threshold=args.map_threshold, map_relative=args.map_relative, map_odds=args.map_odds)
    pixer = picks_from_maps(maps, d, models, params)
    # as a job runs it: at the diameter its size estimate on the first micrographs blends in (the figures above pick at
    # the diameter given, the guard's definition)
    d_job = job_diameter(mics, d, models)
    as_job = picks_from_maps(segment_all(mics, d_job, models), d_job, models, params)
    ious, areas = particle_mask_ious(models, mics, sims, d)
    best_head = best_head_ious(models, mics, sims, d)
    edges = np.quantile(areas, [0.0, 0.25, 0.5, 0.75, 1.0])
    quartile = np.clip(np.searchsorted(edges, areas, side="right") - 1, 0, 3)
    figures = {
        "snr": args.snr,
        "phase_shift": args.phase_shift,
        "defocus_um": args.defocus if args.defocus is not None else "drawn",
        "families": args.families or "all",
        "map_threshold": args.map_threshold,
        "dark_spare": dark_spare,
        "map_relative": args.map_relative,
        "map_odds": args.map_odds,
        "seed": args.seed,
        "micrographs": args.n,
        "size": args.size,
        "angpix": args.angpix,
        "diameter_A": d,
        "pixer": score(pixer, mics, radius),
        "job_diameter_A": d_job,
        "pixer_as_job": score(as_job, mics, radius),
        # the classifier's share: the same candidates with its threshold at 0 instead of 0.6
        "pixer_threshold0": score(picks_from_maps(maps, d, models, replace(params, threshold=0.0)), mics, radius),
        "median_offset_net_px": median_offset(pixer, mics, radius, NET_DIAMETER_PX / (d / args.angpix)),
        "log_threshold": log_t,
        "log": score(run_log(mics, d, log_t), mics, radius),
        "mean_particle_iou": float(ious.mean()),
        "missed_fraction": float((ious < 0.1).mean()),
        "median_iou_found": float(np.median(ious[ious >= 0.1])) if (ious >= 0.1).any() else float("nan"),
        "iou_by_area_quartile": [float(ious[quartile == q].mean()) for q in range(4)],
        "area_quartile_edges_px": [float(e) for e in edges],
        # what a perfect network of this design would reach at least: the best masks its output head can draw
        "mask_iou_best_head": float(best_head.mean()),
        "best_head_iou_by_area_quartile": [float(best_head[quartile == q].mean()) for q in range(4)],
    }
    print(f"simulated, SNR {args.snr:g} ({10 * np.log10(args.snr):.0f} dB), {args.n} micrographs of {args.size} px, "
          f"particles {d / args.angpix:.0f} px (network scale {NET_DIAMETER_PX} px)"
          + (f", phase plate ({args.phase_shift:g} degrees)" if args.phase_shift else "")
          + (f", defocus {args.defocus:g} um" if args.defocus is not None else "")
          + (f", families {' '.join(args.families)}" if args.families else ""))
    knobs = (args.map_threshold, args.map_relative, args.map_odds)
    defaults = knobs == (PickParams.map_threshold, PickParams.map_relative, PickParams.map_odds)
    print(fmt("PIXER (defaults)" if defaults else "PIXER ({:g}, {:g}, {:g})".format(*knobs),
              figures["pixer"]))
    print(fmt(f"PIXER as a job (at {d_job:.0f} A)", figures["pixer_as_job"]))
    print(fmt("PIXER, classifier threshold 0", figures["pixer_threshold0"]))
    print(fmt(f"LoG (threshold {log_t:g}, tuned)", figures["log"]))
    print(f"matched picks lie a median {figures['median_offset_net_px']:.1f} px (network scale, particle "
          f"{NET_DIAMETER_PX} px) from the true centre")
    print(f"mean particle IoU of the segmentation mask: {figures['mean_particle_iou']:.3f} "
          f"(missed {figures['missed_fraction']:.1%}, median of the found {figures['median_iou_found']:.3f}; "
          f"by mask-area quartile {' / '.join(f'{v:.2f}' for v in figures['iou_by_area_quartile'])})")
    print(f"the best masks an output head of stride {models.segmenter.trunk.stride} can draw (a perfect network "
          f"reaches at least this) read {figures['mask_iou_best_head']:.3f} (by quartile "
          f"{' / '.join(f'{v:.2f}' for v in figures['best_head_iou_by_area_quartile'])})")
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
