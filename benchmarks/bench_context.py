"""Classifier on boxes or on the whole image: what one shared pass of the trunk changes (:data:`classify.CONTEXT`).

The job classifies every candidate the map passes. Run on each candidate's 64 px box, the classifier's trunk costs
about 0.3 ms a box on 2 CPU threads: on a crowded K3 micrograph (about 600 candidates) more than the segmentation.
With ``classify.CONTEXT`` the trunk runs once over the whole image and only the head runs per candidate, on the
trunk's features in the box's window; the box's origin is rounded to the trunk's stride (4 px, at most 2 px off,
the jitter the classifier was trained with) and the features near a box's edge see the neighbouring image instead
of the box's zero padding. Nothing else changes: the same candidates, the same decision.

Validation data only: every real set's *valid* micrographs (the shipped weights were trained on the train splits)
and the simulated validation micrographs of ``tune_defaults.py`` (150 px particles at SNR 0.01, 0.1 and 3, seeds
disjoint from training and from the held-apart sets), each picked as a job picks it, at the shipped defaults, with
the classifier on boxes and on the whole image.

The rule, written before the run that decides it (the prototype had been run on the real sets' train + valid
micrographs: ribosome F1 0.8480 -> 0.8477, apoferritin 0.9366 -> 0.9352): the whole image becomes the default
(``CONTEXT = True``) only if, on this data,

1. no set's F1 drops by more than 0.003 (each real set, and the simulated sets pooled per SNR),
2. the mean F1 (each real set once, the simulated sets together once, as ``tune_defaults.py`` weighs them) drops by
   at most 0.001,
3. no real set's average precision of the figure of merit (over every candidate the map passes) drops by more
   than 0.003, and
4. ``bench_decision.py --n 4`` with the whole image still keeps at least 95 % of the map's picks on the unseen
   families and drops no fewer contamination candidates than with boxes, less one
   (``benchmarks/results/decision.json``, made with boxes).

Otherwise boxes stay. Usage::

    python benchmarks/bench_context.py [--n 12] [--json benchmarks/results/context.json]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from bench_sim import simulate
from common import job_diameter, real_sets, score, segment_all, sets_mean, write_json
from relion_pixer import classify
from relion_pixer.evaluate import pooled_average_precision
from relion_pixer.models import load_pretrained
from relion_pixer.pipeline import PickParams, pick_from_map
from tune_defaults import VALID_SEED

MODES = {"boxes": False, "whole_image": True}
DROP = 0.003
MEAN_DROP = 0.001


def pick(maps, diameter_A: float, models, params: PickParams, context: bool):
    """Per micrograph, as the job picks them with ``classify.CONTEXT`` = ``context``: picks (xy, fom), every
    candidate the map passes (xy, fom), and the seconds the last stages took (candidates, classifier, decision)."""
    picks, every, seconds = [], [], 0.0
    default = classify.CONTEXT
    classify.CONTEXT = context
    try:
        for seg in maps:
            t0 = time.perf_counter()
            r = pick_from_map(*seg, diameter_A, models, params)
            seconds += time.perf_counter() - t0
            picks.append((r.xy, r.fom))
            r0 = pick_from_map(*seg, diameter_A, models, replace(params, threshold=0.0))
            every.append((r0.xy, r0.fom))
    finally:
        classify.CONTEXT = default
    return picks, every, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=12, help="simulated micrographs per SNR")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = load_pretrained(None)
    params = PickParams()
    sets = {f"real_{rs.name}": (rs.micrographs("valid"), rs.diameter_A, rs.radius_px) for rs in real_sets()}
    for snr in (0.01, 0.1, 3.0):
        mics, _ = simulate(args.n, snr, VALID_SEED + int(round(snr * 1000)), 2048, 1.0, 150.0)
        sets[f"sim_snr{snr:g}"] = (mics, 150.0, 75.0)
    res: dict = {}
    for name, (mics, d, radius) in sets.items():
        used = job_diameter(mics, d, models)
        maps = segment_all(mics, used, models)
        res[name] = {}
        for mode, context in MODES.items():
            picks, every, seconds = pick(maps, used, models, params, context)
            sc = score(picks, mics, radius)
            ap_fom = pooled_average_precision([e[0] for e in every], [e[1] for e in every], [m.truth for m in mics],
                                              radius)
            res[name][mode] = {"f1": sc["f1"], "precision": sc["precision"], "recall": sc["recall"],
                               "ap_fom": ap_fom, "last_stages_seconds": seconds,
                               "candidates": int(sum(len(e[0]) for e in every))}
        print(name + ": " + "; ".join(f"{m} F1 {v['f1']:.4f} AP {v['ap_fom']:.4f} last stages {v['last_stages_seconds']:.2f} s"
                                      for m, v in res[name].items()), flush=True)

    def mean_f1(mode):
        real = [v[mode]["f1"] for k, v in res.items() if k.startswith("real_")]
        sim = [v[mode]["f1"] for k, v in res.items() if k.startswith("sim_")]
        return sets_mean(real, sim)

    drops = {k: v["boxes"]["f1"] - v["whole_image"]["f1"] for k, v in res.items()}
    ap_drops = {k: v["boxes"]["ap_fom"] - v["whole_image"]["ap_fom"] for k, v in res.items() if k.startswith("real_")}
    mean_drop = mean_f1("boxes") - mean_f1("whole_image")
    checks = {"f1_drop_each": max(drops.values()) <= DROP, "mean_f1_drop": mean_drop <= MEAN_DROP,
              "ap_drop_each_real": max(ap_drops.values()) <= DROP}
    print(f"mean F1 boxes {mean_f1('boxes'):.4f}, whole image {mean_f1('whole_image'):.4f}; largest F1 drop "
          f"{max(drops.values()):+.4f}, largest AP drop {max(ap_drops.values()):+.4f}; rules 1-3 "
          + ("hold" if all(checks.values()) else "fail: " + ", ".join(k for k, v in checks.items() if not v))
          + " (rule 4: bench_decision.py)")
    write_json(args.json, {"n": args.n, "params": {k: getattr(params, k)
                                                   for k in ("threshold", "map_threshold", "map_relative", "map_odds")},
                           "sets": res, "mean_f1": {m: mean_f1(m) for m in MODES}, "f1_drop": drops,
                           "ap_drop": ap_drops, "rules_1_to_3": checks})


if __name__ == "__main__":
    main()
