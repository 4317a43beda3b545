"""False picks on micrographs without particles (empty holes, ice, carbon, contamination only).

Simulates empty micrographs (``random_config(..., empty=True)``) at several SNRs and counts the picks PIXER makes
with its defaults and with a stricter candidate cut (``--map_threshold``/``--map_relative``/``--map_odds``, default:
the former fixed cut 0.5 / 0 / 0). Every pick is false. Usage::

    python benchmarks/bench_empty.py [--n 6] [--size 2048 --angpix 1 --diameter 150] [--json OUT]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import Micrograph, picks_from_maps, segment_all, write_json
from relion_pixer.models import load_pretrained
from relion_pixer.pipeline import PickParams
from relion_pixer.simulate import random_config, simulate_micrograph

SNRS = (0.01, 0.1, 0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--n", type=int, default=6, help="empty micrographs (cycling through SNR 0.01, 0.1, 0.5)")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--angpix", type=float, default=1.0)
    ap.add_argument("--diameter", type=float, default=150.0, help="particle diameter in A")
    ap.add_argument("--map_threshold", type=float, default=0.5)
    ap.add_argument("--map_relative", type=float, default=0.0)
    ap.add_argument("--map_odds", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = load_pretrained(args.model)
    strict = PickParams(map_threshold=args.map_threshold, map_relative=args.map_relative, map_odds=args.map_odds)
    rng = np.random.default_rng(31_337)  # not a training or benchmark seed
    rows = []
    for i in range(args.n):
        snr = SNRS[i % len(SNRS)]
        cfg = random_config(rng, snr=snr, angpix=args.angpix, particle_diameter_px=args.diameter / args.angpix, empty=True)
        sim = simulate_micrograph(rng, shape=(args.size, args.size), **cfg)
        assert len(np.asarray(sim.coords).reshape(-1, 2)) == 0
        maps = segment_all([Micrograph(f"empty{i}", sim.image, args.angpix, np.zeros((0, 2)))], args.diameter, models)
        default = len(picks_from_maps(maps, args.diameter, models)[0][0])
        stricter = len(picks_from_maps(maps, args.diameter, models, strict)[0][0])
        rows.append({"snr": snr, "default": default, "stricter": stricter})
        print(f"empty micrograph {i}, SNR {snr:g}: {default} picks with the defaults, {stricter} with map_threshold "
              f"{args.map_threshold:g} map_relative {args.map_relative:g} map_odds {args.map_odds:g}", flush=True)
    d = [r["default"] for r in rows]
    s = [r["stricter"] for r in rows]
    print(f"false picks per {args.size} px empty micrograph: defaults {min(d)}-{max(d)} (mean {np.mean(d):.1f}), "
          f"stricter {min(s)}-{max(s)} (mean {np.mean(s):.1f})")
    write_json(args.json, {"size": args.size, "diameter_px": args.diameter / args.angpix, "rows": rows})


if __name__ == "__main__":
    main()
