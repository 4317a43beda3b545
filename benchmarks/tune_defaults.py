"""Choose the picker's default thresholds on validation data only (never on a test split).

Validation data: the EMPIAR-10028 *valid* micrograph (065) and simulated micrographs at SNR 0.01 and 0.1 whose
seeds are disjoint from training and from ``bench_sim.py``'s held-apart micrographs. For every pair of
``map_threshold`` (smoothed-map score a candidate needs) and ``threshold`` (classifier probability) it reports
the F1 on each set and their mean. The classifier threshold's default is PIXER's 0.6; the ``map_threshold`` with
the best mean F1 at that threshold is the one the default should hold. Usage::

    python benchmarks/tune_defaults.py [--model FILE] [--n 6] [--json OUT]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from bench_sim import simulate
from common import REAL_DIAMETER_A, real_micrographs, run_pixer, score
from relion_pixer.models import load_pretrained
from relion_pixer.pipeline import PickParams

#: Seeds of the simulated validation micrographs (training uses 0 and 10_000 + k, bench_sim 900_000 and 900_001).
VALID_SEED = 700_000
MAP_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
CLS_THRESHOLDS = (0.3, 0.5, 0.6, 0.7, 0.8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--n", type=int, default=6, help="simulated micrographs per SNR")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = load_pretrained(args.model)

    sets = {"real_valid": (real_micrographs("valid"), REAL_DIAMETER_A)}
    for snr in (0.01, 0.1):
        mics, _ = simulate(args.n, snr, VALID_SEED + int(round(snr * 1000)), 2048, 1.0, 150.0)
        sets[f"sim_snr{snr:g}"] = (mics, 150.0)

    table = {}
    for mt in MAP_THRESHOLDS:
        per_set = {}
        for name, (mics, d) in sets.items():
            picks = run_pixer(mics, d, models, PickParams(threshold=0.0, max_particles=0, map_threshold=mt))
            radius = 0.5 * d / mics[0].angpix
            per_set[name] = {ct: score(picks, mics, radius, min_score=ct)["f1"] for ct in CLS_THRESHOLDS}
        for ct in CLS_THRESHOLDS:
            f1 = {name: per_set[name][ct] for name in sets}
            table[(mt, ct)] = f1 | {"mean": float(np.mean(list(f1.values())))}
            print(f"map_threshold {mt:<5g} threshold {ct:<4g} " + "  ".join(f"{k} {v:.3f}" for k, v in table[(mt, ct)].items()),
                  flush=True)
    at_default = [key for key in table if key[1] == PickParams.threshold]
    best = max(at_default, key=lambda key: table[key]["mean"])
    print(f"best mean F1 at threshold {best[1]:g}: {table[best]['mean']:.3f} with map_threshold {best[0]:g} "
          f"(default now {PickParams.map_threshold:g})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"best": {"map_threshold": best[0], "threshold": best[1]},
                       "rows": [{"map_threshold": k[0], "threshold": k[1], **v} for k, v in table.items()]}, fh, indent=1)


if __name__ == "__main__":
    main()
