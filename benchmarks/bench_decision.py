"""The decision stage on simulated micrographs with contamination: does it keep a family the networks never saw, and
does it still drop the ice and carbon the former classifier veto dropped?

The shipped networks were trained without the ``smooth`` family (featureless balls, ellipsoids and thick shells,
drawn only when asked for), so it is the unseen family here; every other family is reported beside it. Each
micrograph (1024 px, 64 px particles, SNR 0.1-1, 2-4 ice blobs, up to 2 aggregates, a carbon edge in half of them)
is segmented at its true diameter, and on the same candidates three decisions are compared:

- *map alone*: the candidates the map stage passes (the default map cuts) with map score >= ``threshold``;
- *decision* (the default, :mod:`relion_pixer.decide`): figure of merit >= ``threshold``;
- *former veto*: the former map cuts (0.05, 0.2, odds 0.05) and P(particle) >= 0.6, the classifier's hard veto.

Figures per family: particles found (one-to-one within half a diameter) by the map alone and by the decision, and
their ratio (target >= 0.95 on the unseen family); contamination candidates (label "contamination" under the centre,
no particle within half a diameter) the former veto dropped, and the share of those the decision drops too (target
>= 0.90).

**By kind (session 27).** The simulator labels three things "contamination": the carbon film, ice blobs, and protein
aggregates (touching clumps of 4-12 of the micrograph's own particles). Issue 17's target names "the ice and carbon
candidates"; an aggregate's members are particles of the protein itself, packed as on a crowded grid, which the
decision must keep there. So the share is also given per kind (:func:`kind_map`). A ``/tmp`` prototype read the
standing set (seed 880000) first: ice and carbon 31 of 34 dropped (0.912), aggregates 38 of 49 (0.776), 69 of 83 in
all. **Rule, written before the run that decides it:** issue 17's contamination target counts as met only if the ice
and carbon share is at least 0.90 also on fresh seeds (``--seed 890000``, 16 micrographs per family, every family),
and pooled over both seed sets. Otherwise the figure stays "not met" and both readings are reported.

**Result: not met.** Fresh seeds (``results/decision_seed890000.json``): ice and carbon **23 of 29 (0.793)**
(carbon 15 of 18, ice 8 of 11), aggregates 37 of 41 (0.902), 60 of 70 in all (0.857); unseen ``smooth`` kept 552 of
553. Pooled over both sets, ice and carbon 54 of 63 (0.857), everything 129 of 153 (0.843). The aggregates are not
what keeps the share below 0.90: on one set they are dropped least, on the other most. With 30-35 ice and carbon
candidates per set, one set's share moves by about 0.06 (binomial sd at 0.85), so the standing set's 0.912 was the
luck of its seeds. Usage::

    python benchmarks/bench_decision.py [--model FILE] [--n 16] [--seed 880000] [--json OUT]
    python benchmarks/bench_decision.py --seed 890000 --json benchmarks/results/decision_seed890000.json
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from common import add_dark_spare_argument, apply_dark_spare, write_json  # (also puts the repository on the path)
from relion_pixer import NET_DIAMETER_PX, PARTICLE, classify, picking
from relion_pixer.evaluate import match_picks
from relion_pixer.models import load_pretrained
from relion_pixer.pipeline import PickParams, map_cut, pick_from_map, segment_micrograph
from relion_pixer.preprocess import to_original
from relion_pixer.simulate import random_config, simulate_micrograph
from relion_pixer.simulate.shapes import SHAPE_FAMILIES

UNSEEN = "smooth"
#: The families scored: the default mix and the unseen one (``shell``, added later, would change the figures).
FAMILIES = SHAPE_FAMILIES + (UNSEEN,)
SEED = 880_000
DPX = 64.0
FORMER = dict(map_threshold=0.05, map_relative=0.2, map_odds=0.05, classifier=0.6)
#: The former edge margin, in diameters.
FORMER_MARGIN = 0.5
#: The simulated micrographs' shape.
SHAPE = (1024, 1024)
#: The kinds of contamination the simulator draws (all labelled 2): the carbon film, ice blobs, and protein aggregates
#: (clumps of 4-12 of the micrograph's own particles, touching).
KINDS = ("carbon", "ice", "aggregate")


def simulate_family(family: str, n: int, seed: int, kinds: bool = False):
    """``n`` micrographs of ``family``; with ``kinds``, each as ``(micrograph, kind map)`` (:func:`kind_map`)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        cfg = random_config(rng, snr=float(np.exp(rng.uniform(np.log(0.1), np.log(1.0)))), particle_diameter_px=DPX,
                            families=family, empty=False, n_ice=int(rng.integers(2, 5)),
                            n_aggregates=int(rng.integers(0, 3)), carbon_edge=bool(rng.random() < 0.5), angpix=2.0)
        state = copy.deepcopy(rng) if kinds else None
        sim = simulate_micrograph(rng, shape=SHAPE, **cfg)
        out.append((sim, kind_map(sim, state, cfg)) if kinds else sim)
    return out


def kind_map(sim, state, cfg: dict) -> np.ndarray:
    """What each contamination pixel of ``sim`` is: 0 none, :data:`KINDS` index + 1 otherwise.

    The simulator draws the carbon film, then the ice blobs, then the aggregates, then the particles, and labels all
    three "contamination", so the same micrograph simulated again from the random state ``state`` it started from,
    without aggregates and then without ice either, has the ice and carbon (the carbon alone) where ``sim`` has them.
    """
    contam = sim.labels == 2
    shape = contam.shape
    no_aggregates = simulate_micrograph(copy.deepcopy(state), shape=shape, **{**cfg, "n_aggregates": 0}).labels == 2
    carbon = simulate_micrograph(copy.deepcopy(state), shape=shape,
                                 **{**cfg, "n_aggregates": 0, "n_ice": 0}).labels == 2
    if (no_aggregates & ~contam).any() or (carbon & ~no_aggregates).any():
        raise AssertionError("the simulator's draws changed order: the kinds of contamination cannot be told apart")
    out = np.zeros(contam.shape, np.uint8)
    out[contam] = KINDS.index("aggregate") + 1
    out[no_aggregates] = KINDS.index("ice") + 1
    out[carbon] = KINDS.index("carbon") + 1
    return out


def former_veto(net, prob, factors, models):
    """The former decision's picks (micrograph xy) and the candidates it vetoed."""
    c = picking.pick_centres(prob, NET_DIAMETER_PX, margin_px=FORMER_MARGIN * NET_DIAMETER_PX,
                             threshold=FORMER["map_threshold"])
    xy, s = np.asarray(c.xy).reshape(-1, 2), np.asarray(c.score)
    xy = xy[map_cut(s, PickParams(**{k: v for k, v in FORMER.items() if k != "classifier"}))]
    # the former classifier as it ran: on each candidate's box
    p = classify.classify_candidates(models.classifier, net, xy, context=False)[:, PARTICLE]
    return to_original(xy[p < FORMER["classifier"]], factors)


def contamination(sim, xy: np.ndarray) -> np.ndarray:
    """Which candidates sit on contamination (label 2 under the centre, no particle within half a diameter)."""
    if not len(xy):
        return np.zeros(0, bool)
    ij = np.clip(np.round(xy).astype(int), 0, np.array(sim.labels.shape[::-1]) - 1)
    on = sim.labels[ij[:, 1], ij[:, 0]] == 2
    truth = np.asarray(sim.coords).reshape(-1, 2)
    if len(truth):
        near = np.hypot(*(xy[:, None, :] - truth[None, :, :]).transpose(2, 0, 1)).min(axis=1) <= DPX / 2
        on &= ~near
    return on


def found(xy: np.ndarray, truth: np.ndarray) -> int:
    """How many true particles the picks ``xy`` find (one-to-one within half a diameter)."""
    return len(match_picks(xy, truth, DPX / 2).pred_index) if len(xy) and len(truth) else 0


def dropped(vetoed: np.ndarray, picks: np.ndarray) -> int:
    """How many of the former veto's rejections ``vetoed`` are not among ``picks`` (none within 2 px)."""
    if not len(vetoed) or not len(picks):
        return len(vetoed)
    return int((np.hypot(*(vetoed[:, None, :] - picks[None, :, :]).transpose(2, 0, 1)).min(axis=1) > 2.0).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--n", type=int, default=16, help="micrographs per family")
    ap.add_argument("--families", nargs="*", default=list(FAMILIES))
    ap.add_argument("--seed", type=int, default=SEED, help=f"first family's seed (default {SEED}; 1000 apart)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    add_dark_spare_argument(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = load_pretrained(args.model)
    params = PickParams()
    out = {"threshold": params.threshold, "unseen": UNSEEN, "seed": args.seed,
           "dark_spare": apply_dark_spare(args.dark_spare), "families": {}}
    for k, family in enumerate(args.families):
        f = dict(map_alone=0, decision=0, truth=0, contamination_vetoed=0, also_dropped=0, trust=[], micrographs=[],
                 by_kind={kind: {"vetoed": 0, "dropped": 0} for kind in KINDS})
        for sim, kinds in simulate_family(family, args.n, args.seed + 1000 * k, kinds=True):
            d = DPX * 2.0
            net, prob, factors = segment_micrograph(sim.image, 2.0, d, models)
            every = pick_from_map(net, prob, factors, d, models, PickParams(threshold=0.0))
            picks = every.xy[every.fom >= params.threshold]
            truth = np.asarray(sim.coords).reshape(-1, 2)
            mic = {"map_alone": found(every.xy[every.map_score >= params.threshold], truth),
                   "decision": found(picks, truth), "truth": len(truth), "trust": every.trust}
            f["micrographs"].append(mic)
            f["map_alone"] += mic["map_alone"]
            f["decision"] += mic["decision"]
            f["truth"] += len(truth)
            f["trust"].append(every.trust)
            vetoed = former_veto(net, prob, factors, models)
            vetoed = vetoed[contamination(sim, vetoed)]
            f["contamination_vetoed"] += len(vetoed)
            f["also_dropped"] += dropped(vetoed, picks)
            ij = np.clip(np.round(vetoed).astype(int), 0, np.array(kinds.shape[::-1]) - 1).reshape(-1, 2)
            of_kind = kinds[ij[:, 1], ij[:, 0]]
            for i, kind in enumerate(KINDS):
                f["by_kind"][kind]["vetoed"] += int(np.count_nonzero(of_kind == i + 1))
                f["by_kind"][kind]["dropped"] += dropped(vetoed[of_kind == i + 1], picks)
        f["kept_share"] = f["decision"] / f["map_alone"] if f["map_alone"] else float("nan")
        f["dropped_share"] = f["also_dropped"] / f["contamination_vetoed"] if f["contamination_vetoed"] else float("nan")
        f["trust"] = float(np.mean(f["trust"]))
        out["families"][family] = f
        print(f"{family:10s}{' (unseen)' if family == UNSEEN else '         '} particles found: map alone "
              f"{f['map_alone']}, decision {f['decision']} ({f['kept_share']:.3f}) of {f['truth']}; contamination the "
              f"former veto dropped {f['contamination_vetoed']}, the decision drops {f['also_dropped']} "
              f"({f['dropped_share']:.3f}); mean trust {f['trust']:.2f}", flush=True)
    fam = out["families"].values()
    vet, also = sum(f["contamination_vetoed"] for f in fam), sum(f["also_dropped"] for f in fam)
    out["contamination_dropped_share"] = also / vet if vet else float("nan")
    print(f"all families: of {vet} contamination candidates the former veto dropped, the decision drops {also} "
          f"({out['contamination_dropped_share']:.3f})")
    out["by_kind"] = {}
    for group in (("carbon",), ("ice",), ("aggregate",), ("ice", "carbon")):
        v = sum(f["by_kind"][kind]["vetoed"] for f in fam for kind in group)
        d = sum(f["by_kind"][kind]["dropped"] for f in fam for kind in group)
        name = " and ".join(group)
        out["by_kind"][name] = {"vetoed": v, "dropped": d, "share": d / v if v else float("nan")}
        print(f"  {name}: {d} of {v} ({d / v if v else float('nan'):.3f})")
    write_json(args.json, out)


if __name__ == "__main__":
    main()
