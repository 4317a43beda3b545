"""How long adaptation should fine-tune, judged on proteins the networks never saw (validation data only).

``bench_adapt.py --set_model`` (session 15) read what ``adapt Yes`` does for networks that never saw the protein: the
model of v12's recipe fine-tuned without apoferritin gained +0.027 F1 on it and the one without the ribosome +0.008
(mean +0.017, all micrographs; the default asks +0.02). The job's fine-tuning is short (100 classifier and 120
segmenter steps, about 12 s); this measures longer and faster fine-tuning, within the cost target (3 minutes for a
50-micrograph K3 job on 2 CPU threads; the steps cost about 0.05 s each there).

Data: each real set read by the model that never saw its protein (``--set_model``), the job adapting on all of its
micrographs (labels unused), scored on its **train + valid** micrographs only: the test splits decide the default
afterwards (below).

**The rule, written before the run.** Among the settings of :data:`GRID`, the one with the best mean F1 gain over the
sets (after, with the guard, minus before) is chosen if no set loses more than 0.005 with it and its mean gain beats
the job's setting's by at least 0.005; otherwise the job's setting stays. Then, for the chosen setting,
``bench_adapt.py --set_model ... --score_split test`` on the test splits decides the default by ``bench_adapt.py``'s
rule (with those models every set loses at most 0.005 and the mean gain is at least 0.02; the shipped networks lose
at most 0.005 on every set); the setting itself becomes the job's if it gains at least as much as the job's setting
on those test splits. (Added after the tuning run, before any test-split run: when the job's setting is chosen, the
verdict of ``bench_adapt.py --set_model``'s all-micrograph run, made before this tuning, stands; the test-split run
is then reported, not used to decide again.)

Session 15's run (``benchmarks/results/tune_adapt.json``): mean gains +0.020 (job), +0.020 (steps x2), +0.021 (steps
x4), +0.019 (lr x3); no setting beats the job's by 0.005, so the job's stays.

**Round 2, the pseudo-labels (``--round 2``, :data:`GRID2`).** Round 1 says the budget does not limit the gain; the
pseudo-labels may. The same rule, data and test-split step, written before round 2's run, over which picks count as
confident particles (``confident_fom`` 0.15 or 0.5 instead of 0.3; ``confident_quantile`` 20 instead of 40) and how
much of each batch comes from the user's micrographs (``user_fraction`` 0.75 instead of 0.5). Session 15's run
(``benchmarks/results/tune_adapt_round2.json``): mean gains +0.020 (job), +0.020 (fom 0.15 and fom 0.5: the same
pseudo-labels, the 40th percentile of the picks' figures of merit lies above both), +0.020 (quantile 20), +0.018
(user 0.75); the job's setting stays.

**Round 3, the size measured again (``--round 3``, :data:`GRID3`).** Adapted networks have learned the user's
particles, so their preferred scale may be nearer the true size than the general networks' (which read the
apoferritin shells never seen at 1.4x). ``reestimate``: kept adapted networks measure the size again on the job's
first micrographs and the job picks at the blend of that and the diameter given. The same rule and test-split step,
written before round 3's run. Disclosed before the run: the idea came from a diagnostic script (``/tmp``, not kept)
run on *all* micrographs of both sets with the leave-one-out models, which read apoferritin 0.926 -> 0.934 and the
ribosome 0.848 -> 0.853 when the adapted networks measured the size again. The train + valid and test micrographs
this rule scores are among those, so neither step is blind to it; the default is therefore decided as the rule says,
and the figures are reported with that caveat.

Session 15's run (``benchmarks/results/tune_adapt_round3.json``): mean gains +0.018 (job: +0.009, +0.026) and
+0.024 (reestimate: +0.014, +0.035; apoferritin picked at 133 A instead of 142 A), so the rule chose ``reestimate``.
On the test splits (``bench_adapt.py --score_split test --config '{"reestimate": true}'``,
``results/adapt_loso_test_reestimate.json``): +0.008 and +0.018 (mean +0.013) against the job setting's +0.005 and
+0.013 (+0.009, ``results/adapt_loso_test.json``): at least as much, so ``reestimate`` became the job's; the mean
stays short of 0.02, so ``adapt`` stays an option.

**Round 4, a second round of self-training (``--round 4``, :data:`GRID4`; session 17).** Rounds 1-2 say neither the
budget nor the pseudo-labels' thresholds limit the gain; the teacher may. The adapted networks find more of a protein
they never saw than the general ones (apoferritin recall 0.833 -> 0.881 in session 15), so their pseudo-labels hold
more of its particles. ``rounds 2`` (:attr:`relion_pixer.adapt.AdaptConfig.rounds`): round 2 takes its
pseudo-labels from round 1's networks, on the same micrographs with the same tiles held out, fine-tunes the general
networks again on them, and is kept only if its networks pass the guard (agreement with round 1's held-out
pseudo-labels, and their number of picks on the held-out tiles within 30 % of the general networks'). The setting measured
beside the job's (which has ``reestimate`` since round 3). The same rule and test-split step as rounds 1-3, written
before round 4's run; these micrographs were scored by rounds 1-3, so this round is no blinder than they were. The
cost doubles the adaptation's (about 30 s more per job on 2 CPU threads), within the 3-minute target.

Session 17's run (``benchmarks/results/tune_adapt_round4.json``): mean gains +0.024 (job: +0.014, +0.035) and +0.024
(two rounds: +0.012, +0.036; round 2 kept on both sets, agreement 0.997 and 1.000), so the job's setting (one round)
stays, and the test-split step does not arise. Self-training gains what it gains in its first round.

Usage::

    python benchmarks/tune_adapt.py --set_model empiar10028_ribosome80S=runs/loso_apoferritin_only/model.pt \\
        --set_model empiar10146_apoferritin=runs/loso_ribosome_only/model.pt --json benchmarks/results/tune_adapt.json
    python benchmarks/tune_adapt.py --round 2 --set_model ... --json benchmarks/results/tune_adapt_round2.json
    python benchmarks/tune_adapt.py --round 3 --set_model ... --json benchmarks/results/tune_adapt_round3.json
    python benchmarks/tune_adapt.py --round 4 --set_model ... --json benchmarks/results/tune_adapt_round4.json
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch

from bench_adapt import run_adapt
from common import add_set_model_argument, read_set_models, real_sets, write_json
from relion_pixer import adapt
from relion_pixer.models import load_pretrained
from relion_pixer.pipeline import PickParams

#: The settings measured (the job's first).
GRID = {
    "job": {},
    "steps x2": {"cls_steps": 200, "seg_steps": 240},
    "steps x4": {"cls_steps": 400, "seg_steps": 480},
    "lr x3": {"cls_lr": 1e-3, "seg_lr": 1e-3},
}
#: Round 2: the pseudo-labels.
GRID2 = {
    "job": {},
    "fom 0.15": {"confident_fom": 0.15},
    "fom 0.5": {"confident_fom": 0.5},
    "quantile 20": {"confident_quantile": 20.0},
    "user 0.75": {"user_fraction": 0.75},
}
#: Round 3: the size measured again by the adapted networks.
GRID3 = {
    "job": {},
    "reestimate": {"reestimate": True},
}
#: Round 4: a second round of self-training.
GRID4 = {
    "job": {},
    "two rounds": {"rounds": 2},
}
MAX_LOSS = 0.005
MIN_BETTER = 0.005


def choose(rows: dict) -> str:
    """The rule of the module docstring."""
    ok = {k: r for k, r in rows.items() if k != "job" and min(r["gains"]) >= -MAX_LOSS}
    best = max(ok, key=lambda k: ok[k]["mean_gain"]) if ok else None
    return best if best and ok[best]["mean_gain"] >= rows["job"]["mean_gain"] + MIN_BETTER else "job"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_set_model_argument(ap, required=True, help="read real set SET with the model FILE, one that never saw it")
    ap.add_argument("--round", type=int, choices=(1, 2, 3, 4), default=1,
                    help="1: the budget (GRID); 2: the pseudo-labels (GRID2); 3: the size measured again (GRID3); "
                         "4: a second round of self-training (GRID4)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    set_models = read_set_models(ap, args.set_model)
    sets = [rs for rs in real_sets() if rs.name in set_models]
    params = PickParams()
    rows = {}
    grid = {1: GRID, 2: GRID2, 3: GRID3, 4: GRID4}[args.round]
    for name, change in grid.items():
        cfg = replace(adapt.DEFAULTS, **change)
        sets_out = {}
        for rs in sets:
            print(f"{name}: {rs.title}", flush=True)
            sets_out[rs.name] = run_adapt(rs.micrographs("train", "valid", "test"), rs.micrographs("train", "valid"),
                                          rs.diameter_A, rs.radius_px, load_pretrained(set_models[rs.name]), params,
                                          cfg)
        gains = [r["gain_f1"] for r in sets_out.values()]
        rows[name] = {"change": change, "sets": sets_out, "gains": gains, "mean_gain": float(np.mean(gains))}
        print(f"{name}: gains {', '.join(f'{g:+.3f}' for g in gains)}, mean {np.mean(gains):+.3f}", flush=True)
    chosen = choose(rows)
    print(f"chosen: {chosen} {grid[chosen]}")
    write_json(args.json, {"set_models": set_models, "rows": rows, "chosen": chosen}, default=float)


if __name__ == "__main__":
    main()
