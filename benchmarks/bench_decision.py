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
>= 0.90). Usage::

    python benchmarks/bench_decision.py [--model FILE] [--n 16] [--json OUT]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import write_json  # (also puts the repository on the path)
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


def simulate_family(family: str, n: int, seed: int):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        cfg = random_config(rng, snr=float(np.exp(rng.uniform(np.log(0.1), np.log(1.0)))), particle_diameter_px=DPX,
                            families=family, empty=False, n_ice=int(rng.integers(2, 5)),
                            n_aggregates=int(rng.integers(0, 3)), carbon_edge=bool(rng.random() < 0.5), angpix=2.0)
        out.append(simulate_micrograph(rng, shape=(1024, 1024), **cfg))
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
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = load_pretrained(args.model)
    params = PickParams()
    out = {"threshold": params.threshold, "unseen": UNSEEN, "families": {}}
    for k, family in enumerate(args.families):
        f = dict(map_alone=0, decision=0, truth=0, contamination_vetoed=0, also_dropped=0, trust=[])
        for sim in simulate_family(family, args.n, SEED + 1000 * k):
            d = DPX * 2.0
            net, prob, factors = segment_micrograph(sim.image, 2.0, d, models)
            every = pick_from_map(net, prob, factors, d, models, PickParams(threshold=0.0))
            picks = every.xy[every.fom >= params.threshold]
            truth = np.asarray(sim.coords).reshape(-1, 2)
            f["map_alone"] += found(every.xy[every.map_score >= params.threshold], truth)
            f["decision"] += found(picks, truth)
            f["truth"] += len(truth)
            f["trust"].append(every.trust)
            vetoed = former_veto(net, prob, factors, models)
            vetoed = vetoed[contamination(sim, vetoed)]
            f["contamination_vetoed"] += len(vetoed)
            f["also_dropped"] += dropped(vetoed, picks)
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
    write_json(args.json, out)


if __name__ == "__main__":
    main()
