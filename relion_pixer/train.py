"""Training and fine-tuning of the PIXER networks (``relion_pixer train``).

Order as in the paper: the 3-way classifier is trained first on boxes, then the segmentation net is built from
its trunk and trained on whole (cropped) micrographs.

Training data, all at network scale (:data:`relion_pixer.NET_DIAMETER_PX` pixels per particle diameter):

- simulated micrographs from :mod:`relion_pixer.simulate` with domain randomisation (SNR, defocus, particle
  shapes and sizes, contamination, gradients, 8-bit quantisation), with exact label maps;
- real micrographs given as MRC + coordinate STAR (for instance the train split of EMPIAR-10028). Their labels are
  incomplete (some particles carry none), so for the segmentation net only a disc at each labelled particle
  (particle) and a ring around it (background) are trusted; every other pixel is ignored by the loss;
- label maps made by reprojecting a RELION refinement (``relion_pixer labels``), for fine-tuning
  (``--from-labels``); a replay of simulated data keeps the model from forgetting.

Everything is driven by one TOML config file (see ``configs/pretrain.toml``); the run writes checkpoints, a JSON
log of losses and validation figures, and the final model file that ``relion_pixer pick --model`` reads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from relion_pixer import BACKGROUND, CONTAMINATION, NET_DIAMETER_PX, PARTICLE
from relion_pixer.evaluate import json_safe
from relion_pixer.io import atomic_output_path, atomic_write
from relion_pixer.models import (
    DEFAULT_BRANCH_WIDTH,
    DEFAULT_RATES,
    Classifier,
    build_classifier,
    build_segmenter,
    load_pretrained,
    save_models,
    shipped_weights,
)
# cut_boxes is train's API too
from relion_pixer.preprocess import cut_boxes, nearest_resample, prepare, to_network  # noqa: F401

__all__ = ["TrainConfig", "load_config", "LabelledSet", "simulated_set", "real_set", "train", "main"]

IGNORE = 255


# ----------------------------------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    """Settings of one training run (every field can be set in the TOML file's top level or its sections)."""

    name: str = "pixer"
    seed: int = 0
    # simulated data (network scale)
    sim_train: int = 400
    sim_valid: int = 24
    sim_size: int = 384
    snr_min: float = 0.01
    snr_max: float = 1.0
    oversample_min: float = 1.2
    oversample_max: float = 2.5
    # each simulated micrograph's particles are drawn this much larger or smaller (uniform) than the diameter it is
    # brought to network scale with, so the networks also learn particles a misjudged diameter makes smaller or
    # larger than NET_DIAMETER_PX
    size_jitter_min: float = 0.85
    size_jitter_max: float = 1.15
    valid_snrs: tuple = (0.01, 0.1)
    valid_oversample: float = 2.5
    # real data: list of {micrographs = glob or list of files / globs, coords = dir, diameter = A, angpix = A/px}
    real: tuple = ()
    # classifier
    cls_steps: int = 1500
    cls_batch: int = 128
    cls_lr: float = 2e-3
    #: Pixels of context around each classifier box (a whole number of trunk strides; 0: the box alone). With
    #: context the trunk sees the box's surroundings, as when the picking job runs it once over a whole micrograph
    #: (:attr:`relion_pixer.models.Classifier.context`); a model trained without it can be fine-tuned with it.
    cls_context: int = 0
    # networks: trunk channels of the three stages (full, 1/2 and 1/4 resolution)
    widths: tuple = (16, 32, 64)
    # pooling between the trunk's stages: "max" (the paper's) or "avg"
    pool: str = "max"
    # segmentation
    seg_steps: int = 3000
    seg_batch: int = 8
    seg_crop: int = 192
    seg_lr: float = 2e-3
    rates: tuple = DEFAULT_RATES
    branch_width: int = DEFAULT_BRANCH_WIDTH  # channels inside each atrous branch
    real_fraction: float = 0.25
    # real micrographs: also label as background the pixels more than real_far_distance diameters from every
    # labelled particle and more than half a diameter from anything particle-like (a density, preprocess.density_map,
    # of at least the labelled particles' real_far_percentile th percentile), so the networks see real empty ice and
    # not only the ring around each label; 0: off (everything beyond the ring is ignored)
    real_far_percentile: float = 0.0
    real_far_distance: float = 1.0
    # share of training crops and boxes low-passed by a Gaussian of sd 0.5-2.5 network pixels (denoised or
    # low-passed micrographs); 0: none
    blur_fraction: float = 0.0
    # share of simulated training micrographs taken with a Volta phase plate (phase shift drawn from
    # phase_shift_range, degrees): strong low-frequency contrast, particles without the CTF's light fringes; 0: none
    phase_plate_fraction: float = 0.0
    phase_shift_range: tuple = (30.0, 120.0)
    # share of simulated training micrographs whose particle family is redrawn from the thin ones (train.THIN_FAMILIES),
    # on top of their share among all families; 0: none
    thin_fraction: float = 0.0
    # simulated micrographs of thin-walled hollow shells (the ``shell`` family, outside the default mix: a dark ring
    # round a light centre, as apoferritin or a capsid looks) added to the simulated training set, as a share of
    # sim_train; drawn from their own seed (seed + 20000), so the sim_train micrographs stay the same; 0: none
    shell_fraction: float = 0.0
    # simulated micrographs of crowded particles (density CROWDED_DENSITY, centres CROWDED_SEPARATION diameters apart
    # or more: packed side by side, as on crowded grids) added likewise, as a share of sim_train, from seed + 40000;
    # the default mix's density is log-uniform 0.02-0.5, so few of its micrographs are that crowded; 0: none
    crowded_fraction: float = 0.0
    # simulated micrographs whose particles are built from atomic models (each file alone, or copies of it as a
    # dimer, ring, cylinder, cage or filament; simulate.load_atomic_model) added likewise, as a share of sim_train,
    # from seed + 30000; atomic_models: glob patterns of PDB / mmCIF files (relative to the working directory), models
    # with fewer than ATOMIC_MIN_ATOMS heavy atoms (fragments, test files) left out; 0: none
    atomic_fraction: float = 0.0
    atomic_models: tuple = ()
    # per-particle loss weight of the segmentation net: pixels of a particle whose mask is smaller than a disc of
    # the network diameter weigh (disc area / mask area), at most this much (thin, elongated particles would
    # otherwise count for little; most other masks are smaller than the disc too, so they gain as well, less);
    # 1: every particle pixel alike
    small_mask_weight_max: float = 1.0
    # divide those weights by their mean over the simulated training set's particle pixels, so the particle class
    # keeps its total weight and only its share moves towards small masks
    small_mask_weight_normalise: bool = False
    # fine-tuning
    from_labels: str | None = None
    init: str | None = None
    particle_diameter: float | None = None  # A; default: the diameter `relion_pixer labels` measured
    background_within: float | None = 1.5  # trust background only this many diameters from labelled particles
    # share of the user's labelled data in the classifier's boxes (per class) and in the segmentation crops; the
    # rest is the simulated replay, so the model does not forget
    user_fraction: float = 0.7
    # bookkeeping
    checkpoint_every: int = 250
    valid_every: int = 500
    threads: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        flat: dict = {}
        for key, value in d.items():
            if isinstance(value, dict) and key not in ("real",):
                flat.update(value)
            else:
                flat[key] = value
        known = set(cls.__dataclass_fields__)
        unknown = set(flat) - known
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(sorted(unknown))}")
        if isinstance(flat.get("atomic_models"), str):
            flat["atomic_models"] = (flat["atomic_models"],)
        for key, value in flat.items():  # a value of the wrong type fails here, not steps into training
            default = cls.__dataclass_fields__[key].default
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, (int, float)):
                ok = isinstance(value, (int, float) if isinstance(default, float) else int) and not isinstance(value, bool)
            elif isinstance(default, str):
                ok = isinstance(value, str)
            else:
                ok = True
            if not ok:
                raise ValueError(f"training setting {key} must be {type(default).__name__} (like {default!r}), "
                                 f"not {value!r}")
        for key in ("valid_snrs", "rates", "real", "widths", "phase_shift_range", "atomic_models"):
            if key in flat:
                flat[key] = tuple(flat[key])
        return cls(**flat)


#: Settings for fine-tuning (``--from-labels`` without ``--config``): short, gentle, with a simulated replay.
FINETUNE_DEFAULTS = {
    "sim_train": 200,
    "sim_valid": 8,
    "cls_steps": 300,
    "cls_lr": 5e-4,
    "seg_steps": 600,
    "seg_lr": 5e-4,
    "seg_crop": 160,
    "valid_every": 200,
    "checkpoint_every": 100,
}


def load_config(path: str | Path | None, finetune: bool = False, **overrides) -> TrainConfig:
    """Read a TOML config (or defaults when ``path`` is None) and apply ``overrides`` (None values ignored).

    With ``finetune`` and no file, the defaults are :data:`FINETUNE_DEFAULTS`. Fine-tuning (``from_labels`` set)
    without ``init`` starts from the shipped weights.
    """
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"training config {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not valid TOML ({exc})") from None
    if finetune and path is None:
        data = dict(FINETUNE_DEFAULTS)
    try:
        cfg = TrainConfig.from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}" if path is not None else str(exc)) from None
    for key, value in overrides.items():
        if value is not None:
            setattr(cfg, key, value)
    if cfg.from_labels and not cfg.init:
        cfg.init = str(shipped_weights())
    return cfg


# ------------------------------------------------------------------------------------------------------- data
@dataclass
class LabelledSet:
    """Normalised network-scale images with per-pixel labels and particle centres.

    ``labels`` hold 0/1/2 (background/particle/contamination) and :data:`IGNORE` where a label is unknown.
    """

    images: list
    labels: list
    coords: list
    instances: list | None = None
    names: list | None = None

    def __len__(self) -> int:
        return len(self.images)

    def extend(self, other: "LabelledSet") -> "LabelledSet":
        inst = None
        if self.instances is not None and other.instances is not None:
            inst = self.instances + other.instances
        names = (self.names or [""] * len(self)) + (other.names or [""] * len(other))
        return LabelledSet(self.images + other.images, self.labels + other.labels, self.coords + other.coords, inst, names)


#: ``crowded`` simulated micrographs: their density (share of the free area the particles' discs cover) and least centre
#: distance (in diameters) are drawn uniformly from these ranges (``bench_crowd.py``'s crowded sets: 0.5 and 0.7).
CROWDED_DENSITY = (0.35, 0.6)
CROWDED_SEPARATION = (0.7, 0.9)

#: Particle families that ``thin_fraction`` draws more often: the thin ones (``bench_detectability.py``: at SNR 0.1
#: the elongated family is found 0.32 of the time, cylinders 0.77, the others 0.98-1).
THIN_FAMILIES = ("elongated", "cylinder")


def simulated_set(
    n: int,
    size: int,
    seed: int,
    snr: float | tuple = (0.005, 0.5),
    oversample: float | tuple = (1.2, 2.5),
    progress: bool = True,
    phase_plate_fraction: float = 0.0,
    phase_shift_range: tuple = (30.0, 120.0),
    thin_fraction: float = 0.0,
    size_jitter: tuple = (0.85, 1.15),
    families: tuple | None = None,
    model_files: tuple | list = (),
    crowded: bool = False,
) -> LabelledSet:
    """Simulate ``n`` micrographs and bring them to network scale exactly as the picker does.

    Each micrograph is simulated at a native sampling ``k`` times finer than network scale (particle diameter
    ``32 k`` pixels, ``k`` drawn from ``oversample``), with the SNR defined at that native sampling, then
    Fourier-cropped and normalised by :func:`relion_pixer.preprocess.prepare`, so training sees what picking sees.
    ``snr`` and ``oversample`` are one value, or a (min, max) range drawn log-uniformly per micrograph.
    The output images are about ``size`` pixels wide. A share ``phase_plate_fraction`` of the micrographs is
    taken with a phase plate (phase shift uniform in ``phase_shift_range`` degrees); with 0 no extra random number
    is drawn, so sets made before this option existed are reproduced exactly. Likewise a share ``thin_fraction``
    of the micrographs has its particle family redrawn from :data:`THIN_FAMILIES` (thin particles, the ones picking
    misses most), on top of their share among all families. ``families`` (e.g. ``("shell",)``) draws every
    micrograph's particles from those families instead of the default mix, and ``model_files`` (atomic models) builds
    them from those files instead (alone or as assemblies of copies). Each micrograph's particles are drawn ``j`` times the
    diameter it is brought to network scale with, ``j`` uniform in ``size_jitter``. ``crowded`` packs them side by
    side (density uniform in :data:`CROWDED_DENSITY`, centres at least :data:`CROWDED_SEPARATION` diameters apart).
    """
    from relion_pixer.simulate import random_config, simulate_micrograph

    if not 0.0 <= thin_fraction <= 1.0:
        raise ValueError(f"thin_fraction must be between 0 and 1, not {thin_fraction:g}")
    if not 0.0 <= phase_plate_fraction <= 1.0:
        raise ValueError(f"phase_plate_fraction must be between 0 and 1, not {phase_plate_fraction:g}")
    if len(size_jitter) != 2 or not 0.0 < size_jitter[0] <= size_jitter[1]:
        raise ValueError(f"size_jitter must be (min, max) with 0 < min <= max, not {size_jitter!r}")
    if len(phase_shift_range) != 2 or not 0.0 <= phase_shift_range[0] <= phase_shift_range[1] <= 180.0:
        raise ValueError(f"phase_shift_range must be (min, max) degrees within 0-180, not {phase_shift_range!r}")
    rng = np.random.default_rng(seed)
    images, labels, coords, instances = [], [], [], []
    t0 = time.time()
    for i in range(n):
        value = _draw(rng, snr)
        k = _draw(rng, oversample)
        jitter = float(rng.uniform(*size_jitter))
        source = {}  # where this micrograph's particles come from, when not the default mix
        if thin_fraction > 0 and rng.random() < thin_fraction:
            source["families"] = (THIN_FAMILIES[int(rng.integers(len(THIN_FAMILIES)))],)
        if families:
            source["families"] = tuple(families)
        if model_files:
            source.update(families=(), model_files=list(model_files))
        # random_config gives the particle a physical size (from its family's range) and sets the pixel size to match
        cfg = random_config(rng, snr=value, particle_diameter_px=NET_DIAMETER_PX * k * jitter, **source)
        if crowded:  # drawn after the config, so that sets made without it are reproduced exactly
            cfg.update(density=float(rng.uniform(*CROWDED_DENSITY)), min_separation=float(rng.uniform(*CROWDED_SEPARATION)),
                       empty=False)
        if phase_plate_fraction > 0 and rng.random() < phase_plate_fraction:
            cfg["phase_shift"] = float(rng.uniform(*phase_shift_range))
        native = int(round(size * k))
        sim = simulate_micrograph(rng, shape=(native, native), **cfg)
        angpix = float(cfg["angpix"])
        net, factors = prepare(sim.image, angpix=angpix, diameter_angstrom=NET_DIAMETER_PX * k * angpix)
        images.append(net)
        labels.append(nearest_resample(np.asarray(sim.labels, dtype=np.uint8), net.shape))
        instances.append(nearest_resample(np.asarray(sim.instances, dtype=np.int32), net.shape))
        coords.append(to_network(np.asarray(sim.coords).reshape(-1, 2), factors).astype(np.float32))
        if progress and (i + 1) % max(1, n // 10) == 0:
            _log(f"simulated {i + 1}/{n} micrographs ({time.time() - t0:.0f} s)")
    return LabelledSet(images, labels, coords, instances)


#: Atomic models with fewer heavy atoms than this are left out of ``atomic_models`` (peptides, fragments, test files).
ATOMIC_MIN_ATOMS = 500


def atomic_model_files(patterns) -> list[str]:
    """The files the ``atomic_models`` glob patterns name, sorted, without those holding fewer than
    :data:`ATOMIC_MIN_ATOMS` heavy atoms; a ValueError when none is left."""
    import glob

    from relion_pixer.simulate import load_atomic_model

    files = sorted({f for p in patterns for f in glob.glob(str(p))})
    keep = [f for f in files if len(load_atomic_model(f).xyz) >= ATOMIC_MIN_ATOMS]
    if not keep:
        raise ValueError(f"atomic_models {list(patterns)!r}: no atomic model with at least {ATOMIC_MIN_ATOMS} heavy "
                         f"atoms ({len(files)} file{'s' if len(files) != 1 else ''} found)")
    return keep


def _cached_set(cache: Path, make) -> LabelledSet:
    """The set kept in ``cache`` by an earlier run (or an earlier start of this one); else ``make()``, kept there
    (written atomically; a damaged cache, e.g. from a run killed by an older version, is made again)."""
    if cache.is_file():
        try:
            return LabelledSet(**torch.load(cache, weights_only=False))
        except Exception as exc:  # noqa: BLE001 - any unreadable cache is simply made again
            _log(f"{cache}: cannot be read ({type(exc).__name__}); simulating it again")
    made = make()
    with atomic_output_path(cache) as tmp:
        torch.save(made.__dict__, tmp)
    return made


#: Settings that change neither the data nor the training (a run resumed with other values is the same run).
_NOT_INPUTS = ("threads", "checkpoint_every")
#: File in a training run's folder with what its checkpoint and caches were made from (:func:`_inputs`).
INPUTS_FILE = "inputs.json"


def _inputs(cfg: "TrainConfig") -> dict:
    """What a run's checkpoint and simulated caches depend on: the settings, and the contents of the labels file
    and the initial model (a file rewritten at the same path is another input)."""
    import hashlib

    out = json.loads(json.dumps({k: v for k, v in cfg.__dict__.items() if k not in _NOT_INPUTS}, default=str))
    for key in ("from_labels", "init"):
        path = getattr(cfg, key, None)
        if path and Path(path).is_file():
            out[f"{key}_sha1"] = hashlib.sha1(Path(path).read_bytes()).hexdigest()
    return out


def _same_inputs_or_fresh(run: "RunDir", cfg: "TrainConfig") -> bool:
    """False (and the earlier checkpoint and caches removed, with a line saying which settings changed) when ``run``
    holds a checkpoint or caches made from other settings or inputs than ``cfg``'s; then keep ``cfg``'s."""
    now = _inputs(cfg)
    path = run.path / INPUTS_FILE
    same = True
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        earlier = None  # a new folder, or one from before this file: resumed as before
    if earlier is not None and earlier != now:
        changed = sorted(k for k in set(earlier) | set(now) if earlier.get(k) != now.get(k))
        _log(f"{run.path}: the earlier run there was made from other settings or inputs ({', '.join(changed)}); "
             "starting afresh")
        for old in [run.path / "checkpoint.pt", *run.path.glob("sim_*.pt")]:
            old.unlink(missing_ok=True)
        same = False
    with atomic_write(path) as fh:
        json.dump(now, fh, indent=1)
    return same


def _training_set(cfg: "TrainConfig", n: int, seed: int, **source) -> LabelledSet:
    """``n`` simulated training micrographs from ``seed``, drawn as the config says (SNR, oversampling, phase plate,
    size jitter), with ``source``'s extra settings of :func:`simulated_set` (``thin_fraction``, ``families``,
    ``model_files``, ``crowded``)."""
    return simulated_set(
        n, cfg.sim_size, seed, (cfg.snr_min, cfg.snr_max), (cfg.oversample_min, cfg.oversample_max),
        phase_plate_fraction=cfg.phase_plate_fraction, phase_shift_range=tuple(cfg.phase_shift_range),
        size_jitter=(cfg.size_jitter_min, cfg.size_jitter_max), **source,
    )


def _extra_set(cfg: "TrainConfig", cache: Path, share: float, seed_offset: int, **source) -> LabelledSet:
    """Simulated micrographs added to the training set, ``share`` of ``cfg.sim_train`` of them, from
    ``cfg.seed + seed_offset`` and with the particles of ``source`` (``families``, ``model_files`` or ``crowded``);
    cached."""
    return _cached_set(cache, lambda: _training_set(cfg, max(1, round(share * cfg.sim_train)), cfg.seed + seed_offset,
                                                    **source))


def _draw(rng: np.random.Generator, value: float | tuple) -> float:
    if isinstance(value, (tuple, list)):
        return float(math.exp(rng.uniform(math.log(value[0]), math.log(value[1]))))
    return float(value)


def real_set(micrographs: list, coords_dir: str | Path, diameter: float, angpix: float | None = None,
             far_percentile: float = 0.0, far_distance: float = 1.0) -> LabelledSet:
    """Real micrographs with (incomplete) coordinate labels, resampled to network scale.

    Each labelled particle becomes a disc of 0.45 diameters (particle) inside a ring out to 0.9 diameters
    (background); all other pixels are :data:`IGNORE`, because unlabelled particles may lie there, except, with
    ``far_percentile`` > 0, the empty places :func:`far_background` finds.
    """
    from relion_pixer.io import read_coordinates_star, read_micrograph

    images, labels, coords, names = [], [], [], []
    for path in micrographs:
        path = Path(path)
        image, header_angpix = read_micrograph(path)
        apix = angpix or header_angpix
        if not apix:
            raise ValueError(f"{path}: no pixel size (give angpix in the config)")
        star = Path(coords_dir) / f"{path.stem}.star"
        table = read_coordinates_star(star)
        net, factors = prepare(image, apix, diameter)
        xy = np.stack([table["rlnCoordinateX"].to_numpy() * factors[1], table["rlnCoordinateY"].to_numpy() * factors[0]], 1)
        images.append(net)
        lab = _disc_labels(net.shape, xy, NET_DIAMETER_PX)
        if far_percentile > 0:
            lab[(lab == IGNORE) & far_background(net, xy, far_percentile, far_distance)] = BACKGROUND
        labels.append(lab)
        coords.append(xy.astype(np.float32))
        names.append(path.stem)
    return LabelledSet(images, labels, coords, None, names)


def _disc_labels(shape: tuple, xy: np.ndarray, diameter: float, inner: float = 0.45, outer: float = 0.9) -> np.ndarray:
    """Label map: particle within ``inner`` diameters of a centre, background out to ``outer``, else IGNORE."""
    from scipy.spatial import cKDTree

    lab = np.full(shape, IGNORE, dtype=np.uint8)
    if len(xy) == 0:
        return lab
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    dist, _ = cKDTree(xy).query(np.stack([xx.ravel(), yy.ravel()], 1), k=1)
    dist = dist.reshape(shape)
    lab[dist <= outer * diameter] = BACKGROUND
    lab[dist <= inner * diameter] = PARTICLE
    return lab


def far_background(image: np.ndarray, xy: np.ndarray, percentile: float, distance: float = 1.0) -> np.ndarray:
    """Where a real network-scale ``image`` with incomplete labels at ``xy`` is surely empty.

    A pixel is empty when it lies more than ``distance`` diameters from every label and more than half a diameter
    from every pixel whose density (:func:`relion_pixer.preprocess.density_map`) reaches the ``percentile`` th
    percentile of the labelled particles' densities: an unlabelled particle, as dark as most labelled ones, keeps
    its whole disc out. Returns a bool map (all False without labels).
    """
    from scipy.ndimage import distance_transform_edt

    from relion_pixer.preprocess import density_map, nearest_pixels, values_at

    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    if not len(xy):
        return np.zeros(image.shape, bool)
    dens = density_map(image, NET_DIAMETER_PX)
    cut = np.percentile(values_at(dens, xy), percentile)
    clear = distance_transform_edt(dens < cut) > 0.5 * NET_DIAMETER_PX
    centres = np.ones(image.shape, bool)
    centres[nearest_pixels(xy, image.shape)] = False
    return clear & (distance_transform_edt(centres) > distance * NET_DIAMETER_PX)


def _real_files(micrographs) -> list[str]:
    """The micrograph files a ``[[real]]`` entry's ``micrographs`` names: one glob pattern (its matches, sorted), or a
    list of files and patterns (in the list's order, each pattern's matches sorted); a FileNotFoundError naming
    the first that matches nothing."""
    import glob

    patterns = [micrographs] if isinstance(micrographs, str) else list(micrographs)
    if not patterns:
        raise FileNotFoundError("a [[real]] entry lists no micrographs")
    files = []
    for pattern in patterns:
        found = sorted(glob.glob(os.path.expanduser(str(pattern))))
        if not found:
            raise FileNotFoundError(f"no micrographs match {pattern!r}")
        files += found
    return files


def _real_from_config(entries, far_percentile: float = 0.0, far_distance: float = 1.0) -> LabelledSet:
    out = LabelledSet([], [], [], None, [])
    for entry in entries:
        files = _real_files(entry["micrographs"])
        out = out.extend(real_set(files, entry["coords"], float(entry["diameter"]), entry.get("angpix"),
                                  far_percentile, far_distance))
    return out


# ------------------------------------------------------------------------------------------------ sampling
#: Range of the blur augmentation's Gaussian sd, in network pixels (``blur_fraction``).
BLUR_SIGMA = (0.5, 2.5)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian low-pass of images ``x`` (... x H x W) with sd ``sigma`` pixels, renormalised to unit standard
    deviation about their median so a blurred input looks like a normalised micrograph (reflect padding). The
    standard deviation, not the MAD: boxes half in zero padding have a MAD of 0."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    shape = x.shape
    y = x.reshape(-1, 1, *shape[-2:]).float()
    pad = min(radius, shape[-1] - 1, shape[-2] - 1)
    if pad < radius:
        kernel = kernel[radius - pad : radius + pad + 1]
        kernel = kernel / kernel.sum()
        radius = pad
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(1, 1, 1, -1))
    y = F.conv2d(y, kernel.view(1, 1, -1, 1))
    y = y.reshape(shape)
    flat = y.reshape(*shape[:-2], -1)
    med = flat.median(-1, keepdim=True).values
    scale = flat.std(-1, keepdim=True).clamp_min(1e-3)
    return ((flat - med) / scale).reshape(shape)


def _blur_sigma(gen: torch.Generator) -> float:
    """The sd of one blur augmentation, uniform in :data:`BLUR_SIGMA` (network pixels)."""
    return float(torch.empty(1).uniform_(*BLUR_SIGMA, generator=gen))


def _maybe_blur(x: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    if fraction > 0 and float(torch.rand(1, generator=gen)) < fraction:
        return _gaussian_blur(x, _blur_sigma(gen))
    return x


def _augment(
    img: torch.Tensor, lab: torch.Tensor, gen: torch.Generator, blur_fraction: float = 0.0, extra=None
):
    """Random rot90/flip (same for image, labels and the ``extra`` map when given), a low-pass (``blur_fraction``
    of the time), intensity scale and extra noise (image only). Returns ``(img, lab)``, or ``(img, lab, extra)``."""
    k = int(torch.randint(0, 4, (1,), generator=gen))
    img, lab = torch.rot90(img, k, (-2, -1)), torch.rot90(lab, k, (-2, -1))
    flip = bool(torch.rand(1, generator=gen) < 0.5)
    if flip:
        img, lab = img.flip(-1), lab.flip(-1)
    if extra is not None:
        extra = torch.rot90(extra, k, (-2, -1))
        extra = extra.flip(-1) if flip else extra
    img = _maybe_blur(img, blur_fraction, gen)
    scale = float(torch.empty(1).uniform_(0.8, 1.2, generator=gen))
    noise = float(torch.empty(1).uniform_(0.0, 0.3, generator=gen))
    img = img * scale + noise * torch.randn(img.shape, generator=gen)
    return (img, lab) if extra is None else (img, lab, extra)


def _random_crop(data: LabelledSet, idx: int, crop: int, gen: torch.Generator, weight: np.ndarray | None = None):
    """A crop of image ``idx`` and its labels (and of ``weight``, a per-pixel map of the same shape, when given)."""
    img, lab = data.images[idx], data.labels[idx]
    h, w = img.shape
    if h < crop or w < crop:
        pad = ((0, max(0, crop - h)), (0, max(0, crop - w)))
        img = np.pad(img, pad)
        lab = np.pad(lab, pad, constant_values=IGNORE)
        weight = None if weight is None else np.pad(weight, pad, constant_values=1.0)
        h, w = img.shape
    cut = lambda y, x: (img[y : y + crop, x : x + crop], lab[y : y + crop, x : x + crop]) + (  # noqa: E731
        () if weight is None else (weight[y : y + crop, x : x + crop],))
    if data.names is not None and (lab == IGNORE).mean() > 0.3:
        # real micrographs: centre crops on a labelled particle so most crops carry labels
        xy = data.coords[idx]
        if len(xy):
            cx, cy = xy[int(torch.randint(0, len(xy), (1,), generator=gen))]
            y = int(np.clip(cy - crop // 2 + int(torch.randint(-crop // 3, crop // 3 + 1, (1,), generator=gen)), 0, h - crop))
            x = int(np.clip(cx - crop // 2 + int(torch.randint(-crop // 3, crop // 3 + 1, (1,), generator=gen)), 0, w - crop))
            return cut(y, x)
    y = int(torch.randint(0, h - crop + 1, (1,), generator=gen))
    x = int(torch.randint(0, w - crop + 1, (1,), generator=gen))
    return cut(y, x)


def small_mask_weights(instances: np.ndarray, max_weight: float, ref_area: float = math.pi * (NET_DIAMETER_PX / 2) ** 2,
                       scale: float = 1.0):
    """Per-pixel loss weights: on each particle's pixels ``ref_area / (its mask area)`` clipped to
    ``[1, max_weight]``, 1 elsewhere (``ref_area``: a disc of the network diameter).

    The diameter is a particle's longest extent, so most simulated masks are smaller than that disc: a thin particle
    gains most (elongated ones about 4x at ``max_weight`` 4), but round, dimeric and ring-shaped ones also weigh
    about 1.4-2.5x, so the particle class as a whole weighs more too. ``scale`` multiplies the particle pixels'
    weights afterwards (:func:`mean_small_mask_weight` gives the one that keeps the class's total weight)."""
    inst = np.asarray(instances)
    out = np.ones(inst.shape, dtype=np.float32)
    on = inst > 0
    if on.any():
        area = np.bincount(inst[on].ravel()).astype(np.float64)
        out[on] = np.clip(ref_area / np.maximum(area[inst[on]], 1.0), 1.0, float(max_weight)) * float(scale)
    return out


def mean_small_mask_weight(instances: list, max_weight: float) -> float:
    """Mean :func:`small_mask_weights` over all particle pixels of a set of instance maps (1 when there are none)."""
    total = count = 0.0
    for inst in instances:
        w = small_mask_weights(inst, max_weight)[np.asarray(inst) > 0]
        total += float(w.sum())
        count += len(w)
    return total / count if count else 1.0


def seg_batch(sets: list[tuple[LabelledSet, float]], batch: int, crop: int, gen: torch.Generator,
              blur_fraction: float = 0.0, small_mask_weight_max: float = 1.0, small_mask_weight_scale: float = 1.0):
    """A batch of augmented crops drawn from several sets with the given probabilities: ``(images, labels)``, and
    per-pixel loss weights (:func:`small_mask_weights`, particle pixels times ``small_mask_weight_scale``; 1 for
    sets without instance maps) as a third item when ``small_mask_weight_max > 1``."""
    weights = torch.tensor([w for _, w in sets], dtype=torch.float64)
    with_weights = small_mask_weight_max > 1.0
    imgs, labs, pix = [], [], []
    for _ in range(batch):
        data = sets[int(torch.multinomial(weights, 1, generator=gen))][0]
        idx = int(torch.randint(0, len(data), (1,), generator=gen))
        wmap = None
        if with_weights:
            wmap = (small_mask_weights(data.instances[idx], small_mask_weight_max, scale=small_mask_weight_scale)
                    if data.instances is not None else np.ones(data.labels[idx].shape, np.float32))
        parts = _random_crop(data, idx, crop, gen, wmap)
        out = _augment(*(torch.from_numpy(np.ascontiguousarray(a)) for a in parts[:2]), gen, blur_fraction,
                       torch.from_numpy(np.ascontiguousarray(parts[2])) if with_weights else None)
        imgs.append(out[0])
        labs.append(out[1])
        if with_weights:
            pix.append(out[2])
    x, y = torch.stack(imgs)[:, None].float(), torch.stack(labs).long()
    return (x, y, torch.stack(pix).float()) if with_weights else (x, y)


def box_samples(data: LabelledSet, rng: np.random.Generator, per_image: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Box centres (x, y) and classes for the classifier from one labelled set.

    Particles at their centres; contamination at pixels labelled 2; background at pixels at least 0.6 particle
    diameters from every particle centre and labelled background (real sets: inside the trusted ring only).
    """
    centres, classes, which = [], [], []
    for i in range(len(data)):
        lab = data.labels[i]
        xy = data.coords[i]
        if len(xy):
            centres.append(xy)
            classes.append(np.full(len(xy), PARTICLE))
            which.append(np.full(len(xy), i))
        cont = np.argwhere(lab == CONTAMINATION)
        if len(cont):
            pick = cont[rng.integers(0, len(cont), min(len(cont), per_image // 2))]
            centres.append(pick[:, ::-1].astype(np.float32))
            classes.append(np.full(len(pick), CONTAMINATION))
            which.append(np.full(len(pick), i))
        bg = np.argwhere(lab == BACKGROUND)
        if len(bg):
            pick = bg[rng.integers(0, len(bg), per_image * 2)][:, ::-1].astype(np.float32)
            if len(xy):
                d = np.sqrt(((pick[:, None, :] - xy[None, :, :]) ** 2).sum(-1)).min(1)
                pick = pick[d >= 0.6 * NET_DIAMETER_PX]
            pick = pick[:per_image]
            centres.append(pick)
            classes.append(np.full(len(pick), BACKGROUND))
            which.append(np.full(len(pick), i))
    if not centres:
        return np.zeros((0, 3), np.float32), np.zeros(0, np.int64)
    xyz = np.concatenate([np.concatenate(which)[:, None], np.concatenate(centres)], 1).astype(np.float32)
    return xyz, np.concatenate(classes).astype(np.int64)


def box_weights(classes: np.ndarray, user: np.ndarray, user_fraction: float = 0.7) -> np.ndarray:
    """Sampling weights of the classifier's boxes: classes balanced, and the user's boxes a fixed share.

    Each class gets a third of the sampling mass. Within a class that has boxes from the user's labels
    (fine-tuning), those get ``user_fraction`` of the class's mass and the other (simulated replay, real) boxes the
    rest, each group spread evenly over its boxes; otherwise all boxes of the class share it evenly. Without this
    the user's few hundred particles would drown among thousands of simulated ones.

    Parameters
    ----------
    classes : numpy.ndarray
        ``N`` class of each box (0, 1, 2).
    user : numpy.ndarray
        ``N`` bool, whether a box comes from the user's labelled micrographs.
    user_fraction : float
        Share of the user's boxes within each class they appear in.

    Returns
    -------
    numpy.ndarray
        ``N`` float64 weights summing to 1 (for :func:`torch.multinomial`).
    """
    classes = np.asarray(classes)
    user = np.asarray(user, dtype=bool)
    w = np.zeros(len(classes), dtype=np.float64)
    present = [c for c in np.unique(classes)]
    for c in present:
        in_c = classes == c
        mine, other = in_c & user, in_c & ~user
        if mine.any() and other.any():
            w[mine] = user_fraction / mine.sum()
            w[other] = (1.0 - user_fraction) / other.sum()
        else:
            w[in_c] = 1.0 / in_c.sum()
    return w / max(len(present), 1)


# ------------------------------------------------------------------------------------------------ metrics
@torch.no_grad()
def segment_set(segmenter, data: LabelledSet) -> list[np.ndarray]:
    from relion_pixer.segment import predict_probability

    segmenter.eval()
    return [predict_probability(segmenter, img).numpy() for img in data.images]


def seg_metrics(probs: list[np.ndarray], data: LabelledSet) -> dict:
    """Mean particle IoU (per true particle instance) and pixel IoU of the particle class."""
    from relion_pixer.evaluate import particle_ious

    ious, inter, union = [], 0, 0
    for p, lab, inst in zip(probs, data.labels, data.instances or [None] * len(probs)):
        pred = p >= 0.5
        truth = lab == PARTICLE
        valid = lab != IGNORE
        inter += int((pred & truth & valid).sum())
        union += int(((pred | truth) & valid).sum())
        if inst is not None:
            ious.extend(particle_ious(pred, inst)[1])
    return {
        "particle_iou": float(np.mean(ious)) if ious else float("nan"),
        "pixel_iou": inter / union if union else float("nan"),
        "particles": len(ious),
    }


@torch.no_grad()
def classifier_accuracy(classifier, boxes: np.ndarray, classes: np.ndarray, batch: int = 512) -> dict:
    classifier.eval()
    preds = []
    for i in range(0, len(boxes), batch):
        preds.append(classifier(torch.from_numpy(boxes[i : i + batch])[:, None]).argmax(1).numpy())
    pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    out = {"accuracy": float((pred == classes).mean()) if len(pred) else float("nan")}
    for c, name in ((BACKGROUND, "background"), (PARTICLE, "particle"), (CONTAMINATION, "contamination")):
        m = classes == c
        out[f"acc_{name}"] = float((pred[m] == c).mean()) if m.any() else float("nan")
    return out


# ------------------------------------------------------------------------------------------------ training
class RunDir:
    """Checkpoints and the JSON-lines log of one run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise ValueError(f"the run folder {self.path} is a file (or lies under one): give a folder") from None
        except OSError as exc:
            raise ValueError(f"cannot create the run folder {self.path} ({exc.strerror or exc})") from None
        self.log_path = self.path / "log.jsonl"

    def log(self, **record) -> None:
        record["time"] = round(time.time(), 1)
        with open(self.log_path, "a") as fh:
            fh.write(json.dumps(json_safe(record)) + "\n")
        _log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items() if k != "time"))

    def save_checkpoint(self, state: dict) -> None:
        """Write ``state`` atomically, with torch's global random state added (see :func:`_restore_torch_rng`)."""
        with atomic_output_path(self.path / "checkpoint.pt") as tmp:
            torch.save({**state, "torch_rng": _torch_rng_state()}, tmp)

    def load_checkpoint(self) -> dict | None:
        path = self.path / "checkpoint.pt"
        if not path.is_file():
            return None
        return torch.load(path, map_location="cpu", weights_only=False)


def _torch_rng_state() -> dict:
    """torch's global random state (dropout draws from it), saved with each checkpoint."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_torch_rng(checkpoint: dict | None) -> None:
    """Put torch's global random state back where the checkpoint left it, so that a resumed run draws the same
    dropout masks as an uninterrupted one (checkpoints written before this was saved resume without it)."""
    rng = (checkpoint or {}).get("torch_rng")
    if rng is None:
        return
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        # one state per device; a machine with fewer GPUs than the one that wrote the checkpoint restores those it has
        for index, state in enumerate(rng["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, index)


def _cosine(step: int, total: int, lr: float, warmup: int = 50) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def _optimise(opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float) -> None:
    """One optimiser step on ``loss`` at learning rate ``lr``."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _seg_loss(logits: torch.Tensor, target: torch.Tensor, pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy (particles weighted x2) plus a soft Dice term on the particle channel.

    ``pixel_weight`` (N x H x W), when given, multiplies each pixel's weight in both terms (the cross-entropy stays
    a weighted mean, as torch's class weights make it)."""
    weight = torch.tensor([1.0, 2.0, 1.0], device=logits.device)
    valid = (target != IGNORE).float()
    if pixel_weight is None:
        ce = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE)
        pw = valid
    else:
        safe = torch.where(target == IGNORE, torch.zeros_like(target), target)
        pw = pixel_weight * valid
        w = weight[safe] * pw
        ce_px = torch.where(w > 0, F.cross_entropy(logits, safe, reduction="none"), torch.zeros_like(w))
        ce = (ce_px * w).sum() / w.sum().clamp_min(1e-12)
    is_particle = (target == PARTICLE).float()
    p = torch.softmax(logits, 1)[:, PARTICLE] * pw  # carries the weight once, so the intersection does too
    dice = 1 - (2 * (p * is_particle).sum() + 1) / (p.sum() + (is_particle * pw).sum() + 1)
    return ce + dice


class TrainingStopped(Exception):
    """Training stopped because ``stop()`` asked it to (RELION's Abort); the checkpoint of the step it stopped at is
    kept, so that the run resumes there."""


def train(cfg: TrainConfig, out_dir: str | Path, model_out: str | Path | None = None, resume: bool = True,
          stop=None) -> dict:
    """Train (or fine-tune) both networks; returns the final validation figures. Validation runs the networks in
    float32 on every CPU, so that the figures do not depend on the machine (see
    :data:`relion_pixer.models.CPU_PRECISION`). ``stop``: called after every step; when it returns True the step's
    checkpoint is written and :class:`TrainingStopped` raised."""
    from relion_pixer.models import using_cpu_precision

    with using_cpu_precision("float32"):
        return _train(cfg, out_dir, model_out, resume, stop)


def _check_model_out(path: Path) -> None:
    """ValueError, before any training, where the final model could not be written at ``path``."""
    if path.is_dir():
        raise ValueError(f"the model file {path} is a folder: give a file name (e.g. {path / 'model.pt'})")
    if not path.parent.is_dir():
        raise ValueError(f"the model file {path} cannot be written: the folder {path.parent} does not exist")


def _train(cfg: TrainConfig, out_dir: str | Path, model_out: str | Path | None, resume: bool, stop=None) -> dict:
    run = RunDir(out_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    for name in ("cls_steps", "seg_steps"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be 0 or more, got {getattr(cfg, name)}")
    if cfg.sim_train < 1:
        raise ValueError(f"sim_train must be at least 1, got {cfg.sim_train}: the simulated replay keeps the networks "
                         "general")
    if model_out is not None:
        _check_model_out(Path(model_out))

    # ---- the user's labels and the initial model first: their errors should not wait for the simulated data, nor
    # cost an earlier run's checkpoint (a rerun with a mistyped --init must leave it to resume from)
    if not 0.0 < cfg.user_fraction < 1.0:
        raise ValueError(f"user_fraction must be between 0 and 1, got {cfg.user_fraction}")
    if not cfg.small_mask_weight_max >= 1.0:
        raise ValueError(f"small_mask_weight_max must be at least 1 (1: no extra weight), got {cfg.small_mask_weight_max}")
    for name in ("shell_fraction", "atomic_fraction", "crowded_fraction"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {getattr(cfg, name)}")
    atomic_files = atomic_model_files(cfg.atomic_models) if cfg.atomic_fraction > 0 else []
    user = None
    if cfg.from_labels:
        user = labelled_from_star(cfg.from_labels, cfg.particle_diameter, cfg.background_within)
        if not len(user):
            raise ValueError(f"{cfg.from_labels}: no labelled micrographs")
    init = load_pretrained(cfg.init, fuse=False) if cfg.init else None
    if not _same_inputs_or_fresh(run, cfg):
        resume = False
    (run.path / "config.json").write_text(json.dumps(cfg.__dict__, indent=1, default=str))

    # ---- data
    sim_train = _cached_set(run.path / "sim_train.pt",
                            lambda: _training_set(cfg, cfg.sim_train, cfg.seed, thin_fraction=cfg.thin_fraction))
    if cfg.shell_fraction > 0:
        sim_train = sim_train.extend(_extra_set(cfg, run.path / "sim_shell.pt", cfg.shell_fraction, 20_000,
                                                families=("shell",)))
    if cfg.crowded_fraction > 0:
        sim_train = sim_train.extend(_extra_set(cfg, run.path / "sim_crowded.pt", cfg.crowded_fraction, 40_000,
                                                crowded=True))
    if cfg.atomic_fraction > 0:
        sim_train = sim_train.extend(_extra_set(cfg, run.path / "sim_atomic.pt", cfg.atomic_fraction, 30_000,
                                                model_files=atomic_files))
    valid_sets = {}
    for k, snr in enumerate(cfg.valid_snrs):
        valid_sets[snr] = _cached_set(run.path / f"sim_valid_{snr:g}.pt", lambda k=k, snr=snr: simulated_set(
            cfg.sim_valid, 512, 10_000 + cfg.seed + k, float(snr), cfg.valid_oversample, progress=False))
    real = (_real_from_config(cfg.real, cfg.real_far_percentile, cfg.real_far_distance) if cfg.real
            else LabelledSet([], [], [], None, []))
    _log(f"data: {len(sim_train)} simulated, {len(real)} real, {len(user) if user else 0} user micrographs")

    # ---- models
    if init is not None:
        classifier, segmenter = init.classifier, init.segmenter
        if cfg.cls_context != classifier.context:  # the same weights; only what the trunk sees changes
            classifier = Classifier(classifier.trunk, classifier.box_size, context=cfg.cls_context).train()
            classifier.load_state_dict(init.classifier.state_dict())
    else:
        classifier = build_classifier(cfg.widths, pool=cfg.pool, context=cfg.cls_context)
        segmenter = None
    classifier.to(device)
    state = run.load_checkpoint() if resume else None
    stage, step = "classifier", 0
    if state is not None:
        stage, step = state["stage"], state["step"]
        classifier.load_state_dict(state["classifier"])
        gen.set_state(state["gen"])
        _log(f"resuming at {stage} step {step}")

    # ---- stage 1: classifier on boxes
    box_sources = [sim_train] + ([real] if len(real) else []) + ([user] if user else [])
    boxes, classes, sources = [], [], []
    for k, data in enumerate(box_sources):
        xyz, cls = box_samples(data, rng)
        boxes.append(cut_boxes(data.images, xyz, box=classifier.input_size, jitter=2.0, rng=rng))
        classes.append(cls)
        sources.append(np.full(len(cls), k))
    boxes_np, classes_np = np.concatenate(boxes), np.concatenate(classes)
    user_box = np.concatenate(sources) == len(box_sources) - 1 if user else np.zeros(len(classes_np), bool)
    vxyz, vcls = box_samples(valid_sets[cfg.valid_snrs[0]], np.random.default_rng(cfg.seed + 1))
    vboxes = cut_boxes(valid_sets[cfg.valid_snrs[0]].images, vxyz, box=classifier.input_size)
    _log(f"classifier boxes: {np.bincount(classes_np, minlength=3).tolist()} (background/particle/contamination)")
    if stage == "classifier":

        def on_cls_step(step, loss, opt):
            if step % cfg.valid_every == 0 or step == cfg.cls_steps:
                run.log(stage="classifier", step=step, loss=loss, **classifier_accuracy(classifier.cpu(), vboxes, vcls))
                classifier.to(device)
            stopping = stop is not None and stop()
            if step % cfg.checkpoint_every == 0 or stopping:
                run.save_checkpoint(
                    {"stage": "classifier", "step": step, "classifier": classifier.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state()}
                )
            if stopping:
                raise TrainingStopped(f"stopped at classifier step {step}; the run resumes there")

        _restore_torch_rng(state)
        fit_classifier(
            classifier, boxes_np, classes_np, cfg.cls_steps, cfg.cls_batch, cfg.cls_lr, gen, device,
            start=step, opt_state=state.get("opt") if state else None, on_step=on_cls_step,
            sample_weights=box_weights(classes_np, user_box, cfg.user_fraction), blur_fraction=cfg.blur_fraction,
        )
        stage, step, state = "segmenter", 0, None

    # ---- stage 2: segmentation net from the classifier's trunk
    if segmenter is None or not cfg.init:
        segmenter = build_segmenter(classifier, rates=cfg.rates, branch_width=cfg.branch_width)
    segmenter.to(device)
    if state is not None and state.get("segmenter") is not None:
        segmenter.load_state_dict(state["segmenter"])
    sets = [(sim_train, 1.0 - (cfg.real_fraction if len(real) else 0.0))]
    if len(real):
        sets.append((real, cfg.real_fraction))
    if user:
        sets = [(user, cfg.user_fraction), (sim_train, 1.0 - cfg.user_fraction)]

    last_figures: dict = {}  # validation of the final weights, computed once for the log and the model file

    def on_step(step, loss, opt):
        if step % cfg.valid_every == 0 or step == cfg.seg_steps:
            segmenter.cpu()
            full: dict = {}
            run.log(stage="segmenter", step=step, loss=loss, **validate_segmenter(segmenter, valid_sets, full))
            if step == cfg.seg_steps:
                last_figures.update(full)
            segmenter.to(device)
        stopping = stop is not None and step < cfg.seg_steps and stop()
        if step % cfg.checkpoint_every == 0 or step == cfg.seg_steps or stopping:
            run.save_checkpoint(
                {
                    "stage": "segmenter",
                    "step": step,
                    "classifier": classifier.state_dict(),
                    "segmenter": segmenter.state_dict(),
                    "opt": opt.state_dict(),
                    "gen": gen.get_state(),
                }
            )
        if stopping:
            raise TrainingStopped(f"stopped at segmenter step {step}; the run resumes there")

    weight_scale = 1.0
    if cfg.small_mask_weight_normalise and cfg.small_mask_weight_max > 1.0 and sim_train.instances is not None:
        weight_scale = 1.0 / mean_small_mask_weight(sim_train.instances, cfg.small_mask_weight_max)
        _log(f"small-mask weights divided by their mean over the simulated particle pixels ({1 / weight_scale:.3f})")
    _restore_torch_rng(state)
    fit_segmenter(
        segmenter, sets, cfg.seg_steps, cfg.seg_batch, cfg.seg_crop, cfg.seg_lr, gen, device,
        start=step, opt_state=state.get("opt") if state else None, on_step=on_step, blur_fraction=cfg.blur_fraction,
        small_mask_weight_max=cfg.small_mask_weight_max, small_mask_weight_scale=weight_scale,
    )

    # ---- final figures and the model file
    classifier.cpu().eval()
    segmenter.cpu().eval()
    final = {"classifier": classifier_accuracy(classifier, vboxes, vcls)}
    if not last_figures:  # resumed after the last step: nothing was validated in this process
        validate_segmenter(segmenter, valid_sets, last_figures)
    final.update(last_figures)
    meta = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
            "validation": json_safe(final)}
    save_models(model_out or (run.path / "model.pt"), classifier, segmenter, meta)
    (run.path / "final.json").write_text(json.dumps(json_safe(final), indent=1))
    _log(f"final: {json.dumps(final)}")
    return final


def fit_classifier(
    classifier,
    boxes: np.ndarray,
    classes: np.ndarray,
    steps: int,
    batch: int,
    lr: float,
    gen: torch.Generator,
    device: torch.device,
    start: int = 0,
    opt_state: dict | None = None,
    on_step=None,
    sample_weights: np.ndarray | None = None,
    blur_fraction: float = 0.0,
) -> None:
    """Train ``classifier`` on boxes (N x box x box) with augmentation (rot90, intensity, noise).

    Batches are drawn with ``sample_weights`` (default: every class equally often).
    ``on_step(step, loss, optimizer)`` is called after every step.
    """
    opt = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=1e-4)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    if sample_weights is None:
        sample_weights = box_weights(classes, np.zeros(len(classes), dtype=bool))
    weights = torch.from_numpy(sample_weights)
    t0 = time.time()
    step = start
    while step < steps:
        classifier.train()
        idx = torch.multinomial(weights, batch, replacement=True, generator=gen).numpy()
        x = torch.from_numpy(boxes[idx])[:, None]
        k = int(torch.randint(0, 4, (1,), generator=gen))
        x = torch.rot90(x, k, (-2, -1))
        if blur_fraction > 0:
            sel = torch.rand(len(x), generator=gen) < blur_fraction
            if sel.any():
                x[sel] = _gaussian_blur(x[sel], _blur_sigma(gen))
        x = x * float(torch.empty(1).uniform_(0.8, 1.2, generator=gen))
        x = x + float(torch.empty(1).uniform_(0, 0.3, generator=gen)) * torch.randn(x.shape, generator=gen)
        y = torch.from_numpy(classes[idx])
        loss = F.cross_entropy(classifier(x.to(device)), y.to(device))
        _optimise(opt, loss, _cosine(step, steps, lr))
        step += 1
        if step % _progress_every(steps) == 0 or step == steps:
            _log(f"classifier step {step}/{steps} loss {loss.item():.4f} ({_eta(t0, step, steps, start)})")
        if on_step is not None:
            on_step(step, loss.item(), opt)


def fit_segmenter(
    segmenter,
    sets: list,
    steps: int,
    batch: int,
    crop: int,
    lr: float,
    gen: torch.Generator,
    device: torch.device,
    start: int = 0,
    opt_state: dict | None = None,
    on_step=None,
    blur_fraction: float = 0.0,
    small_mask_weight_max: float = 1.0,
    small_mask_weight_scale: float = 1.0,
) -> None:
    """Train ``segmenter`` for ``steps`` steps on crops from ``sets`` ((LabelledSet, weight) pairs).

    ``on_step(step, loss, optimizer)`` is called after every step (validation, checkpoints); ``blur_fraction`` of
    the crops are low-passed (:func:`_augment`); ``small_mask_weight_max`` > 1 weighs small particle masks up
    (:func:`small_mask_weights`).
    """
    opt = torch.optim.AdamW(segmenter.parameters(), lr=lr, weight_decay=1e-4)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    t0 = time.time()
    step = start
    while step < steps:
        segmenter.train()
        x, y, *pw = seg_batch(sets, batch, crop, gen, blur_fraction, small_mask_weight_max, small_mask_weight_scale)
        loss = _seg_loss(segmenter(x.to(device)), y.to(device), pw[0].to(device) if pw else None)
        _optimise(opt, loss, _cosine(step, steps, lr))
        step += 1
        if step % _progress_every(steps) == 0 or step == steps:
            _log(f"segmenter step {step}/{steps} loss {loss.item():.4f} ({_eta(t0, step, steps, start)})")
        if on_step is not None:
            on_step(step, loss.item(), opt)


def validate_segmenter(segmenter, valid_sets: dict, full: dict | None = None) -> dict:
    """Particle IoU and pixel IoU on each validation set (keyed by SNR).

    ``full``, when given, receives every :func:`seg_metrics` figure as ``{"segmenter_snr<S>": {...}}``.
    """
    figures = {}
    for snr, vset in valid_sets.items():
        m = seg_metrics(segment_set(segmenter, vset), vset)
        figures[f"iou_snr{snr:g}"] = m["particle_iou"]
        figures[f"pixel_iou_snr{snr:g}"] = m["pixel_iou"]
        if full is not None:
            full[f"segmenter_snr{snr:g}"] = m
    return figures


def labelled_from_star(path: str | Path, diameter: float | None = None, background_within: float | None = None) -> LabelledSet:
    """A labelled set from the STAR file ``relion_pixer labels`` writes (micrograph, label map, coordinates).

    Only refined particles carry labels, so background farther than ``background_within`` diameters from every
    labelled particle is ignored by the loss (it may hold particles that classification threw away).
    """
    from relion_pixer.labels import read_label_set

    return read_label_set(path, diameter_angstrom=diameter, background_within=background_within, ignore=IGNORE)


# ----------------------------------------------------------------------------------------------------- CLI
def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _progress_every(total: int) -> int:
    """Steps between progress lines: every 50 steps, or about 10 lines for a short run (fine-tuning)."""
    return max(1, min(50, int(total) // 10))


def _eta(t0: float, step: int, total: int, start: int) -> str:
    rate = (time.time() - t0) / max(1, step - start)
    return f"{rate:.2f} s/step, {rate * (total - step) / 60:.1f} min left"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relion_pixer train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="TOML config file (default: built-in defaults)")
    parser.add_argument("--out", required=True, help="run directory: checkpoints, log.jsonl, model.pt")
    parser.add_argument("--model_out", help="where to write the final model file (default OUT/model.pt)")
    parser.add_argument("--from-labels", "--from_labels", dest="from_labels", help="labels STAR from `relion_pixer labels` (fine-tuning)")
    parser.add_argument("--init", help="start from this model file (default for fine-tuning: the shipped weights)")
    parser.add_argument("--particle_diameter", type=float, help="particle diameter in A for --from-labels (default: as measured by `labels`)")
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if OUT has a checkpoint")
    parser.add_argument("--seed", type=int, help="random seed (default: the config's, else 0)")
    parser.add_argument("--threads", "--j", type=int, dest="threads",
                        help="CPU threads (default: the config's, else torch's own: all cores)")
    parser.add_argument("--cls_steps", type=int,
                        help="classifier training steps (default: the config's; without one 1500, or 300 with --from-labels)")
    parser.add_argument("--seg_steps", type=int,
                        help="segmenter training steps (default: the config's; without one 3000, or 600 with --from-labels)")
    parser.add_argument("--sim_train", type=int,
                        help="simulated training micrographs (default: the config's; without one 400, or 200 with --from-labels)")
    parser.add_argument("--sim_valid", type=int,
                        help="simulated validation micrographs per SNR (default: the config's; without one 24, or 8 with "
                        "--from-labels)")
    args = parser.parse_args(argv)
    from relion_pixer.labels import LabelError

    try:
        overrides = ("seed", "threads", "cls_steps", "seg_steps", "sim_train", "sim_valid", "from_labels", "init",
                     "particle_diameter")  # command-line options that override the config's settings of that name
        cfg = load_config(args.config, finetune=bool(args.from_labels), **{k: getattr(args, k) for k in overrides})
        train(cfg, args.out, args.model_out, resume=not args.no_resume)
    except (FileNotFoundError, ValueError, LabelError) as exc:
        print(f"relion_pixer train: error: {exc}", file=sys.stderr)
        return 1
    return 0
