"""Segmentation speed (wall and process CPU time): one resampled 1024 x 1024 network-scale input on the CPU (or a GPU), shipped weights.

Usage::

    python benchmarks/bench_segment.py [--threads 2] [--size 1024] [--device cpu] [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relion_pixer.models import load_pretrained  # noqa: E402
from relion_pixer.segment import predict_probability  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--model", help="model file (default: shipped weights)")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = load_pretrained(args.model, device=args.device)
    img = np.random.default_rng(0).standard_normal((args.size, args.size)).astype(np.float32)
    predict_probability(models.segmenter, img, args.device)  # warm-up
    times, cpu = [], []
    for _ in range(args.repeats):
        c0 = time.process_time()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        predict_probability(models.segmenter, img, args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    figures = {"size": args.size, "threads": args.threads, "device": args.device,
               "median_s": float(np.median(times)), "best_s": float(np.min(times)),
               # process CPU time over all threads: on a busy machine, this divided by the threads is what an
               # idle one would take
               "median_cpu_s": float(np.median(cpu)), "load_average": __import__("os").getloadavg()[0]}
    print(json.dumps(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
