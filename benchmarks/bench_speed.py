"""Whole-job speed and peak memory: `relion_pixer pick` on 4096 x 4096 float32 micrographs.

Writes simulated 4096 px float32 MRC micrographs (150 A particles at 1 A/px), then runs the real command line (reading
the MRC, resampling, segmentation, picking, classification, writing the STAR files) in a fresh process, once on the
first three micrographs and once on all of them, both with ``--estimate_size No``; the difference gives the time per
micrograph without the one-off start-up (imports, loading weights) and the per-job work on the first three micrographs
(the pick-spacing check, ``check_spacing``, on by default since session 25; the first job was one micrograph before
it, which the check's work on three would have biased). A third run on all of them with the size estimate (the job's
default) gives the estimate's one-off cost per job. Peak memory is the child process's maximum resident set size.

``--profile`` also times the stages in this process (median of ``--n`` micrographs): reading the MRC, preparation
(Fourier crop, normalisation), segmentation (with the number of tiles and the network pixels they cover), the
local-maximum climb, the classifier (per box), the decision and the mapping back, as the job runs them. ``--k3``
is a K3 micrograph: 5760 x 4092 px at 0.83 A/px with 120 A particles (about 800 per micrograph). Usage::

    python benchmarks/bench_speed.py [--n 5] [--threads 2] [--device cpu|cuda] [--size 4096]
    python benchmarks/bench_speed.py --k3 --profile --n 3 --threads 2 --json benchmarks/results/speed_k3_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from relion_pixer.size import SAMPLE_MICROGRAPHS  # noqa: E402


#: A K3 micrograph (super-resolution binned by 2): 5760 x 4092 px, 0.83 A/px, 120 A particles.
K3 = {"shape": (4092, 5760), "angpix": 0.83, "diameter": 120.0}


def write_micrographs(folder: Path, n: int, size: int | tuple[int, int], angpix: float = 1.0,
                      diameter: float = 150.0, density: float | None = None) -> tuple[list[Path], int]:
    """``n`` distinct MRC files of one simulated field (rolled); returns them and the field's particle count."""
    import mrcfile

    from relion_pixer.simulate import random_config, simulate_micrograph

    shape = (size, size) if isinstance(size, int) else tuple(size)
    rng = np.random.default_rng(7)
    extra = {} if density is None else {"density": density, "n_ice": 0, "n_aggregates": 0, "carbon_edge": False,
                                        "carbon_hole": False}
    cfg = random_config(rng, snr=0.05, angpix=angpix, particle_diameter_px=diameter / angpix, empty=False, **extra)
    sim = simulate_micrograph(rng, shape=shape, **cfg)
    base = sim.image.astype(np.float32)
    paths = []
    for i in range(n):
        path = folder / f"mic{i:03d}.mrc"
        # distinct files (so nothing is cached between them): the same field, rolled
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(np.roll(base, 97 * i, axis=1))
            mrc.voxel_size = angpix
        paths.append(path)
    return paths, len(sim.coords)


def profile(paths: list[Path], angpix: float, diameter: float, threads: int, device: str,
            model: str | None = None, repick: bool = True) -> dict:
    """Seconds per stage (median over the micrographs, after one warm-up) and what the stages handled; with
    ``repick`` (the job's default, ``crowded Yes``) the second pass as one more stage."""
    from dataclasses import replace

    from relion_pixer.pipeline import pick_from_map
    from relion_pixer.pipeline import repick as pipeline_repick

    import torch

    from relion_pixer import classify, decide, io, models, picking, preprocess, segment
    from relion_pixer import NET_DIAMETER_PX
    from relion_pixer.pipeline import MARGIN_PER_DIAMETER, PickParams, map_cut

    torch.set_num_threads(threads)
    loaded = models.load_pretrained(model, device=device)
    params = PickParams(device=device)
    times: dict[str, list] = {}
    info: dict = {}

    def timed(name, fn, *a, **kw):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.setdefault(name, []).append(time.perf_counter() - t0)
        return out

    for k, path in enumerate([paths[0]] + list(paths)):  # the first is a warm-up, not counted
        image, _ = timed("read_mrc", io.read_micrograph, path)
        net_image, factors = timed("prepare", preprocess.prepare, image, angpix, diameter)
        prob = timed("segment", segment.predict_probability, loaded.segmenter, net_image, device)
        cand = timed("climb", picking.pick_centres, prob, NET_DIAMETER_PX,
                     margin_px=MARGIN_PER_DIAMETER * NET_DIAMETER_PX, threshold=params.map_threshold)
        passed = map_cut(np.asarray(cand.score), params)
        cand_xy = np.asarray(cand.xy, np.float64).reshape(-1, 2)[passed]
        scores = np.asarray(cand.score, np.float64)[passed]
        probs = timed("classify", classify.classify_candidates, loaded.classifier, net_image, cand_xy,
                      device=device, batch_size=params.batch_size)
        keep = timed("decide", decide.decide, scores, probs, params.threshold, params.max_particles).keep
        timed("to_original", preprocess.to_original, cand_xy[keep], factors)
        if repick:  # the job's second pass (crowded Yes) on the first pass's picks, made outside the timing
            first = pick_from_map(net_image, prob, factors, diameter, loaded, replace(params, max_particles=0))
            timed("second_pass", pipeline_repick, first, diameter, loaded, params)
        if k == 0:
            for name in times:
                times[name].clear()
            stride = loaded.segmenter.trunk.stride
            h, w = (int(np.ceil(d / stride) * stride) for d in net_image.shape)
            tile, margin = segment.TILE // stride * stride, segment.MARGIN
            th, tw = (segment._tile_side(d, tile, margin, stride) for d in (h, w))
            ty, tx = (len(segment._tile_starts(d, t, margin, stride)) for d, t in ((h, th), (w, tw)))
            covered = ty * th * tx * tw if ty * tx > 1 else h * w
            info = {"micrograph_px": list(image.shape), "net_image_px": list(net_image.shape),
                    "segment_tiles": ty * tx, "segment_pixels_computed_per_image_pixel": round(covered / (h * w), 2),
                    "candidates": int(len(cand_xy)), "picks": int(len(keep))}
    median = {name: float(np.median(v)) for name, v in times.items()}
    total = sum(median.values())
    return {
        **info,
        "segment_seconds_by_tiling": compare_tiling(loaded.segmenter, net_image, device),
        "seconds_per_stage": {name: round(v, 4) for name, v in median.items()},
        "share_per_stage": {name: round(v / total, 3) for name, v in median.items()},
        "seconds_total": round(total, 3),
        "classifier_ms_per_box": round(1000 * median["classify"] / max(1, info["candidates"]), 3),
    }


def compare_tiling(segmenter, net_image: np.ndarray, device: str, rounds: int = 5) -> dict:
    """Segmentation seconds (best of ``rounds``, interleaved so that load from elsewhere hits both alike) with the
    default tiling (:data:`relion_pixer.segment.TILE`), with the balanced tiles of 1024 px used before, and without
    tiling, and the largest difference of the maps from whole-image inference."""
    from relion_pixer import segment

    ways = {"default_tiling": {}, "tiles_1024": {"tile": 1024}, "whole_image": {"tile": 1 << 20}}
    best = {name: float("inf") for name in ways}
    maps = {}
    for _ in range(rounds):
        for name, kw in ways.items():
            t0 = time.perf_counter()
            maps[name] = segment.predict_probability(segmenter, net_image, device, **kw)
            best[name] = min(best[name], time.perf_counter() - t0)
    out = {name: round(v, 4) for name, v in best.items()}
    out["default_tile_px"] = segment.TILE
    out["max_difference_from_whole_image"] = {name: float((maps[name] - maps["whole_image"]).abs().max())
                                              for name in ways if name != "whole_image"}
    return out


def run(paths: list[Path], out: Path, threads: int, device: str, angpix: float = 1.0,
        diameter: float = 150.0, estimate: bool = False, model: str | None = None,
        extra: tuple = ()) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of one `relion_pixer pick` process (``extra``: more of its options)."""
    cmd = [sys.executable, "-m", "relion_pixer", "pick", *map(str, paths), "--angpix", f"{angpix:g}",
           "--particle_diameter", f"{diameter:g}", "--o", str(out), "--j", str(threads), "--device", device,
           "--estimate_size", "Yes" if estimate else "No"] + (["--model", str(Path(model).resolve())] if model else [])
    cmd += list(extra)
    code = (
        "import resource, subprocess, sys, time, json; t = time.time(); "
        "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
        "print(json.dumps([r.returncode, time.time() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, env=env, check=True)
    rc, seconds, maxrss_kb = json.loads(res.stdout.strip().splitlines()[-1])
    if rc != 0:
        raise SystemExit(f"relion_pixer pick failed with exit code {rc}: {' '.join(cmd)}")
    return seconds, maxrss_kb / 1024**2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--k3", action="store_true", help="K3 micrographs: 5760 x 4092 px, 0.83 A/px, 120 A particles")
    ap.add_argument("--profile", action="store_true", help="also time each stage in this process")
    ap.add_argument("--model", help="model file (default: the shipped weights)")
    ap.add_argument("--crowded", nargs="?", const="Yes", choices=["Yes", "No"],
                    help="every run with `crowded Yes` (the second pass; the job's default) or `crowded No` (one pass)")
    ap.add_argument("--precision", choices=["auto", "float32", "bfloat16"], help="the job's `precision` (default auto)")
    ap.add_argument("--check_spacing", choices=["Yes", "No"], help="the job's `check_spacing` (default Yes)")
    ap.add_argument("--json")
    args = ap.parse_args()
    extra = (("--crowded", args.crowded) if args.crowded else ()) + (("--precision", args.precision)
                                                                       if args.precision else ())
    extra += ("--check_spacing", args.check_spacing) if args.check_spacing else ()
    size, angpix, diameter, density = args.size, 1.0, 150.0, None
    if args.k3:
        size, angpix, diameter, density = K3["shape"], K3["angpix"], K3["diameter"], 0.5
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.time()
        paths, particles = write_micrographs(tmp, args.n, size, angpix, diameter, density)
        print(f"wrote {args.n} simulated {size} px float32 micrographs ({particles} particles) in "
              f"{time.time() - t0:.1f} s")
        first = max(1, min(SAMPLE_MICROGRAPHS, args.n - 1))  # the micrographs the per-job checks read
        one, rss1 = run(paths[:first], tmp / "out1", args.threads, args.device, angpix, diameter, model=args.model,
                        extra=extra)
        many, rss = run(paths, tmp / "outn", args.threads, args.device, angpix, diameter, model=args.model,
                        extra=extra)
        with_estimate, rss_est = run(paths, tmp / "oute", args.threads, args.device, angpix, diameter, estimate=True,
                                     model=args.model, extra=extra)
        stages = (profile(paths, angpix, diameter, args.threads, args.device, args.model,
                          repick=args.crowded != "No") if args.profile else None)
    per = (many - one) / max(1, args.n - first)
    figures = {
        "size": size if isinstance(size, int) else list(size),
        "angpix": angpix,
        "particle_diameter_A": diameter,
        "particles_simulated": particles,
        "micrographs": args.n,
        "threads": args.threads,
        "device": args.device,
        "model": args.model,
        "crowded": args.crowded != "No",
        "check_spacing": args.check_spacing != "No",
        "precision": args.precision or "auto",
        "first_job_micrographs": first,
        "seconds_first_job": round(one, 2),
        "seconds_one_job_all": round(many, 2),
        "seconds_per_micrograph": round(per, 3),
        "micrographs_per_second": round(1 / per, 2) if per > 0 else None,
        "peak_rss_gb": round(max(rss, rss1), 2),
        "size_estimate_seconds_per_job": round(with_estimate - many, 2),
        "peak_rss_gb_with_size_estimate": round(rss_est, 2),
        "cpu": os.cpu_count(),
    }
    if stages is not None:
        figures["profile"] = stages
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
