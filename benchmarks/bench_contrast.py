"""Featureless particles of rising contrast: where the picker stops seeing particles.

Real particles have internal structure; these have none: dark Gaussian blobs (sd a quarter of the diameter) or
flat dark disks, 20 per 1536 x 1024 micrograph on white noise of sd 1, at amplitudes from 0.25 to 4 noise sd
(2 A/px, 200 A particles, 100 px), with no image formation at all: no CTF, no ice. A picker should not get worse
as the signal gets stronger; this one does: strong featureless disks look like the ice contamination it was
trained to reject. The LoG baseline (its threshold fixed at 1, not tuned) runs beside it. Featureless particles
imaged as micrographs are (the simulator's ``smooth`` family, through the CTF and over ice) are another matter:
``bench_sim.py --families smooth`` finds them. Usage::

    python benchmarks/bench_contrast.py [--n 3] [--json OUT]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import Micrograph, fmt, run_log, run_pixer, score, write_json
from relion_pixer.models import load_pretrained

ANGPIX = 2.0
DIAMETER_A = 200.0
SHAPE = (1024, 1536)
AMPLITUDES = (0.25, 0.5, 1.0, 2.0, 4.0)


def featureless(rng: np.random.Generator, kind: str, amplitude: float, n: int = 20) -> Micrograph:
    """One micrograph of ``n`` non-overlapping featureless particles (``"gauss"`` or ``"disk"``) on unit noise."""
    h, w = SHAPE
    r = 0.5 * DIAMETER_A / ANGPIX
    centres: list[np.ndarray] = []
    while len(centres) < n:
        c = rng.uniform((1.2 * r, 1.2 * r), (w - 1.2 * r, h - 1.2 * r))
        if all(np.hypot(*(c - p)) > 2.4 * r for p in centres):
            centres.append(c)
    yy, xx = np.mgrid[:h, :w]
    signal = np.zeros(SHAPE)
    for x, y in centres:
        d2 = (xx - x) ** 2 + (yy - y) ** 2
        signal += np.exp(-d2 / (2 * (r / 2) ** 2)) if kind == "gauss" else (d2 <= r * r)
    image = rng.standard_normal(SHAPE) - amplitude * signal
    return Micrograph(f"{kind}_{amplitude:g}", image.astype(np.float32), ANGPIX, np.array(centres))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--n", type=int, default=3, help="micrographs per kind and amplitude")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = load_pretrained(args.model)
    radius = 0.5 * DIAMETER_A / ANGPIX
    rows = []
    for kind in ("gauss", "disk"):
        for amp in AMPLITUDES:
            rng = np.random.default_rng([args.seed, AMPLITUDES.index(amp), kind == "disk"])
            mics = [featureless(rng, kind, amp) for _ in range(args.n)]
            pixer = score(run_pixer(mics, DIAMETER_A, models), mics, radius)
            log = score(run_log(mics, DIAMETER_A, threshold=1.0), mics, radius)
            rows.append({"kind": kind, "amplitude": amp, "pixer": pixer, "log": log})
            print(fmt(f"{kind} amplitude {amp:g}: PIXER", pixer))
            print(fmt(f"{kind} amplitude {amp:g}: LoG", log), flush=True)
    write_json(args.json, {"seed": args.seed, "n": args.n, "rows": rows})


if __name__ == "__main__":
    main()
