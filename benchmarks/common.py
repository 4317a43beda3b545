"""Helpers shared by the accuracy benchmarks: run PIXER and the LoG baseline on micrographs and score them."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relion_pixer import NET_DIAMETER_PX  # noqa: E402
from relion_pixer.baseline import log_pick  # noqa: E402
from relion_pixer.evaluate import (  # noqa: E402
    Scores, best_mask_at_stride, match_picks, median_distance, particle_ious)
from relion_pixer.pipeline import PickParams, pick_segmented, segment_micrograph  # noqa: E402
from relion_pixer.preprocess import prepare, to_original  # noqa: E402
from relion_pixer.segment import predict_probability  # noqa: E402
from relion_pixer.preprocess import nearest_resample  # noqa: E402

#: The EMPIAR-10028 ribosome set (its pixel size, diameter and split: ``real_sets/empiar10028_ribosome80S.toml``).
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "empiar10028_ribosome80S"


@dataclass
class Micrograph:
    name: str
    image: np.ndarray
    angpix: float
    truth: np.ndarray  # (N, 2) x, y in micrograph pixels


#: Every real set lives in a folder of this one (``micrographs/NAME.mrc``, ``coords/NAME.star``).
REAL_ROOT = REAL.parent
#: Metadata of the real sets the project knows (``<set folder name>.toml``); a set's own ``pixer_set.toml`` wins.
REAL_SET_META = Path(__file__).resolve().parent / "real_sets"


@dataclass
class RealSet:
    """One real data set: where it is and what its metadata file says (angpix, diameter, split)."""

    name: str
    title: str
    folder: Path
    angpix: float
    diameter_A: float
    labels_complete: bool
    split: dict

    @property
    def radius_px(self) -> float:
        """The match radius: half the particle diameter, in micrograph pixels."""
        return 0.5 * self.diameter_A / self.angpix

    def micrographs(self, *splits: str) -> list[Micrograph]:
        """The micrographs of the given splits (in order) with their labels."""
        import mrcfile
        import starfile

        out = []
        for split in splits:
            for name in self.split[split]:
                image = mrcfile.read(self.folder / "micrographs" / f"{name}.mrc")
                table = starfile.read(self.folder / "coords" / f"{name}.star")
                truth = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(np.float64)
                out.append(Micrograph(name, np.asarray(image, np.float32), self.angpix, truth))
        return out


def parse_with_models(ap):
    """Add ``--threads`` (default 2), ``--model`` (default the shipped weights) and ``--json`` to the argument parser
    ``ap``, parse the command line, set torch's threads and load the networks: ``(args, models)``."""
    import torch

    from relion_pixer.models import load_pretrained

    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args, load_pretrained(args.model)


def write_json(path: str | None, out: dict, default=None) -> None:
    """Write a benchmark's results ``out`` to ``path`` (its ``--json``; nothing when None); ``default`` as
    :func:`json.dump`'s, for values JSON has no type for (e.g. ``float`` for NumPy scalars)."""
    if path:
        with open(path, "w") as fh:
            json.dump(out, fh, indent=1, default=default)


def lowpass(mics, sigma: float):
    """The micrographs blurred by a Gaussian of sd ``sigma`` pixels (unchanged when 0): a stand-in for denoised or
    low-passed micrographs."""
    import scipy.ndimage

    if sigma > 0:
        for m in mics:
            m.image = scipy.ndimage.gaussian_filter(m.image, sigma).astype(np.float32)
    return mics


def binned(mics, factor: int):
    """The micrographs binned by ``factor`` (means over ``factor x factor`` pixels, the edge rows and columns that do
    not fill a bin dropped), as a user's binned micrographs are: pixel size times ``factor``, labels in the binned
    pixels (unchanged when 1)."""
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"the binning factor must be a whole number >= 1, got {factor}")
    if factor == 1:
        return mics
    out = []
    for m in mics:
        h, w = (m.image.shape[0] // factor) * factor, (m.image.shape[1] // factor) * factor
        image = m.image[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3), dtype=np.float64)
        out.append(Micrograph(m.name, image.astype(np.float32), m.angpix * factor, (m.truth + 0.5) / factor - 0.5))
    return out


def tuning_splits(text: str) -> list[str]:
    """``--splits`` of the tuning scripts: comma-separated real-set splits, train and/or valid only (the test splits
    are for reporting); an argparse type."""
    import argparse

    splits = [s.strip() for s in str(text).split(",") if s.strip()]
    if not splits or not set(splits) <= {"train", "valid"}:
        raise argparse.ArgumentTypeError("takes train and/or valid (the test splits are for reporting only)")
    return splits


def _set_metadata(folder: Path) -> Path | None:
    for meta in (folder / "pixer_set.toml", REAL_SET_META / f"{folder.name}.toml"):
        if meta.is_file():
            return meta
    return None


def real_sets(names=None) -> list[RealSet]:
    """Every real set under ``../shared/data/real`` that has a metadata file, sorted by name (or those named)."""
    import tomllib

    if not REAL_ROOT.is_dir():
        raise SystemExit(f"{REAL_ROOT} is absent: this benchmark needs ../shared/data")
    out = []
    for folder in sorted(p for p in REAL_ROOT.iterdir() if p.is_dir()):
        if names and folder.name not in names:
            continue
        meta = _set_metadata(folder)
        if meta is None:
            print(f"skipping {folder}: no metadata file ({folder.name}.toml in {REAL_SET_META} or pixer_set.toml)")
            continue
        with open(meta, "rb") as fh:
            m = tomllib.load(fh)
        try:
            out.append(RealSet(folder.name, m.get("title", folder.name), folder, float(m["angpix"]),
                               float(m["diameter_A"]), bool(m.get("labels_complete", False)), dict(m["split"])))
        except KeyError as exc:
            raise SystemExit(f"{meta}: missing {exc.args[0]!r} (angpix, diameter_A and [split] are needed)")
    if names and len(out) != len(set(names)):
        raise SystemExit(f"unknown real set(s): {sorted(set(names) - {s.name for s in out})}")
    return out


def add_set_model_argument(ap, required: bool = False,
                           help: str = "read real set SET with the model FILE, e.g. one that never saw its protein"):
    """Add ``--set_model SET=FILE`` (repeatable) to the parser ``ap``; :func:`read_set_models` reads it."""
    ap.add_argument("--set_model", action="append", default=[], metavar="SET=FILE", required=required, help=help)


def read_set_models(ap, items, names=None) -> dict:
    """``{set folder name: model file}`` from ``--set_model SET=FILE`` items; a parser error for an item without a
    file or a set not among ``names`` (default: every real set's folder name)."""
    names = sorted(rs.name for rs in real_sets()) if names is None else sorted(names)
    out = {}
    for item in items:
        name, _, path = item.partition("=")
        if not path or name not in names:
            ap.error(f"--set_model takes SET=FILE with SET one of {names}, got {item!r}")
        out[name] = path
    return out


def real_cases(set_files: dict, shipped, splits=("train", "valid")) -> list:
    """``(group, set name, micrographs, diameter in A, networks)`` for every real set's ``splits``: group ``"loso"``
    read by the model file ``set_files`` names for it (one that never saw its protein; sets without one are left
    out of that group), group ``"shipped"`` by ``shipped``."""
    from relion_pixer.models import load_pretrained

    out = []
    for rs in real_sets():
        mics = rs.micrographs(*splits)
        if rs.name in set_files:
            out.append(("loso", rs.name, mics, rs.diameter_A, load_pretrained(set_files[rs.name])))
        out.append(("shipped", rs.name, mics, rs.diameter_A, shipped))
    return out


def leave_one_out_setup(description: str):
    """The command line of a benchmark that reads every real set with networks that never saw its protein:
    ``--set_model SET=FILE`` (required), ``--threads``, ``--json``. Returns the arguments, ``{set: model file}`` and
    the shipped networks, with torch's threads set."""
    import argparse

    import torch

    from relion_pixer.models import load_pretrained

    ap = argparse.ArgumentParser(description=description)
    add_set_model_argument(ap, required=True, help="read real set SET with the model FILE, one that never saw it")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args, read_set_models(ap, args.set_model), load_pretrained(None)


#: Seed of ``tune_size.py``'s simulated validation sets (each SNR adds round(1000 x SNR)).
SIZE_SIM_SEED = 710_000


def size_sims(n: int = 6, snrs=(0.1, 3.0)) -> dict:
    """``tune_size.py``'s simulated validation sets: ``{"snr<SNR>": micrographs}``, ``n`` 2048 px micrographs of
    150 A particles at 1 A/px per SNR, seeds disjoint from training and the held-apart sets."""
    from bench_sim import simulate

    return {f"snr{snr:g}": simulate(n, snr, SIZE_SIM_SEED + int(round(snr * 1000)), 2048, 1.0, 150.0)[0]
            for snr in snrs}


def segment_all(mics: list[Micrograph], diameter_A: float, models, device: str = "cpu") -> list:
    """Each micrograph's network-scale image, probability map and scale factors (``segment_micrograph``), so that
    several picking settings can be compared without segmenting again."""
    return [segment_micrograph(m.image, m.angpix, diameter_A, models, device) for m in mics]


def picks_from_maps(maps: list, diameter_A: float, models, params: PickParams | None = None):
    """PIXER picks (xy, fom) per micrograph from :func:`segment_all`'s output."""
    params = params or PickParams()
    return [(r.xy, r.fom) for r in (pick_segmented(*seg, diameter_A, models, params) for seg in maps)]


def job_and_candidates(seg, diameter_A: float, models, params: PickParams):
    """A job's picks at ``params`` and every candidate at threshold 0 (for average precisions), both as
    :class:`relion_pixer.pipeline.PickResult`, from :func:`segment_all`'s output for one micrograph and one pass of
    the classifier: the job's picks are the threshold-0 candidates the decision's cut keeps, then with
    ``params.repick`` the job's second pass, whose additions join the candidates."""
    from dataclasses import replace

    from relion_pixer.decide import cut
    from relion_pixer.pipeline import pick_from_map, repick

    every = pick_from_map(*seg, diameter_A, models, replace(params, threshold=0.0, max_particles=0))
    keep, _ = cut(every.fom, params.threshold, 0 if params.repick else params.max_particles)
    job = replace(every, xy=every.xy[keep], fom=every.fom[keep], map_score=every.map_score[keep])
    if params.repick:
        job = repick(job, diameter_A, models, params)
        first = {tuple(p) for p in every.xy.tolist()}
        new = np.array([tuple(p) not in first for p in job.xy.tolist()], bool).reshape(-1)
        every = replace(every, xy=np.concatenate([every.xy, job.xy[new]]),
                        fom=np.concatenate([every.fom, job.fom[new]]),
                        map_score=np.concatenate([every.map_score, job.map_score[new]]))
    return job, every


def run_pixer(mics: list[Micrograph], diameter_A: float, models, params: PickParams | None = None):
    """PIXER picks (xy, fom) per micrograph."""
    params = params or PickParams()
    return picks_from_maps(segment_all(mics, diameter_A, models, params.device), diameter_A, models, params)


def size_estimate(mics: list[Micrograph], diameter_A: float, models):
    """The size estimate a picking job on ``mics`` makes on its first micrographs (:mod:`relion_pixer.size`)."""
    from relion_pixer import size

    sample = [(m.image, m.angpix) for m in mics[: size.SAMPLE_MICROGRAPHS]]
    return size.estimate_diameter(sample, diameter_A, models)


def spacing_check(mics: list[Micrograph], diameter_A: float, models, rounds: int | None = None):
    """The pick-spacing check a picking job makes on its first micrographs at ``diameter_A``
    (:func:`relion_pixer.size.check_spacing`, with ``rounds`` or its default, the second pass as the job's defaults
    say: :func:`relion_pixer.size.spacing_repick`)."""
    from relion_pixer import size

    sample = [(m.image, m.angpix) for m in mics[: size.SAMPLE_MICROGRAPHS]]
    return size.check_spacing(sample, diameter_A, models, rounds=size.SPACING_ROUNDS if rounds is None else rounds,
                              repick=size.spacing_repick(PickParams().repick))


def job_sizes(mics: list[Micrograph], diameter_A: float, models, estimate: bool = True, weight: float | None = None,
              spacing: bool | None = None):
    """How a picking job on ``mics`` comes to its diameter: ``(estimate, blend, diameter)``, its size estimate (None
    when ``estimate`` is False), :func:`relion_pixer.size.picking_diameter` of it (with ``weight`` or the job's
    default; ``diameter_A`` without an estimate), and the diameter it picks at, after the pick-spacing check where
    ``spacing`` (the job's ``check_spacing``; None: the job's default, on since session 25)."""
    from relion_pixer import size
    from relion_pixer.job import JobOptions

    est = size_estimate(mics, diameter_A, models) if estimate else None
    blend = (size.picking_diameter(est, size.ESTIMATE_WEIGHT if weight is None else weight) if est is not None
             else float(diameter_A))
    d = spacing_check(mics, blend, models).diameter_A if (JobOptions.check_spacing if spacing is None
                                                          else spacing) else blend
    return est, blend, d


def job_diameter(mics: list[Micrograph], diameter_A: float, models, estimate: bool = True,
                 weight: float | None = None, spacing: bool | None = None) -> float:
    """The diameter a picking job on ``mics`` picks at (:func:`job_sizes`)."""
    return job_sizes(mics, diameter_A, models, estimate, weight, spacing)[2]


def run_log(mics: list[Micrograph], diameter_A: float, threshold: float):
    """LoG baseline picks (xy, score) per micrograph, in micrograph pixels."""
    out = []
    for m in mics:
        net, factors = prepare(m.image, m.angpix, diameter_A)
        xy, score = log_pick(net, NET_DIAMETER_PX, threshold=threshold)
        out.append((to_original(xy, factors), score))
    return out


def _particle_ious(mics: list[Micrograph], sims, diameter_A: float, mask_of) -> tuple[np.ndarray, np.ndarray]:
    """Per-particle IoU of ``mask_of(net_image, instances)`` against the simulator's instance maps at network
    scale, and each particle's mask area (network-scale pixels)."""
    ious, areas = [], []
    for m, sim in zip(mics, sims):
        net, _ = prepare(m.image, m.angpix, diameter_A)
        inst = nearest_resample(np.asarray(sim.instances, np.int32), net.shape)
        ids, iou = particle_ious(mask_of(net, inst), inst)[:2]
        ious.extend(iou)
        areas.extend(np.bincount(inst.ravel())[np.asarray(ids, dtype=np.int64)])
    return np.asarray(ious, np.float64), np.asarray(areas, np.float64)


def particle_mask_ious(models, mics: list[Micrograph], sims, diameter_A: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-particle IoU of the segmentation mask (probability >= 0.5) against the simulator's instance maps, and
    each particle's mask area (network-scale pixels)."""
    return _particle_ious(mics, sims, diameter_A,
                          lambda net, inst: predict_probability(models.segmenter, net).numpy() >= 0.5)


def best_head_ious(models, mics: list[Micrograph], sims, diameter_A: float) -> np.ndarray:
    """Per-particle IoU of the best masks the segmenter's output head can draw at its output stride
    (:func:`relion_pixer.evaluate.best_mask_at_stride`): a perfect network of this design reaches at least these."""
    stride = models.segmenter.trunk.stride
    return _particle_ious(mics, sims, diameter_A, lambda net, inst: best_mask_at_stride(inst > 0, stride))[0]


def mask_iou(models, mics: list[Micrograph], sims, diameter_A: float) -> float:
    """Mean particle IoU of the segmentation mask (probability >= 0.5) against the simulator's instance maps."""
    ious, _ = particle_mask_ious(models, mics, sims, diameter_A)
    return float(np.mean(ious)) if len(ious) else float("nan")


def sets_mean(real, sim, sim_weight: float = 1.0) -> float:
    """The tuning scripts' mean over sets: each real set's figure counts once, the simulated sets' mean counts
    ``sim_weight`` times."""
    return float((sum(real) + sim_weight * float(np.mean(sim))) / (len(real) + sim_weight))


def score(picks, mics: list[Micrograph], radius_px: float, min_score: float | None = None) -> dict:
    """Pooled one-to-one precision, recall and F1 (Hungarian matching within ``radius_px``), and the median distance
    from a matched pick to its label in pixels (``median_distance_px``, NaN with no match): how well picks are
    centred."""
    preds = []
    for xy, s in picks:
        preds.append(xy if min_score is None else xy[s >= min_score])
    matches = [match_picks(xy, m.truth, radius_px) for xy, m in zip(preds, mics)]
    res = Scores.pooled(matches)
    return {"precision": res.precision, "recall": res.recall, "f1": res.f1, "picks": res.n_pred, "truth": res.n_true,
            "median_distance_px": median_distance(matches)}


def f1_change_interval(picks_a, picks_b, mics: list[Micrograph], radius_px: float, n_boot: int = 2000,
                       level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """The interval of the pooled F1 change ``b - a`` over micrographs drawn again (paired bootstrap).

    Both pick lists are scored on the same resampled micrographs, so the interval shows how far a change measured on
    these few micrographs could move with others like them. It does not include the noise of training a network again
    (another seed), which adds to it. Reported beside a decision, never deciding.

    Parameters
    ----------
    picks_a, picks_b : list of (xy, score)
        One entry per micrograph of ``mics``, as :func:`score` takes them.
    radius_px : float
        Matching radius in pixels.

    Returns
    -------
    (low, high) : the central ``level`` interval of the change.
    """
    counts = np.array([[m.tp, m.n_pred, m.n_true] for picks in (picks_a, picks_b)
                       for m in (match_picks(xy, mic.truth, radius_px) for (xy, _), mic in zip(picks, mics))],
                      dtype=float).reshape(2, len(mics), 3)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(mics), size=(n_boot, len(mics)))
    tp, n_pred, n_true = counts[:, draws].sum(axis=2).transpose(2, 0, 1)  # each (2, n_boot)
    f1 = np.where(n_pred + n_true > 0, 2 * tp / np.maximum(n_pred + n_true, 1), 0.0)
    change = f1[1] - f1[0]
    tail = (1 - level) / 2
    return float(np.quantile(change, tail)), float(np.quantile(change, 1 - tail))


def best_threshold(picks, mics: list[Micrograph], radius_px: float, candidates) -> tuple[float, dict]:
    """The score threshold with the best F1 on ``mics`` (used on the train/valid split only)."""
    best = None
    for t in candidates:
        s = score(picks, mics, radius_px, min_score=t)
        if best is None or s["f1"] > best[1]["f1"]:
            best = (float(t), s)
    return best


def fmt(name: str, s: dict) -> str:
    return f"{name:28s} precision {s['precision']:.3f}  recall {s['recall']:.3f}  F1 {s['f1']:.3f}  ({s['picks']} picks, {s['truth']} true)"


def add_dark_spare_argument(ap) -> None:
    """``--dark_spare``: the decision's :data:`relion_pixer.decide.DARK_SPARE` for this run (``default``: as shipped,
    ``off``, or a number); :func:`apply_dark_spare` sets it."""
    ap.add_argument("--dark_spare", default="default",
                    help="the particle veto's dark spare (relion_pixer.decide.DARK_SPARE): default (as shipped), off, "
                         "or the floor in robust sds")


def apply_dark_spare(value: str):
    """Set :data:`relion_pixer.decide.DARK_SPARE` from ``--dark_spare`` and return the value in force."""
    from relion_pixer import decide

    if value != "default":
        decide.DARK_SPARE = None if value == "off" else float(value)
    return decide.DARK_SPARE
