"""The contrast check (``relion_pixer.size.check_contrast``): does it tell micrographs with dark particles (cryo-EM, as
the networks learned them) from micrographs whose contrast is inverted, and what does an inverted micrograph cost
when nobody sets ``invert``?

- Every shared real set, every split, in groups of three micrographs as a job's first micrographs (the check's
  sample), as given and negated: the networks' confidence both ways and whether the check calls them inverted. It
  must call every negated group inverted and no group as given.
- Simulated micrographs (1024 px, 64 px particles at 2 A/px, seed 4242), SNR 0.01-3 and six families, one per case:
  as given the check must not fire (at low SNR the networks see little either way); negated, how often it does.
- ``--picks``: PIXER at the defaults on every real set's test split negated, without ``invert`` (what a job of
  contrast-inverted micrographs picks when the warning is ignored), beside the same micrographs as given.

The check's constants (``size.CONTRAST_MARGIN`` 1 log-odds, ``size.CONTRAST_FLOOR`` 0) were set from these
confidences (a ``/tmp`` run of the same measurement, session 29) with a wide margin; the check only warns. Usage::

    python benchmarks/bench_polarity.py [--picks] [--json benchmarks/results/polarity.json]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from common import parse_with_models, real_sets, write_json
from relion_pixer import size
from relion_pixer.simulate import random_config, simulate_micrograph

SNRS = (0.01, 0.03, 0.1, 1.0, 3.0)
FAMILIES = ("globular", "ribosome", "ring", "elongated", "smooth", "shell")
SEED = 4242


def _check(mics, diameter_A: float, models) -> dict:
    c = size.check_contrast(mics, diameter_A, models)
    return {"as_given": c.as_given, "negated": c.negated, "micrographs": c.micrographs, "inverted": c.inverted}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--picks", action="store_true", help="also pick the negated test splits without invert")
    args, models = parse_with_models(ap)
    out = {"margin": size.CONTRAST_MARGIN, "floor": size.CONTRAST_FLOOR, "real": {}, "simulated": {}}
    for rs in real_sets():
        mics = rs.micrographs("train", "valid", "test")
        groups = []
        for k in range(0, len(mics), size.SAMPLE_MICROGRAPHS):
            sample = [(m.image, m.angpix) for m in mics[k:k + size.SAMPLE_MICROGRAPHS]]
            groups.append({"micrographs": [m.name for m in mics[k:k + size.SAMPLE_MICROGRAPHS]],
                           "as_given": _check(sample, rs.diameter_A, models),
                           "negated": _check([(-i, a) for i, a in sample], rs.diameter_A, models)})
            g = groups[-1]
            print(f"{rs.name} {', '.join(g['micrographs'])}: as given {g['as_given']['as_given']:.2f} / negated "
                  f"{g['as_given']['negated']:.2f}; called inverted as given {g['as_given']['inverted']}, negated "
                  f"{g['negated']['inverted']}", flush=True)
        out["real"][rs.name] = {"groups": groups,
                                "negated_called_inverted": sum(g["negated"]["inverted"] for g in groups),
                                "as_given_called_inverted": sum(g["as_given"]["inverted"] for g in groups)}
    rng = np.random.default_rng(SEED)
    for snr in SNRS:
        for family in FAMILIES:
            cfg = random_config(rng, snr=snr, particle_diameter_px=64.0, families=family, empty=False, angpix=2.0)
            sim = simulate_micrograph(rng, shape=(1024, 1024), **cfg)
            r = _check([(sim.image, 2.0)], 128.0, models)
            r["negated_called_inverted"] = _check([(-sim.image, 2.0)], 128.0, models)["inverted"]
            out["simulated"][f"snr{snr:g}_{family}"] = r
            print(f"simulated SNR {snr:g} {family}: as given {r['as_given']:.2f}, negated {r['negated']:.2f}, "
                  f"called inverted {r['inverted']}, negated called inverted {r['negated_called_inverted']}",
                  flush=True)
    out["simulated_called_inverted"] = sum(r["inverted"] for r in out["simulated"].values())
    out["simulated_negated_called_inverted"] = sum(r["negated_called_inverted"] for r in out["simulated"].values())
    if args.picks:
        import bench_real
        from relion_pixer.pipeline import PickParams

        out["picks"] = {}
        for rs in real_sets():
            r = {}
            for sign in (1, -1):
                rs2 = replace(rs)  # the set with its micrographs read as given (sign 1) or negated
                rs2.micrographs = lambda *splits, rs=rs, sign=sign: [replace(m, image=sign * m.image)
                                                                    for m in rs.micrographs(*splits)]
                b = bench_real.bench_set(rs2, models, PickParams(), "test", True, False, spacing=True)
                r["as_given" if sign == 1 else "negated"] = {"pixer": b["pixer"], "log": b["log"]}
                print(f"{rs.name} test split {'as given' if sign == 1 else 'negated, invert No'}: PIXER "
                      f"F1 {b['pixer']['f1']:.3f} ({b['pixer']['picks']} picks), LoG {b['log']['f1']:.3f}", flush=True)
            out["picks"][rs.name] = r
    write_json(args.json, out)


if __name__ == "__main__":
    main()
