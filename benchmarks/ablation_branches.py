"""Ablation like PIXER's Fig. 5: segmentation nets with 1 to 5 atrous branches, validation IoU.

Every variant starts from the same trained classifier trunk (the shipped model's, or ``--init``), trains on the
same simulated data for the same number of steps, and is scored on the same held-apart simulated micrographs at
SNR 0.01 and 0.1. Usage::

    python benchmarks/ablation_branches.py --steps 600 --out runs/ablation

Prints a table and writes ``OUT/ablation.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relion_pixer.models import build_segmenter, load_pretrained  # noqa: E402
from relion_pixer.train import fit_segmenter, simulated_set, validate_segmenter  # noqa: E402

RATES = [(2,), (2, 4), (2, 4, 6), (2, 4, 6, 8), (2, 4, 6, 8, 10)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--init", help="model file whose classifier trunk starts every variant (default: shipped)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--sim_train", type=int, default=200)
    ap.add_argument("--sim_valid", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/ablation")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    classifier = load_pretrained(args.init, fuse=False).classifier
    train_set = simulated_set(args.sim_train, 384, seed=100, snr=(0.005, 0.5))
    valid = {snr: simulated_set(args.sim_valid, 512, seed=200 + k, snr=snr, progress=False) for k, snr in enumerate((0.01, 0.1))}
    results = []
    for rates in RATES:
        torch.manual_seed(0)
        seg = build_segmenter(classifier, rates=rates)
        t0 = time.time()
        fit_segmenter(seg, [(train_set, 1.0)], args.steps, 8, 192, 2e-3, torch.Generator().manual_seed(0), torch.device("cpu"))
        seg.eval()
        figures = validate_segmenter(seg, valid)
        results.append({"branches": len(rates), "rates": list(rates), "train_s": round(time.time() - t0, 1), **figures})
        print(json.dumps(results[-1]), flush=True)
    (out / "ablation.json").write_text(json.dumps(results, indent=1))
    print("\nbranches  rates            IoU@SNR0.01  IoU@SNR0.1")
    for r in results:
        print(f"{r['branches']:8d}  {str(r['rates']):15s}  {r['iou_snr0.01']:.3f}        {r['iou_snr0.1']:.3f}")


if __name__ == "__main__":
    main()
