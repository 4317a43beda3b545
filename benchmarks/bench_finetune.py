"""Fine-tuning from reprojection labels, end to end: does it improve picking of one particle type?

1. A simulated refinement of ONE particle type (:func:`relion_pixer.simulate.refinement.simulate_refinement`):
   ``n_train`` micrographs, a ``run_data.star`` with each particle's true orientation (RELION Euler angles) and
   centre (whole-pixel coordinates plus refined origins), and the particle as a 3D map ``run_class001.mrc``.
2. ``relion_pixer labels`` reprojects the map into label maps; their agreement with the simulator's own label maps
   is reported (pixel IoU of the particle class).
3. ``relion_pixer train --from-labels`` fine-tunes the initial model (``--init``, default the shipped weights) on
   them, with the fine-tuning defaults (:data:`relion_pixer.train.FINETUNE_DEFAULTS`, a replay of simulated data)
   unless ``--cls_steps/--seg_steps/--sim_train`` say otherwise.
4. ``n_test`` other micrographs of the same particle type (other seeds, never seen in training) are picked by the
   initial and by the fine-tuned model (:func:`relion_pixer.pipeline.pick_micrograph`, default ``PickParams``,
   the particle's nominal diameter); pooled one-to-one precision / recall / F1 at half a diameter against the
   simulator's truth, and the mean particle IoU of the segmentation masks, are reported for both.
5. With ``--control``, also a control run: the same fine-tuning (initial model, steps, learning rates, the same
   simulated replay) without the user's labels, to tell what the labels bring from what more training brings.

Usage::

    python benchmarks/bench_finetune.py [--init MODEL] [--family elongated] [--n_train 8] [--n_test 6] \\
        [--snr 0.02] [--cls_steps N --seg_steps N --sim_train N] [--control] [--work DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import Micrograph, fmt, mask_iou, run_pixer, score
from relion_pixer import PARTICLE
from relion_pixer.cli import main as relion_pixer
from relion_pixer.models import load_pretrained, shipped_weights
from relion_pixer.simulate.refinement import simulate_refinement
from relion_pixer.train import FINETUNE_DEFAULTS

@contextlib.contextmanager
def chdir(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


class Tee(io.TextIOBase):
    """Write to the console and keep a copy (to read the trainer's progress lines back)."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, s):
        self.stream.write(s)
        self.copy.write(s)
        return len(s)

    def flush(self):
        self.stream.flush()


def label_iou(project: Path, labels_star: Path) -> list[float]:
    """Pixel IoU (particle class) of each reprojected label map against the simulator's label map."""
    import mrcfile
    import starfile

    table = starfile.read(labels_star, always_dict=True)["coordinate_files"]
    out = []
    for _, row in table.iterrows():
        mine = mrcfile.read(project / row["pixerLabelName"]) == PARTICLE
        truth = mrcfile.read(project / "Labels" / f"{Path(row['rlnMicrographName']).stem}_labels.mrc") == PARTICLE
        out.append(float((mine & truth).sum() / max(1, (mine | truth).sum())))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--init", default=str(shipped_weights()), help="initial model (default: the shipped weights)")
    ap.add_argument("--family", default="elongated", help="shape family of the one particle type")
    ap.add_argument("--diameter", type=float, default=300.0, help="particle diameter, A")
    ap.add_argument("--angpix", type=float, default=3.75, help="micrograph pixel size, A (300 A = 80 px)")
    ap.add_argument("--size", type=int, default=1024, help="micrograph side, px")
    ap.add_argument("--snr", type=float, default=0.02)
    ap.add_argument("--n_train", type=int, default=8)
    ap.add_argument("--n_test", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cls_steps", type=int, help="default: FINETUNE_DEFAULTS")
    ap.add_argument("--seg_steps", type=int, help="default: FINETUNE_DEFAULTS")
    ap.add_argument("--sim_train", type=int, help="simulated replay micrographs (default: FINETUNE_DEFAULTS)")
    ap.add_argument("--control", action="store_true", help="also fine-tune on the simulated replay alone")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", help="working directory (default: a temporary one, removed at the end)")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    init = Path(args.init).resolve()
    if not init.is_file():
        raise SystemExit(f"initial model {init} does not exist (the shipped weights are not built yet?): give --init")
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="bench_finetune_"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    try:
        figures = run(args, init, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    figures["wall_s"] = round(time.time() - t_start, 1)
    print(f"total wall time {figures['wall_s'] / 60:.1f} min")
    if args.json:
        Path(args.json).write_text(json.dumps(_finite(figures), indent=1))


def _finite(obj):
    """NaN (e.g. the precision of no picks) as null: strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def run(args, init: Path, work: Path) -> dict:
    common = dict(family=args.family, diameter_A=args.diameter, shape=(args.size, args.size), angpix=args.angpix,
                  snr=args.snr)
    # 1. the refinement (training micrographs) and the held-out micrographs of the same particle
    t0 = time.time()
    train_ref = simulate_refinement(work / "project", args.n_train, seed=args.seed, **common)
    model = train_ref.model
    test_ref = simulate_refinement(work / "heldout", args.n_test, seed=args.seed + 10_007, model=model,
                                   keep_sims=True, **common)
    t_sim = time.time() - t0
    diameter = float(model.diameter)
    print(f"one particle type: {model.family}, {diameter:.0f} A = {diameter / args.angpix:.0f} px at {args.angpix} A/px,"
          f" SNR {args.snr:g}; {args.n_train} training micrographs ({train_ref.n_particles} refined particles), "
          f"{args.n_test} held-out micrographs ({sum(len(s.coords) for s in test_ref.sims)} particles), "
          f"{args.size} px, simulated in {t_sim:.0f} s")

    project = work / "project"
    with chdir(project):
        # 2. labels by reprojection
        t0 = time.time()
        rc = relion_pixer(["labels", "--in_parts", train_ref.particles_star, "--in_3dref", train_ref.map_mrc,
                           "--in_mics", train_ref.micrographs_star, "--o", "External/job002/"])
        if rc != 0:
            raise SystemExit("relion_pixer labels failed")
        t_labels = time.time() - t0
        ious = label_iou(project, project / "External/job002/labels.star")
        print(f"reprojected labels vs the simulator's label maps: IoU mean {np.mean(ious):.3f}, min {np.min(ious):.3f}")

        # 3. fine-tuning
        argv = ["train", "--from-labels", "External/job002/labels.star", "--init", str(init), "--out",
                "runs/finetune", "--model_out", "runs/finetune/finetuned.pt", "--threads", str(args.threads)]
        for key in ("cls_steps", "seg_steps", "sim_train"):
            if getattr(args, key) is not None:
                argv += [f"--{key}", str(getattr(args, key))]
        print("relion_pixer " + " ".join(argv))
        t0 = time.time()
        tee = Tee(sys.stdout)
        with contextlib.redirect_stdout(tee):
            rc = relion_pixer(argv)
        t_train = time.time() - t0
        if rc != 0:
            raise SystemExit("relion_pixer train failed")
        progress = [line for line in tee.copy.getvalue().splitlines() if re.search(r"loss .* min left", line)]
        config = json.loads((project / "runs/finetune/config.json").read_text())
        finetuned = project / "runs/finetune/finetuned.pt"

        # 5. control: the same run without the user's labels (same settings, same replay data, reused)
        control, t_control = None, None
        if args.control:
            settings = {**FINETUNE_DEFAULTS, **{k: config[k] for k in ("cls_steps", "seg_steps", "sim_train")}}
            Path("control.toml").write_text("".join(f"{k} = {v!r}\n" for k, v in settings.items()))
            Path("runs/control").mkdir(parents=True, exist_ok=True)
            for cache in Path("runs/finetune").glob("sim_*.pt"):
                shutil.copy(cache, Path("runs/control") / cache.name)
            argv = ["train", "--config", "control.toml", "--init", str(init), "--out", "runs/control",
                    "--model_out", "runs/control/control.pt", "--threads", str(args.threads)]
            print("control: relion_pixer " + " ".join(argv))
            t0 = time.time()
            if relion_pixer(argv) != 0:
                raise SystemExit("relion_pixer train (control) failed")
            t_control = time.time() - t0
            control = project / "runs/control/control.pt"

    # 4. picking held-out micrographs with both models
    mics = [Micrograph(Path(n).stem, s.image, args.angpix, np.asarray(s.coords, np.float64).reshape(-1, 2))
            for n, s in zip(test_ref.micrographs, test_ref.sims)]
    radius = 0.5 * diameter / args.angpix
    results = {}
    runs = [("initial", init), ("finetuned", finetuned)] + ([("control", control)] if control else [])
    for name, path in runs:
        models = load_pretrained(path)
        t0 = time.time()
        s = score(run_pixer(mics, diameter, models), mics, radius)
        s["pick_s"] = round(time.time() - t0, 1)
        s["mean_particle_iou"] = mask_iou(models, mics, test_ref.sims, diameter)
        results[name] = s

    figures = {
        "particle": {"family": model.family, "diameter_A": diameter, "angpix": args.angpix,
                     "diameter_px": diameter / args.angpix},
        "snr": args.snr,
        "micrograph_px": args.size,
        "train": {"micrographs": args.n_train, "refined_particles": train_ref.n_particles,
                  "label_iou_mean": float(np.mean(ious)), "label_iou_min": float(np.min(ious)),
                  "labels_s": round(t_labels, 1), "finetune_s": round(t_train, 1),
                  "cls_steps": config["cls_steps"], "seg_steps": config["seg_steps"], "sim_train": config["sim_train"],
                  "cls_lr": config["cls_lr"], "seg_lr": config["seg_lr"], "threads": args.threads},
        "test": {"micrographs": args.n_test, "particles": int(sum(len(m.truth) for m in mics)),
                 "match_radius_px": radius},
        "initial_model": str(init),
        "initial": results["initial"],
        "finetuned": results["finetuned"],
        "control": results.get("control"),
        "control_s": None if t_control is None else round(t_control, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                   f"{'CUDA' if torch.cuda.is_available() else 'CPU only'}",
        "progress_lines": len(progress),
    }
    print(f"\nfine-tuning: {config['cls_steps']} classifier + {config['seg_steps']} segmenter steps, "
          f"{config['sim_train']} simulated replay micrographs, {t_train / 60:.1f} min "
          f"({len(progress)} progress lines with loss and time left, e.g. {progress[-1].strip() if progress else '-'})")
    print(f"held-out: {args.n_test} micrographs, {figures['test']['particles']} particles, match radius {radius:.0f} px")
    print(fmt("initial model", results["initial"]) + f"  particle IoU {results['initial']['mean_particle_iou']:.3f}")
    print(fmt("fine-tuned model", results["finetuned"]) + f"  particle IoU {results['finetuned']['mean_particle_iou']:.3f}")
    if control:
        print(fmt("control (replay only)", results["control"]) + f"  particle IoU {results['control']['mean_particle_iou']:.3f}")
    return figures


if __name__ == "__main__":
    main()
