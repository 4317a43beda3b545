"""Choose the picker's candidate thresholds on validation data only (never on a test split).

Validation data: the EMPIAR-10028 *train and valid* micrographs (061-065, the split the data's README allows for
tuning; scored pooled, as one set of 413 labels) and simulated micrographs (150 px particles) at SNR 0.01, 0.1 and
3 whose seeds are disjoint from training and from ``bench_sim.py``'s held-apart micrographs. For every combination
of ``map_threshold`` (lowest smoothed-map score of a candidate), ``map_relative`` (fraction of the micrograph's
typical candidate score it also needs) and ``map_odds`` (fraction of the typical score's odds it also needs), with
the classifier at its default threshold (PIXER's 0.6), it reports the F1 on each set and the mean of the four; the
defaults should hold the combination with the best mean. Each micrograph is segmented once; only the candidate cut
and the classifier rerun per combination. Usage::

    python benchmarks/tune_defaults.py [--model FILE] [--n 12] [--seed 700000] [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np
import torch

from bench_sim import simulate
from common import REAL_DIAMETER_A, picks_from_maps, real_micrographs, score, segment_all
from relion_pixer.models import load_pretrained
from relion_pixer.pipeline import PickParams

#: Seeds of the simulated validation micrographs (training uses 0 and 10_000 + k, bench_sim 900_000 and 900_001);
#: each SNR adds round(1000 x SNR).
VALID_SEED = 700_000
MAP_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5)
MAP_RELATIVES = (0.0, 0.2, 0.3, 0.4, 0.5)
MAP_ODDS = (0.0, 0.03, 0.05, 0.08, 0.1, 0.15, 0.2)
#: The knobs of one row, in the order printed.
KNOBS = ("map_threshold", "map_relative", "map_odds")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--n", type=int, default=12, help="simulated micrographs per SNR")
    ap.add_argument("--seed", type=int, default=VALID_SEED)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = load_pretrained(args.model)

    sets = {"real_train_valid": (real_micrographs("train") + real_micrographs("valid"), REAL_DIAMETER_A)}
    for snr in (0.01, 0.1, 3.0):
        mics, _ = simulate(args.n, snr, args.seed + int(round(snr * 1000)), 2048, 1.0, 150.0)
        sets[f"sim_snr{snr:g}"] = (mics, 150.0)
    maps = {name: segment_all(mics, d, models) for name, (mics, d) in sets.items()}

    rows = []
    for combo in itertools.product(MAP_THRESHOLDS, MAP_RELATIVES, MAP_ODDS):
        knobs = dict(zip(KNOBS, combo))
        params = PickParams(**knobs)
        f1 = {}
        for name, (mics, d) in sets.items():
            f1[name] = score(picks_from_maps(maps[name], d, models, params), mics, 0.5 * d / mics[0].angpix)["f1"]
        rows.append({**knobs, **f1, "mean": float(np.mean(list(f1.values())))})
        print("  ".join(f"{k} {v:<5g}" for k, v in knobs.items()) + "  "
              + "  ".join(f"{k} {v:.3f}" for k, v in rows[-1].items() if k not in KNOBS), flush=True)
    best = max(rows, key=lambda r: r["mean"])
    defaults = tuple(getattr(PickParams, k) for k in KNOBS)
    default = next((r for r in rows if tuple(r[k] for k in KNOBS) == defaults), None)
    print(f"best mean F1 {best['mean']:.3f} at " + ", ".join(f"{k} {best[k]:g}" for k in KNOBS)
          + "; the defaults (" + ", ".join(f"{v:g}" for v in defaults) + ") give "
          + (f"{default['mean']:.3f}" if default else "(not in the grid)"))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"seed": args.seed, "n": args.n, "best": best, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
