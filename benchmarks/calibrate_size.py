"""Calibrate the size estimate (:data:`relion_pixer.size.CALIBRATION`): from the scale the networks are surest at to
the particle's longest dimension, the diameter users give.

The estimate is the scale at which the networks are surest (:mod:`relion_pixer.size`). Before calibration it read
low on every set measured (EMPIAR-10028 -18 %, EMPIAR-10146 -11 %, simulated 150 A particles -9 % at SNR 0.1 and
-35 % at SNR 3; ``docs/benchmarks.md``), so it is a scale, not yet a size. This script measures the raw estimate
(calibration 1) as a job makes it (on a split's first :data:`relion_pixer.size.SAMPLE_MICROGRAPHS` micrographs)
with the diameter given at 0.8x, 1x and 1.25x each set's metadata diameter, on:

- every shared real set's train + valid micrographs (these fit the calibration), and its test micrographs
  (reported only);
- simulated micrographs of known size (150 A particles at 1 A/px, SNR 0.1 and 3, ``tune_size.py``'s seeds),
  reported as guards.

**The rule, written before the run that decides it:** the calibration is ``c = exp(-m)``, ``m`` the mean over the
real sets (each set once) of the mean over the three diameters given of ``log(raw estimate / metadata diameter)``
on train + valid, rounded to two decimals. It ships (``CALIBRATION = c``) only if, on train + valid after
calibration, every real set's estimates lie within 15 % of its metadata diameter at all three diameters given and
the largest such error is smaller than before, and the simulated SNR 0.1 estimates lie within 10 % of 150 A;
otherwise ``CALIBRATION`` stays 1. Usage::

    python benchmarks/calibrate_size.py --json benchmarks/results/calibrate_size.json
"""

from __future__ import annotations

import argparse

import numpy as np

from common import parse_with_models, real_sets, size_sims, write_json
from relion_pixer import size
from tune_size import GIVEN  # the diameters given of tune_size.py

MAX_REAL_ERROR = 0.15
MAX_SIM_ERROR = 0.10


def raw_ratios(mics, diameter_A: float, models) -> dict:
    """Raw estimate / metadata diameter for each diameter given (as factors of ``diameter_A``)."""
    sample = [(m.image, m.angpix) for m in mics[: size.SAMPLE_MICROGRAPHS]]
    return {f"{g:g}": size.estimate_diameter(sample, g * diameter_A, models, calibration=1.0).diameter_A / diameter_A
            for g in GIVEN}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3, help="simulated micrographs per SNR")
    args, models = parse_with_models(ap)
    fit, test, sims = {}, {}, {}
    for rs in real_sets():
        fit[rs.name] = raw_ratios(rs.micrographs("train", "valid"), rs.diameter_A, models)
        test[rs.name] = raw_ratios(rs.micrographs("test"), rs.diameter_A, models)
    for name, mics in size_sims(args.n).items():
        sims[name] = raw_ratios(mics, 150.0, models)
    m = float(np.mean([np.mean(np.log(list(r.values()))) for r in fit.values()]))
    c = round(float(np.exp(-m)), 2)

    def worst(group: dict, k: float) -> float:
        return max(abs(k * v - 1.0) for r in group.values() for v in r.values())

    checks = {
        f"real train + valid within {MAX_REAL_ERROR:.0%} after": worst(fit, c) <= MAX_REAL_ERROR,
        "real train + valid largest error smaller than before": worst(fit, c) < worst(fit, 1.0),
        f"simulated SNR 0.1 within {MAX_SIM_ERROR:.0%} after": worst({"s": sims["snr0.1"]}, c) <= MAX_SIM_ERROR,
    }
    ships = all(checks.values())
    figures = {"given_factors": GIVEN, "raw_ratio": {"train_valid": fit, "test": test, "simulated": sims},
               "calibration": c, "checks": checks, "ships": ships,
               "largest_error": {k: {"raw": worst(g, 1.0), "calibrated": worst(g, c)}
                                 for k, g in (("train_valid", fit), ("test", test), ("simulated", sims))}}
    for label, group in (("train + valid (fits)", fit), ("test (reported)", test), ("simulated, 150 A", sims)):
        print(label)
        for name, r in group.items():
            print(f"  {name}: raw " + " / ".join(f"{v:.3f}" for v in r.values())
                  + f" of the diameter; calibrated ({c:g}) " + " / ".join(f"{c * v:.3f}" for v in r.values())
                  + f"  (given {' / '.join(r)}x)")
    for k, v in checks.items():
        print(f"  {'met' if v else 'NOT met'}: {k}")
    print(f"rule: calibration {c:g} " + ("ships" if ships else "does not ship (CALIBRATION stays 1)"))
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
