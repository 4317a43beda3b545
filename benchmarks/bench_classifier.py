"""Classifier figures: per-class accuracy on held-apart simulated boxes, particle-vs-rest on real boxes.

- Simulated: micrographs simulated with seeds never used in training (domain-randomised like the training data,
  at one SNR per run), boxes cut at particle centres, on contamination and on background, as in training.
- Real: EMPIAR-10028 test split; boxes at the expert labels (particles) versus boxes at random positions at
  least one diameter from every label (background; may occasionally hold an unlabelled particle).

Usage::

    python benchmarks/bench_classifier.py [--model FILE] [--snr 0.1] [--json OUT]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import REAL, real_sets, write_json
from relion_pixer import NET_DIAMETER_PX, PARTICLE
from relion_pixer.models import load_pretrained
from relion_pixer.preprocess import prepare, to_network
from relion_pixer.train import box_samples, classifier_accuracy, cut_boxes, simulated_set


def real_boxes(seed: int = 0, per_micrograph: int = 100):
    rng = np.random.default_rng(seed)
    images, rows, classes = [], [], []
    ribosome = real_sets([REAL.name])[0]
    for i, m in enumerate(ribosome.micrographs("test")):
        net, factors = prepare(m.image, m.angpix, ribosome.diameter_A)
        images.append(net)
        xy = to_network(m.truth, factors)
        rows += [(i, x, y) for x, y in xy]
        classes += [PARTICLE] * len(xy)
        cand = rng.uniform([0, 0], [net.shape[1], net.shape[0]], size=(per_micrograph * 5, 2))
        d = np.sqrt(((cand[:, None] - xy[None]) ** 2).sum(-1)).min(1)
        cand = cand[d >= NET_DIAMETER_PX][:per_micrograph]
        rows += [(i, x, y) for x, y in cand]
        classes += [0] * len(cand)
    return cut_boxes(images, np.array(rows, np.float32)), np.array(classes)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--snr", type=float, nargs="+", default=[0.01, 0.1, 0.5])
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clf = load_pretrained(args.model).classifier.eval()
    figures = {"simulated": {}}
    for k, snr in enumerate(args.snr):
        data = simulated_set(args.n, 384, seed=700_000 + k, snr=snr, progress=False)
        xyz, cls = box_samples(data, np.random.default_rng(k))
        figures["simulated"][f"snr{snr:g}"] = {"boxes": int(len(cls)), **classifier_accuracy(clf, cut_boxes(data.images, xyz), cls)}
    boxes, cls = real_boxes()
    probs = torch.cat([torch.softmax(clf(torch.from_numpy(boxes[i : i + 512])[:, None]), 1) for i in range(0, len(boxes), 512)])
    is_particle = (probs.argmax(1) == PARTICLE).numpy()
    truth = cls == PARTICLE
    figures["real_test"] = {
        "boxes": int(len(cls)),
        "particles": int(truth.sum()),
        "accuracy_particle_vs_rest": float((is_particle == truth).mean()),
        "particle_recall": float(is_particle[truth].mean()),
        "background_rejected": float((~is_particle[~truth]).mean()),
        "p_particle_ge_0.6_recall": float((probs[:, PARTICLE].numpy()[truth] >= 0.6).mean()),
    }
    for name, f in figures["simulated"].items():
        print(f"simulated {name}: accuracy {f['accuracy']:.3f} (background {f['acc_background']:.3f}, particle "
              f"{f['acc_particle']:.3f}, contamination {f['acc_contamination']:.3f}; {f['boxes']} boxes)")
    r = figures["real_test"]
    print(f"EMPIAR-10028 test: particle-vs-rest accuracy {r['accuracy_particle_vs_rest']:.3f} "
          f"(particles found {r['particle_recall']:.3f}, background rejected {r['background_rejected']:.3f}; {r['boxes']} boxes)")
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
