"""Self-training inside the job (``adapt Yes``, :mod:`relion_pixer.adapt`): picks before and after, and its cost.

Leave-one-set-out on every real set under ``../shared/data/real/`` (``common.real_sets``): a job is run on the set's
micrographs, all splits in the order train, valid, test (its labels unused), at the diameter the job picks at (the
size estimate on its first micrographs, ``common.job_diameter``). *Before*: the general (shipped) networks' picks on
the test split at the defaults. *After*: the picks ``adapt Yes`` gives on the test split: the adapted networks' when
the guard keeps them, the general networks' when it reverts (both reported, and the adapted networks' figures also
when reverted). Per set: precision, recall and F1 (one-to-one within half a diameter, ``common.score``) and the
figure of merit's average precision over every candidate at threshold 0, before and after.

The same on simulated micrographs of the family the shipped networks never saw (``smooth``, as in
``bench_decision.py``: 1024 px, 64 px particles at 2 A/px, SNR 0.1-1, ice, aggregates, carbon edges), adapted on
them and scored against the simulator's coordinates.

Cost (``--cost``, run in its own process so that its peak RSS is its own): the adaptation of a 50-micrograph job of
4096 x 4096 micrographs (simulated, 1 A/px, 180 A particles) on 2 CPU threads, on top of picking: the sample is
capped (``AdaptConfig.sample``), so the cost is that of the sample; seconds per stage and peak RSS.

Shipping rule, written before the run: ``adapt`` becomes the default only if, on every real set, the F1 *after*
(with the guard, as a job gives it) is at most 0.005 below the F1 *before*, and the mean gain over the sets is at
least 0.02. Otherwise it ships as an option (default No), with these figures in ``docs/adapt.md``.

**Networks that never saw the protein (``--set_model SET=FILE``, session 15).** The shipped networks were fine-tuned
on both real sets' train splits, so on them the general model leaves adaptation little to mend; a user's protein is
one the networks never saw. With ``--set_model`` a set is read by the model given (the model of v12's recipe
fine-tuned without that protein, ``configs/experiments/loso_*.toml``), and since that model saw none of its
micrographs, the job adapts on all of them and is scored on all of them (train + valid + test, its labels unused by
the job; ``--score_split`` scores one split instead, ``--config`` changes the adaptation's settings, for
``tune_adapt.py``). Rule for the default, written before the run: ``adapt`` becomes the default only if, with those models,
every set's F1 after is at most 0.005 below before and the mean gain is at least 0.02, **and** the shipped networks'
run above loses at most 0.005 on every set (session 14: -0.001 and +0.003). Otherwise it stays an option. A setting
``tune_adapt.py`` chose has its default decided by the test-split run (``--score_split test``), as its rule says;
this run's verdict is then reported, not decisive (session 15's ``reestimate``: all micrographs +0.021, test +0.013).
Usage::

    python benchmarks/bench_adapt.py [--sets NAME ...] [--sim 4] [--json benchmarks/results/adapt.json]
    python benchmarks/bench_adapt.py --sim 0 --set_model empiar10028_ribosome80S=runs/loso_apoferritin_only/model.pt \
        --set_model empiar10146_apoferritin=runs/loso_ribosome_only/model.pt --json benchmarks/results/adapt_loso.json
    python benchmarks/bench_adapt.py --cost [--json benchmarks/results/adapt_cost.json]

``--crowd_sets`` (session 25, measured, in no rule) adds ``bench_crowd.py``'s crowded simulated sets, adapted on and
scored on all their micrographs: the kept-apart beta-galactosidase set's pixel scale (``crowded_small``, SNR 1;
``crowded_small_noisy``, SNR 0.3), where the general networks miss a fifth of the touching particles::

    python benchmarks/bench_adapt.py --sets --sim 0 --crowd_sets crowded_small crowded_small_noisy \
        --crowd_given 1 1.25 --json benchmarks/results/adapt_crowded_s25.json

Measured so (seeds +13000): given 1x, adapting changed F1 by -0.001 and +0.007; given 1.25x by **-0.045** and
**-0.023**, and the guard kept the adapted networks both times (agreement 0.966 and 0.983), while their picks on the
held-out tiles fell by 12 % and 9 %. Trained on the confident picks, the networks learned to drop the fainter
touching particles that the general networks had found.

**A bound on the fall of picks (session 25), rule written before the run that decides it.** In every earlier run
of this benchmark that the guard kept, the adapted networks' picks on the held-out tiles changed by -3.5 % to +7.7 %
on the real sets, -5.3 % on ``smooth`` (2 picks of 38) and -1.5 % / -3.9 % on the crowded sets given 1x. Proposed:
``AdaptConfig.max_count_fall`` 0.07, so a fall of more than 7 % reverts (a rise stays bounded at 30 %). It
becomes adapt's default only if:

1. on fresh seeds (``--crowd_seed_offset 14000``, both crowded sets, given 1x, 1.12x and 1.25x: six cases), no
   case's F1 after adapting (with the guard, as a job gives it) is more than 0.003 below its F1 with the current
   bound (0.3), and the mean over the six is at least 0.005 above it;
2. every real set's F1 after adapting, in both runs (leave one set out on the test splits, and the shipped
   networks), and ``smooth``'s, is within 0.003 of session 25's runs with the current bound
   (``adapt_loso_test_session25.json``, ``adapt_session25.json``).

Otherwise the bound stays 0.3. Commands (the adapted networks are the same in both crowded runs; only the guard
differs)::

    python benchmarks/bench_adapt.py --sets --sim 0 --crowd_sets crowded_small crowded_small_noisy \
        --crowd_seed_offset 14000 --crowd_given 1 1.12 1.25 --config '{"max_count_fall": 0.3}' \
        --json benchmarks/results/adapt_fall_crowded_base.json
    python benchmarks/bench_adapt.py --sets --sim 0 --crowd_sets crowded_small crowded_small_noisy \
        --crowd_seed_offset 14000 --crowd_given 1 1.12 1.25 --config '{"max_count_fall": 0.07}' \
        --json benchmarks/results/adapt_fall_crowded.json
    python benchmarks/bench_adapt.py --sim 0 --score_split test --config '{"max_count_fall": 0.07}' \
        --set_model empiar10028_ribosome80S=runs/loso_apoferritin_only/model.pt \
        --set_model empiar10146_apoferritin=runs/loso_ribosome_only/model.pt \
        --json benchmarks/results/adapt_fall_loso_test.json
    python benchmarks/bench_adapt.py --sim 4 --config '{"max_count_fall": 0.07}' \
        --json benchmarks/results/adapt_fall_shipped.json

**Result (session 25): both met, so ``max_count_fall`` is 0.07.** With the current bound every fresh case was kept:
changes by adapting +0.001, -0.008, **-0.022** (``crowded_small`` given 1x, 1.12x, 1.25x) and +0.002, -0.010,
**-0.036** (``crowded_small_noisy``). With 0.07 the two 1.25x cases revert (picks on the held-out tiles -9 % and
-8 %), so their F1 after is the general networks' (0.932 and 0.795 instead of 0.910 and 0.759): mean over the six
+0.0095, no case lower. The real sets and ``smooth`` kept their adapted networks, every F1 unchanged. The 1.12x
cases still lose 0.008 and 0.010 (picks -6 % and -3 %): adapting does not help crowded micrographs picked larger
than the particles, and the guard does not catch all of it.

These runs, and the ``--crowd_sets`` runs above, were made before the pick-spacing check became the job's default
(later in session 25): add ``--check_spacing No`` to reproduce them. At the new default the job picks the crowded
sets near their true diameter, and adapting there changes F1 by -0.011 to +0.010 (``docs/adapt.md``)::

    python benchmarks/bench_adapt.py --sets --sim 0 --crowd_sets crowded_small crowded_small_noisy \
        --crowd_seed_offset 14000 --crowd_given 1 1.12 1.25 --json benchmarks/results/adapt_crowded_s25_check.json

**A bound on the rise of picks on any one micrograph (session 26), rule written before the run that decides it.**
``--sim_families smooth shell`` (new) adapts on 8 micrographs of each family no shipped network saw. On the design
seeds (smooth 880000, shell 881000) adapting lost **0.044** on ``smooth`` (precision 0.908 -> 0.824) while the guard
kept the adapted networks (agreement 1.000, held-out picks -2 %): on one micrograph of the sample (SNR 0.12, 15
particles) they picked 39 places against the general networks' 19, 23 of the job's picks there on empty background;
the other seven micrographs, and so the pooled count on the held-out tiles, stayed as they were. ``shell`` gained
+0.009. Proposed: ``AdaptConfig.max_micrograph_rise`` 0.3 (the pooled bound on a rise, ``max_count_change``,
applied to each micrograph of the sample, all its tiles) with ``micrograph_rise_slack`` 10 picks, so that a micrograph
of a few picks does not trip it on noise. On the design runs it reverts that ``smooth`` case only; the largest rise
it leaves is ``crowded_small_noisy`` given 1.12x (364 -> 469 picks, a gain of +0.009), then the unseen apoferritin
(118 -> 140). It becomes adapt's default only if, with fresh seeds:

1. on the unseen families (``smooth`` and ``shell``, two fresh seeds each, 8 micrographs: ``--sim_seed_offset 2000``
   and ``4000``) and on the crowded sets (``--crowd_seed_offset 16000``, given 1x, 1.12x and 1.25x), no case's F1
   after adapting (with the guard, as a job gives it) is more than 0.003 below its F1 with the bound off;
2. every real set's F1 after adapting, leave one set out on the test splits and with the shipped networks, is within
   0.003 of its F1 with the bound off.

It asks no gain on fresh data: it is a guard against a failure seen once, and is shipped only if it costs nothing
where that failure does not occur. Otherwise it stays off (None). Commands (the bound off was then the default,
``'{}'``; since ``reestimate_nearer`` became a default below, both settings are spelled out, as ``run_all.sh`` does:
``'{"max_micrograph_rise": null, "reestimate_nearer": false}'`` for the bound off)::

    python benchmarks/bench_adapt.py --sets --sim 8 --sim_families smooth shell --sim_seed_offset 2000 \
        --config '{"max_micrograph_rise": 0.3, "reestimate_nearer": false}' \
        --json benchmarks/results/adapt_micrograph_sim2000.json
    (the same with --sim_seed_offset 4000; --sets --sim 0 --crowd_sets crowded_small crowded_small_noisy
     --crowd_seed_offset 16000 --crowd_given 1 1.12 1.25; --sim 0 --score_split test --set_model ... ; --sim 0)

**Result (session 26): met, so ``max_micrograph_rise`` is 0.3.** Results in ``results/adapt_micrograph_*.json``
(``_off``: the bound off; the real sets' runs with it off are session 25's ``adapt_loso_test_session25.json`` and
``adapt_session25.json``, reproduced to the digit this session; the design run is
``adapt_micrograph_design_sim.json``). The bound acted once in fourteen fresh cases: ``shell`` at +4000, where one
micrograph went from 12 picks to 44; reverting gave 0.786 against 0.763 kept. Every other case, the six crowded ones
and the four real ones among them, read the same F1 with it and without. On the unseen families adapting is
unsteady: F1 before -> after (with the guard) ``smooth`` 0.879 -> 0.835, 0.896 -> 0.884, 0.838 -> **0.745** and
``shell`` 0.654 -> 0.663, 0.775 -> 0.824, 0.786 -> 0.786 (reverted). The ``smooth`` loss at +4000 is not in the
picks the bound counts (those barely moved) but in the size the adapted networks measure again
(``AdaptConfig.reestimate``: 153 A -> 175 A for a 128 A particle; recall 0.79 -> 0.68).

**The size measured again, only where it moves toward the diameter given (session 26), rule written before the run
that decides it.** On the seeds above (now design data), with the bound per micrograph on, ``reestimate`` off
against on: ``shell`` +0 +0.013 (the measure went 145 A -> 151 A for 128 A), ``shell`` +2000 -0.019 (135 A -> 131 A),
``smooth`` +4000 +0.075 (153 A -> 175 A), the other sims unchanged (reverted, or no measure), and on the real test
splits the networks that never saw the protein -0.001 (ribosome 289 A -> 291 A for 300 A) and **-0.007**
(apoferritin 142 A -> 133 A for 120 A). Turning it off loses on the real data, and every case where measuring again
lost is one where it moved the picking diameter away from the diameter given. Proposed:
``AdaptConfig.reestimate_nearer`` (take the diameter measured again only where it lies nearer, in log scale, to the
diameter given than the first; else the first stands). On the design data it keeps the better of on and off in every
case. It becomes adapt's default only if, with fresh seeds:

1. on the unseen families (``smooth`` and ``shell``, ``--sim_seed_offset`` 6000, 8000 and 10000, 8 micrographs) and
   on the crowded sets (``--crowd_seed_offset 17000``, given 1x, 1.12x and 1.25x), no case's F1 after adapting is
   more than 0.005 below its F1 with ``reestimate_nearer`` off, and their mean is not lower;
2. every real set's F1 after adapting (leave one set out on the test splits, and the shipped networks) is within
   0.003 of its F1 with it off.

Otherwise it stays off. Commands: each of ``--sets --sim 8 --sim_families smooth shell --sim_seed_offset N``,
``--sets --sim 0 --crowd_sets crowded_small crowded_small_noisy --crowd_seed_offset 17000 --crowd_given 1 1.12
1.25``, ``--sim 0 --score_split test --set_model ...`` and ``--sim 0``, with ``--config '{"reestimate_nearer":
true}'`` and with ``'{"reestimate_nearer": false}'`` (``results/adapt_nearer_*.json``, ``_off`` for false).

**Result (session 26): met, so ``reestimate_nearer`` is on.** Of the sixteen fresh cases it acted in three, where the
adapted networks were kept and measured a diameter farther from the one given: ``smooth`` +6000 (131 A kept, 142 A
measured, for 128 A) +0.012, ``smooth`` +10000 (125 A kept, 135 A measured) +0.031, apoferritin with the shipped
networks (123 A kept, 126 A measured, for 120 A) +0.002. Mean over the simulated and crowded cases +0.0071; every other
F1 the same. Where the measure moved toward the diameter given (``shell`` +8000 130 A, the never-seen apoferritin
133 A) it was taken, as before.

The same fresh runs were the first to test the bound per micrograph (above) on seeds it was not decided on. It
reverted five cases that the pooled bounds kept: ``smooth`` +8000 and ``shell`` +8000, which adapting would have cost
0.037 and 0.033, and the three ``crowded_small_noisy`` cases at +17000, which it would have gained 0.018, 0.008 and
0.006 (on one micrograph 156 -> 273 picks: there the adapted networks found touching particles the general ones
missed). Net +0.038 over the five, but not the "never loses" of its rule: on crowded noisy micrographs a rise of
picks can be particles found as well as noise picked. Both are reported in ``docs/adapt.md``; the bound stays.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import replace

import numpy as np
import torch

from common import (Micrograph, add_set_model_argument, job_and_candidates, job_diameter, job_sizes, read_set_models,
                    real_sets, score, segment_all, write_json)
from relion_pixer import adapt
from relion_pixer.evaluate import pooled_average_precision
from relion_pixer.job import JobOptions
from relion_pixer.models import load_pretrained
from relion_pixer.pipeline import PickParams

#: Whether the job's diameter has the pick-spacing check (``--check_spacing``; the job's default, Yes since session
#: 25; this session's runs before that default need ``--check_spacing No`` to be reproduced).
CHECK_SPACING = JobOptions.check_spacing
#: Seeds of the simulated families no shipped network saw (``--sim_families``): ``smooth`` (featureless balls,
#: ellipsoids and thick shells) and ``shell`` (thin-walled hollow shells, like apoferritin in projection; session 26).
SIM_SEEDS = {"smooth": 880_000, "shell": 881_000}

#: The rule above, as numbers.
MAX_LOSS = 0.005
MIN_MEAN_GAIN = 0.02


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def figures(models, mics: list[Micrograph], d: float, radius: float, params: PickParams) -> dict:
    """F1 at ``params`` (the job's picks, its second pass included) and the figure of merit's average precision at
    threshold 0 (every candidate, the second pass's additions among them, as in ``bench_real.py``), one segmentation
    and one pass of the classifier (:func:`common.job_and_candidates`)."""
    picks, every = [], []
    for seg in segment_all(mics, d, models):
        r, r0 = job_and_candidates(seg, d, models, params)
        picks.append((r.xy, r.fom))
        every.append((r0.xy, r0.fom))
    out = score(picks, mics, radius)
    out["ap_fom"] = pooled_average_precision([e[0] for e in every], [e[1] for e in every], [m.truth for m in mics],
                                             radius)
    return out


def run_adapt(job_mics: list[Micrograph], scored: list[Micrograph], diameter_A: float, radius: float, general,
              params: PickParams, cfg: adapt.AdaptConfig) -> dict:
    """Before and after on ``scored`` for a job on ``job_mics`` given ``diameter_A``."""
    _, blend, d = job_sizes(job_mics, diameter_A, general, spacing=CHECK_SPACING)
    before = figures(general, scored, d, radius, params)
    idx = adapt._sample_indices(len(job_mics), cfg.sample)
    t0 = time.perf_counter()
    res = adapt.adapt_models([(job_mics[i].image, job_mics[i].angpix) for i in idx], d, general, None, params, cfg,
                             info=print)
    seconds = time.perf_counter() - t0
    out = {"picked_at_A": d, "sample": len(idx), "before": before, "kept": res.kept, "reason": res.reason,
           "adapt_figures": res.figures, "adapt_seconds": seconds, "peak_rss_mb": peak_rss_mb()}
    if res.models is not None:
        adapted = load_fused(res.models)
        d_after = d
        if cfg.reestimate and d == blend:  # as the job: unless the spacing check shrank the diameter, the adapted
            d_after = job_diameter(job_mics, diameter_A, adapted, spacing=False)  # networks measure the size again
            out["measured_after_A"] = d_after
            if cfg.reestimate_nearer:
                d_after = adapt.nearer_to_given(d_after, d, diameter_A)
            out["picked_after_at_A"] = d_after
            print(f"  the adapted networks measure the size again: picking at {d_after:.0f} A (was {d:.0f} A)")
        out["adapted_networks"] = figures(adapted, scored, d_after, radius, params)
    out["after"] = out["adapted_networks"] if res.kept else before
    out["gain_f1"] = out["after"]["f1"] - before["f1"]
    print(f"  before F1 {before['f1']:.3f} AP {before['ap_fom']:.3f}; adapted networks "
          + (f"F1 {out['adapted_networks']['f1']:.3f} AP {out['adapted_networks']['ap_fom']:.3f}"
             if "adapted_networks" in out else "none")
          + f"; {'kept' if res.kept else 'reverted'} ({res.reason}); adapt {seconds:.0f} s, peak RSS "
          f"{out['peak_rss_mb']:.0f} MB", flush=True)
    return out


def load_fused(models):
    """The adapted networks as the job loads them from ``adapted_model.pt`` (batch norm folded)."""
    import tempfile
    from pathlib import Path

    from relion_pixer.models import save_models

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / adapt.MODEL_FILE
        save_models(path, models.classifier, models.segmenter)
        return load_pretrained(path)


def simulated(family: str, n: int, seed: int, size: int = 1024, dpx: float = 64.0, angpix: float = 2.0):
    """``n`` simulated micrographs of one family with contamination (as ``bench_decision.py``)."""
    from relion_pixer.simulate import random_config, simulate_micrograph

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        cfg = random_config(rng, snr=float(np.exp(rng.uniform(np.log(0.1), np.log(1.0)))), particle_diameter_px=dpx,
                            families=family, empty=False, n_ice=int(rng.integers(2, 5)),
                            n_aggregates=int(rng.integers(0, 3)), carbon_edge=bool(rng.random() < 0.5), angpix=angpix)
        sim = simulate_micrograph(rng, shape=(size, size), **cfg)
        out.append(Micrograph(f"{family}{i}", np.asarray(sim.image, np.float32), angpix,
                              np.asarray(sim.coords, np.float64).reshape(-1, 2)))
    return out


def _write_sample(folder: str, n: int) -> None:
    """The cost run's micrographs as MRC files (in a child process, so that the simulator's memory is not counted)."""
    import mrcfile

    for i, m in enumerate(simulated("globular", n, 990_000, size=4096, dpx=180.0, angpix=1.0)):
        with mrcfile.new(f"{folder}/mic{i:02d}.mrc") as mrc:
            mrc.set_data(m.image)
            mrc.voxel_size = m.angpix


def cost(cfg: adapt.AdaptConfig, threads: int) -> dict:
    """Seconds and peak RSS of adapting a 50-micrograph job of 4096 x 4096 micrographs (its capped sample), the
    micrographs read from files one at a time as the job reads them."""
    import multiprocessing
    import tempfile
    from pathlib import Path

    from relion_pixer import io

    with tempfile.TemporaryDirectory() as folder:
        child = multiprocessing.get_context("spawn").Process(target=_write_sample, args=(folder, cfg.sample))
        child.start()
        child.join()
        files = sorted(Path(folder).glob("*.mrc"))
        general = load_pretrained(None)
        rss_loaded = peak_rss_mb()
        entries = [io.MicrographEntry(p.name, p, None, None, "none") for p in files]
        sample = ((image, angpix) for _, image, angpix in io.readable_micrographs(entries))
        t0 = time.perf_counter()
        res = adapt.adapt_models(sample, 180.0, general, None, PickParams(), cfg, info=print)
        again = 0.0
        if res.kept and cfg.reestimate:  # adapt.for_job's own step: the size measured again on the first micrographs
            t1 = time.perf_counter()
            adapt._measure_again(entries, False, 180.0, load_fused(res.models), "cpu", print)
            again = time.perf_counter() - t1
        seconds = time.perf_counter() - t0
    out = {"job_micrographs": 50, "sample": len(files), "size_px": 4096, "threads": threads, "seconds": seconds,
           "stage_seconds": {**res.figures["seconds"], "size_again": again}, "kept": res.kept, "reason": res.reason,
           "peak_rss_mb_networks_loaded": rss_loaded, "peak_rss_mb": peak_rss_mb()}
    print(f"cost: {seconds:.0f} s for a sample of {len(files)} 4096 px micrographs on {threads} threads, peak RSS "
          f"{out['peak_rss_mb']:.0f} MB ({rss_loaded:.0f} MB with the networks loaded)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="*", help="only these real sets (--sets alone: none)")
    ap.add_argument("--sim", type=int, default=4, help="simulated micrographs of each unseen family (0: none)")
    ap.add_argument("--sim_families", nargs="+", default=["smooth"], choices=sorted(SIM_SEEDS),
                    help="the unseen simulated families (default smooth; shell: thin-walled hollow shells)")
    ap.add_argument("--sim_seed_offset", type=int, default=0, help="added to the unseen families' seeds")
    add_set_model_argument(ap, help="read real set SET with the model FILE, one that never saw it (scored on all its "
                                    "splits)")
    ap.add_argument("--score_split", choices=["all", "train", "valid", "test"], default="all",
                    help="with --set_model: the split(s) scored (default all; tune_adapt.py tunes on train + valid)")
    ap.add_argument("--config", default="{}", help="AdaptConfig fields to change, as JSON (tune_adapt.py's GRID)")
    ap.add_argument("--crowd_sets", nargs="*", default=[],
                    help="also these crowded simulated sets of bench_crowd.py (crowded_small, ...), adapted on and "
                         "scored on all their micrographs")
    ap.add_argument("--crowd_seed_offset", type=int, default=13_000, help="added to the crowded sets' seeds")
    ap.add_argument("--crowd_given", type=float, nargs="+", default=[1.0],
                    help="the crowded sets' diameters given, as multiples of the true one")
    ap.add_argument("--check_spacing", choices=["Yes", "No"], help="the job's check_spacing (default: the job's)")
    ap.add_argument("--cost", action="store_true", help="measure the cost on a 4096 px job instead")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = replace(adapt.DEFAULTS, **json.loads(args.config))
    global CHECK_SPACING
    if args.check_spacing:
        CHECK_SPACING = args.check_spacing == "Yes"
    if args.cost:
        out = cost(cfg, args.threads)
    else:
        general = load_pretrained(None)
        params = PickParams()
        sets = real_sets(args.sets) if args.sets != [] else []  # --sets alone: no real set
        set_models = read_set_models(ap, args.set_model, [rs.name for rs in sets])
        out = {"config": cfg.__dict__, "threshold": params.threshold, "set_models": set_models, "sets": {},
               "simulated": {}}
        for rs in sets:
            unseen = rs.name in set_models
            print(f"{rs.title}: adapting on train + valid + test, scoring on "
                  + (f"{args.score_split}, read by {set_models[rs.name]}" if unseen else "test"), flush=True)
            job_mics = rs.micrographs("train", "valid", "test")
            models = load_pretrained(set_models[rs.name]) if unseen else general
            scored = rs.micrographs("test")
            if unseen and args.score_split != "test":
                scored = job_mics if args.score_split == "all" else rs.micrographs(args.score_split)
            out["sets"][rs.name] = run_adapt(job_mics, scored, rs.diameter_A, rs.radius_px, models, params, cfg)
        for family in args.sim_families if args.sim else ():
            print(f"simulated, unseen family {family} ({args.sim} micrographs)", flush=True)
            mics = simulated(family, args.sim, SIM_SEEDS[family] + args.sim_seed_offset)
            out["simulated"][family] = run_adapt(mics, mics, 128.0, 32.0, general, params, cfg)
        for name in args.crowd_sets:  # measured, in no rule
            from bench_crowd import crowd_set

            _, mics, true_d = crowd_set(name, 8, args.crowd_seed_offset)
            for given in args.crowd_given:
                print(f"crowded simulated {name} (seeds +{args.crowd_seed_offset}), diameter given {given:g}x",
                      flush=True)
                out["simulated"][f"{name}_{given:g}x"] = run_adapt(mics, mics, given * true_d,
                                                                  0.5 * true_d / mics[0].angpix, general, params, cfg)
        gains = [r["gain_f1"] for r in out["sets"].values()]
        default = bool(gains) and min(gains) >= -MAX_LOSS and float(np.mean(gains)) >= MIN_MEAN_GAIN
        out["rule"] = {"max_loss": MAX_LOSS, "min_mean_gain": MIN_MEAN_GAIN, "gains": gains,
                       "mean_gain": float(np.mean(gains)) if gains else float("nan"), "adapt_default": default}
        if gains:
            print(f"rule: gains {', '.join(f'{g:+.3f}' for g in gains)}, mean {out['rule']['mean_gain']:+.3f}: adapt "
                  + ("becomes the default" if default else "ships as an option (default No)"))
    write_json(args.json, out, default=float)


if __name__ == "__main__":
    main()
