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

Any number of sets (session 23): ``--set_model SET=FILE`` names the networks that never saw SET, for every real set
with a metadata file (``benchmarks/loso_train.py`` trains them, from v12's recipe or another, and prints these
items); ``--ribosome_only`` and ``--apoferritin_only`` are the same for the two shared sets. Usage::

    python benchmarks/loso.py --set_model SET=runs/loso/SET/model.pt ... [--variant LABEL=DIR] [--json OUT]

``--variant LABEL=RIBOSOME_ONLY,APOFERRITIN_ONLY`` (session 15) also scores another pair of leave-one-out models, a
variant of the recipe (e.g. ``configs/experiments/loso_*_only_jitter.toml``), and reports its change against the
pair above on each unseen set; ``--variant LABEL=DIR`` takes each set's from ``DIR/<set>/model.pt`` (as
``loso_train.py --out DIR`` writes them); the rule that judges a variant is written in its configs. Beside each change, reported
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
from pathlib import Path

import numpy as np
import torch

from bench_real import add_completed_f1, pixer_picks
from common import add_set_model_argument, f1_change_interval, read_set_models, real_sets, score, write_json
from relion_pixer.models import load_pretrained
from relion_pixer.pipeline import PickParams

RIBOSOME, APOFERRITIN = "empiar10028_ribosome80S", "empiar10146_apoferritin"


def _variant_models(ap, item: str, names) -> tuple[str, dict]:
    """``LABEL`` and ``{set: model file}`` of one ``--variant``: ``LABEL=DIR`` (``DIR/<set>/model.pt``) or
    ``LABEL=RIBOSOME_ONLY,APOFERRITIN_ONLY``."""
    label, _, paths = item.partition("=")
    if label and paths and Path(paths).is_dir():
        return label, {name: str(Path(paths) / name / "model.pt") for name in names}
    ribo, _, apo = paths.partition(",")
    if not (label and ribo and apo):
        ap.error(f"--variant takes LABEL=DIR or LABEL=RIBOSOME_ONLY,APOFERRITIN_ONLY, got {item!r}")
    return label, {APOFERRITIN: ribo, RIBOSOME: apo}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_set_model_argument(ap, help="the networks that never saw real set SET (loso_train.py makes them)")
    ap.add_argument("--ribosome_only", help="model fine-tuned with EMPIAR-10028 only (never saw EMPIAR-10146)")
    ap.add_argument("--apoferritin_only", help="model fine-tuned with EMPIAR-10146 only (never saw EMPIAR-10028)")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=DIR|RIBOSOME_ONLY,APOFERRITIN_ONLY",
                    help="other leave-one-out models, compared with those above")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    weights = resources.files("relion_pixer") / "weights"
    models = {"v4": str(weights / "pixer_v4.pt"), "v12": None}
    # the model that never saw each set, and its label in the output
    unseen_by = {name: ("loso", path) for name, path in read_set_models(ap, args.set_model).items()}
    if args.ribosome_only:
        unseen_by[APOFERRITIN] = ("ribosome_only", args.ribosome_only)
    if args.apoferritin_only:
        unseen_by[RIBOSOME] = ("apoferritin_only", args.apoferritin_only)
    if not unseen_by:
        ap.error("name the networks that never saw a set: --set_model SET=FILE (or --ribosome_only, --apoferritin_only)")
    variants = {}
    for item in args.variant:
        label, files = _variant_models(ap, item, unseen_by)
        if set(unseen_by) - set(files):
            ap.error(f"--variant {label}: no model for {sorted(set(unseen_by) - set(files))} (use LABEL=DIR)")
        variants[label] = files
    out = {"sets": {}}
    for rs in real_sets(sorted(unseen_by)):
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
