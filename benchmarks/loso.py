"""Leave one real set out: does fine-tuning on real micrographs carry over to a protein the networks never saw?

``configs/experiments/loso_ribosome_only.toml`` and ``loso_apoferritin_only.toml`` are v12's recipe (pixer_v4
fine-tuned on real train splits beside simulated replay) with one real set each. Each is scored on the *other* set's
train + valid micrographs, pooled (it never saw that protein), at the job's defaults (size estimate and all), beside
pixer_v4 (saw neither) and the shipped pixer_v12 (saw both: a reference, not a competitor). The decision these runs
feed is written in those configs before the runs: if the mean over the two unseen sets of (leave-one-out F1 - v4 F1)
is below -0.01, real fine-tuning did not carry over and v4 becomes a candidate to re-decide; otherwise v12's recipe
counts as carrying over. Usage::

    python benchmarks/loso.py --ribosome_only runs/loso_ribosome_only/model.pt \\
        --apoferritin_only runs/loso_apoferritin_only/model.pt [--json benchmarks/results/experiments/loso.json]

``--variant LABEL=RIBOSOME_ONLY,APOFERRITIN_ONLY`` (session 15) also scores another pair of leave-one-out models, a
variant of the recipe (e.g. ``configs/experiments/loso_*_only_jitter.toml``), and reports its change against the
pair above on each unseen set; the rule that judges a variant is written in its configs. Beside each change, reported
and never deciding, the 95 % interval of that change over the set's micrographs drawn again (paired bootstrap,
``common.f1_change_interval``): the noise of a few micrographs, before that of training again.

On a set whose labels are incomplete (``labels_complete = false``: the ribosome, whose labellers left particles out,
so its precision and F1 are bounded near 0.91 whatever picks them), every model is also scored against the labels
completed with the particle-like unlabelled picks of all models run (``bench_real.label_completeness``, session 16):
``completed_f1``, reported beside the F1 and never deciding.
"""

from __future__ import annotations

import argparse
from importlib import resources

import numpy as np
import torch

from bench_real import add_completed_f1, pixer_picks
from common import f1_change_interval, real_sets, score, write_json
from relion_pixer.models import load_pretrained
from relion_pixer.pipeline import PickParams

RIBOSOME, APOFERRITIN = "empiar10028_ribosome80S", "empiar10146_apoferritin"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ribosome_only", required=True, help="model fine-tuned with EMPIAR-10028 only")
    ap.add_argument("--apoferritin_only", required=True, help="model fine-tuned with EMPIAR-10146 only")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=RIBOSOME_ONLY,APOFERRITIN_ONLY",
                    help="another pair of leave-one-out models, compared with the pair above")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    weights = resources.files("relion_pixer") / "weights"
    models = {"v4": str(weights / "pixer_v4.pt"), "v12": None}
    # the model that never saw each set
    unseen_by = {APOFERRITIN: ("ribosome_only", args.ribosome_only), RIBOSOME: ("apoferritin_only",
                                                                                args.apoferritin_only)}
    variants = {}
    for item in args.variant:
        label, _, paths = item.partition("=")
        ribo, _, apo = paths.partition(",")
        if not (label and ribo and apo):
            ap.error(f"--variant takes LABEL=RIBOSOME_ONLY,APOFERRITIN_ONLY, got {item!r}")
        variants[label] = {APOFERRITIN: ribo, RIBOSOME: apo}
    out = {"sets": {}}
    for rs in real_sets([RIBOSOME, APOFERRITIN]):
        mics = rs.micrographs("train", "valid")
        name, path = unseen_by[rs.name]
        row = {}
        runs = [("v4", models["v4"]), (name, path), ("v12", models["v12"])]
        runs += [(f"{label}_{name}", v[rs.name]) for label, v in variants.items()]
        every = {}
        for key, model in runs:
            loaded = load_pretrained(model)
            picks, _, d, _ = pixer_picks(mics, rs.diameter_A, loaded, PickParams(), estimate=True)
            every[key] = picks
            row[key] = {"picked_at_A": d, **score(picks, mics, rs.radius_px)}
            print(f"{rs.title}, train + valid ({len(mics)} micrographs): {key:16s} F1 {row[key]['f1']:.4f} "
                  f"(P {row[key]['precision']:.3f}, R {row[key]['recall']:.3f}, picked at {d:.0f} A)", flush=True)
        if not rs.labels_complete:
            # reported, never deciding: every model scored against the labels completed with the particle-like
            # unlabelled picks of all of them (bench_real.add_completed_f1), so that a set whose labellers left
            # particles out still tells the models apart where its own labels cannot
            add_completed_f1(row, every, mics, rs)
        row["unseen_model"] = name
        row["change_vs_v4"] = row[name]["f1"] - row["v4"]["f1"]
        for label in variants:
            row[f"{label}_change"] = row[f"{label}_{name}"]["f1"] - row[name]["f1"]
            # reported, never deciding: how far the change could move over other micrographs like these
            row[f"{label}_change_interval"] = f1_change_interval(every[name], every[f"{label}_{name}"], mics,
                                                                 rs.radius_px)
        out["sets"][rs.name] = row
    change = float(np.mean([r["change_vs_v4"] for r in out["sets"].values()]))
    out["mean_change_vs_v4"] = change
    out["carries_over"] = change >= -0.01
    for label in variants:
        c = [r[f"{label}_change"] for r in out["sets"].values()]
        out[f"{label}_mean_change"] = float(np.mean(c))
        out[f"{label}_worst_change"] = float(min(c))
        ci = [r[f"{label}_change_interval"] for r in out["sets"].values()]
        print(f"variant {label}: F1 change against the pair above on the unseen sets "
              + ", ".join(f"{x:+.4f} (95 % over micrographs {lo:+.4f} to {hi:+.4f})" for x, (lo, hi) in zip(c, ci))
              + f" (mean {np.mean(c):+.4f})", flush=True)
    print(f"mean F1 change of the leave-one-out models against v4 on the protein they never saw: {change:+.4f}; "
          + ("v12's recipe carries over (>= -0.01)" if out["carries_over"]
             else "real fine-tuning did not carry over (< -0.01): v4 becomes a candidate to re-decide"))
    write_json(args.json, out)


if __name__ == "__main__":
    main()
