"""Scoring picks against ground truth: matching, precision / recall / F1, average precision, mask IoU.

Definitions
-----------
Matching (:func:`match_picks`)
    One-to-one assignment of predicted to true centres that pairs as many picks as possible, and among those
    assignments the one with the smallest total distance (Hungarian algorithm,
    :func:`scipy.optimize.linear_sum_assignment`). A pair counts only when the centres are at most ``radius``
    apart (``distance <= radius``). The default radius is half the particle diameter. Duplicated picks of one
    particle give one true positive and false positives for the rest.
Precision, recall, F1 (:func:`precision_recall_f1`, :func:`pooled_precision_recall_f1`)
    ``TP / n_pred``, ``TP / n_true``, ``2 TP / (n_pred + n_true)``; NaN where the denominator is 0 (no picks,
    no truth). Pooled figures sum TP, ``n_pred`` and ``n_true`` over micrographs (micro-averaging).
Average precision (:func:`average_precision`, :func:`pooled_average_precision`)
    Detection AP over the figure of merit, as in PASCAL VOC / COCO: picks are taken in decreasing score and
    each is matched greedily to the nearest still-unmatched true centre within ``radius`` (true positive) or
    counted as a false positive. Precision is made monotonically non-increasing in recall ("interpolated") and
    AP is the area under that precision-recall curve (all-point, no 11-point sampling), so a perfect ranking
    that finds every particle has AP = 1, and particles never picked cap the recall below 1. Pooled AP ranks
    the picks of all micrographs together, each matched within its own micrograph. Equal scores are taken in
    input order.
Pixel IoU (:func:`mask_iou`)
    ``|P & T| / |P | T|`` of two boolean masks (1.0 when both are empty).
Per-particle IoU (:func:`particle_ious`)
    For each true particle ``k`` of an instance map (0 = background, ``k > 0`` = particle ``k``): the window
    ``Omega_k`` is the bounding box of instance ``k`` grown by ``margin_px`` pixels on every side (clipped to the
    image); in that window the prediction is ``P_k = pred & ~(other instances)``, i.e. predicted pixels that
    belong to a *neighbouring* true particle are ignored, and the IoU is ``|P_k & T_k| / |P_k | T_k|``.
    Predicted pixels on background near the particle (over-segmentation, merged blobs) lower it, as do missed
    particle pixels.
Best mask at an output stride (:func:`best_mask_at_stride`)
    What a segmentation head of output stride ``s`` can draw at best for a known mask: a logit map at ``1/s`` of
    the resolution, upsampled bilinearly as :class:`relion_pixer.models.SegmentationNet` upsamples its logits
    and cut at 0 (probability 0.5), fitted to the mask (binary cross-entropy, Adam, from the logits of the mask's
    ``s x s`` cell averages). A perfect network of that stride reaches at least its per-particle IoUs (the fit
    comes close to the best such mask, and may fall short of it), so they tell whether the coarse output or the
    network's confidence limits a mask IoU. (The cell averages alone, cut at 0.5, lose thin particles; fitted
    logits keep them, because the width of a level set between two cell centres is set by the ratio of their
    logits.)
Ideal-observer detectability (:func:`matched_filter_dprime`)
    For simulations, where each particle's noise-free image ``s`` and the exact noise are known: the prewhitened
    matched filter's ``d'^2 = sum_k |S_k|^2 / P_N(k)`` (orthonormal FFT of ``s`` in a box around the particle,
    masked to a disc; ``P_N`` the noise power spectrum averaged over random boxes of the noise image; the box mean,
    ``k = 0``, is left out). It is the separation, in standard deviations, of an observer that knows the
    particle's exact image and position.

Command line: ``relion_pixer evaluate --picks JOBDIR/autopick.star --truth DIR (--radius PX | --diameter PX)``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "Match",
    "Scores",
    "match_picks",
    "precision_recall_f1",
    "pooled_precision_recall_f1",
    "greedy_match_by_score",
    "average_precision",
    "pooled_average_precision",
    "median_distance",
    "mask_iou",
    "particle_ious",
    "matched_filter_dprime",
    "ParticleRows",
    "read_coordinates",
    "read_picks",
    "read_truth",
    "micrograph_key",
    "main",
]


# ----------------------------------------------------------------------------------------------------------
# matching and counts


@dataclass(frozen=True)
class Match:
    """One-to-one matching of predicted to true centres.

    Attributes
    ----------
    pred_index, true_index : numpy.ndarray
        Indices of the matched pairs (``pred_index[i]`` matches ``true_index[i]``).
    distance : numpy.ndarray
        Their distances in pixels.
    n_pred, n_true : int
        Number of picks and of true centres.
    """

    pred_index: np.ndarray
    true_index: np.ndarray
    distance: np.ndarray
    n_pred: int
    n_true: int

    @property
    def tp(self) -> int:
        return int(len(self.pred_index))

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_true - self.tp


@dataclass(frozen=True)
class Scores:
    """Counts and figures; NaN where undefined (see the module notes)."""

    tp: int
    n_pred: int
    n_true: int
    precision: float
    recall: float
    f1: float

    @classmethod
    def from_counts(cls, tp: int, n_pred: int, n_true: int) -> "Scores":
        tp, n_pred, n_true = int(tp), int(n_pred), int(n_true)
        if not 0 <= tp <= min(n_pred, n_true):
            raise ValueError(f"inconsistent counts tp={tp}, n_pred={n_pred}, n_true={n_true}")
        precision = tp / n_pred if n_pred else math.nan
        recall = tp / n_true if n_true else math.nan
        f1 = 2.0 * tp / (n_pred + n_true) if (n_pred + n_true) else math.nan
        return cls(tp, n_pred, n_true, precision, recall, f1)

    @classmethod
    def pooled(cls, matches: Iterable["Match"]) -> "Scores":
        """The figures of several micrographs' matches (:func:`match_picks`): counts summed, then divided."""
        matches = list(matches)
        return cls.from_counts(sum(m.tp for m in matches), sum(m.n_pred for m in matches),
                               sum(m.n_true for m in matches))


def _as_xy(xy, name: str) -> np.ndarray:
    arr = np.asarray(xy, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be an N x 2 array of (x, y), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    return arr


def _check_radius(radius: float) -> float:
    radius = float(radius)
    if not (radius > 0 and math.isfinite(radius)):
        raise ValueError(f"radius must be positive and finite, got {radius!r}")
    return radius


def match_picks(pred_xy, true_xy, radius: float) -> Match:
    """Match picks to true centres one-to-one (Hungarian), pairs only within ``radius``.

    Parameters
    ----------
    pred_xy, true_xy : array_like
        ``N x 2`` and ``M x 2`` ``(x, y)`` centres (empty allowed).
    radius : float
        Largest distance (inclusive) at which a pick can match, in pixels; usually half the particle diameter.

    Returns
    -------
    Match
        The assignment with the most pairs and, among those, the smallest total distance.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial import cKDTree

    pred = _as_xy(pred_xy, "pred_xy")
    true = _as_xy(true_xy, "true_xy")
    radius = _check_radius(radius)
    empty = np.zeros(0, dtype=np.int64)
    if len(pred) == 0 or len(true) == 0:
        return Match(empty, empty, np.zeros(0), len(pred), len(true))
    near = cKDTree(pred).query_ball_tree(cKDTree(true), radius)
    pr = np.repeat(np.arange(len(pred)), [len(n) for n in near])
    tc = np.fromiter((j for n in near for j in n), dtype=np.int64, count=len(pr))
    if len(pr) == 0:
        return Match(empty, empty, np.zeros(0), len(pred), len(true))
    d = np.hypot(*(pred[pr] - true[tc]).T)
    # only picks and truths with a partner in reach take part; a pair out of reach costs more than any
    # complete set of pairs in reach, so the assignment maximises the number of pairs, then minimises distance
    rows = np.unique(pr)
    cols = np.unique(tc)
    big = radius * (min(len(rows), len(cols)) + 1) + 1.0
    cost = np.full((len(rows), len(cols)), big)
    cost[np.searchsorted(rows, pr), np.searchsorted(cols, tc)] = d
    r, c = linear_sum_assignment(cost)
    ok = cost[r, c] <= radius
    p_idx, t_idx = rows[r[ok]], cols[c[ok]]
    dist = np.hypot(*(pred[p_idx] - true[t_idx]).T)
    order = np.argsort(p_idx, kind="stable")
    return Match(p_idx[order].astype(np.int64), t_idx[order].astype(np.int64), dist[order], len(pred), len(true))


def precision_recall_f1(pred_xy, true_xy, radius: float) -> Scores:
    """Precision, recall and F1 of one micrograph's picks (matching by :func:`match_picks`)."""
    m = match_picks(pred_xy, true_xy, radius)
    return Scores.from_counts(m.tp, m.n_pred, m.n_true)


def median_distance(matches: Sequence[Match]) -> float:
    """The median distance from a matched pick to its true centre over ``matches`` (pixels; NaN with no match):
    how well the picks are centred."""
    distance = np.concatenate([np.zeros(0)] + [np.asarray(m.distance, np.float64) for m in matches])
    return float(np.median(distance)) if len(distance) else math.nan


def pooled_precision_recall_f1(preds: Sequence, trues: Sequence, radius: float) -> Scores:
    """Precision, recall and F1 pooled over micrographs: TP, picks and truths summed, then divided.

    Parameters
    ----------
    preds, trues : sequence of array_like
        One ``N_i x 2`` array of picks and one ``M_i x 2`` array of true centres per micrograph.
    radius : float
        Matching radius in pixels.
    """
    if len(preds) != len(trues):
        raise ValueError(f"{len(preds)} pick sets but {len(trues)} truth sets")
    return Scores.pooled(match_picks(p, t, radius) for p, t in zip(preds, trues))


# ----------------------------------------------------------------------------------------------------------
# average precision


def _as_scores(score, n: int) -> np.ndarray:
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    if len(s) != n:
        raise ValueError(f"{n} picks but {len(s)} scores")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return s


def greedy_match_by_score(pred_xy, score, true_xy, radius: float) -> np.ndarray:
    """Detection-style matching: in decreasing score, each pick takes the nearest unmatched truth in reach.

    Returns
    -------
    numpy.ndarray of bool
        ``is_tp`` for each pick, in the input order.
    """
    from scipy.spatial import cKDTree

    pred = _as_xy(pred_xy, "pred_xy")
    true = _as_xy(true_xy, "true_xy")
    s = _as_scores(score, len(pred))
    radius = _check_radius(radius)
    is_tp = np.zeros(len(pred), dtype=bool)
    if len(pred) == 0 or len(true) == 0:
        return is_tp
    neighbours = cKDTree(true).query_ball_point(pred, radius)
    taken = np.zeros(len(true), dtype=bool)
    for i in np.argsort(-s, kind="stable"):
        cand = np.asarray(neighbours[i], dtype=np.int64)
        if cand.size == 0:
            continue
        cand = cand[~taken[cand]]
        if cand.size == 0:
            continue
        d = np.hypot(*(true[cand] - pred[i]).T)
        j = cand[np.lexsort((cand, d))[0]]  # nearest; equal distances: lowest index
        taken[j] = True
        is_tp[i] = True
    return is_tp


def _ap_from_ranking(score: np.ndarray, is_tp: np.ndarray, n_true: int) -> float:
    if n_true == 0:
        return math.nan
    if len(score) == 0:
        return 0.0
    order = np.argsort(-score, kind="stable")
    tp = np.cumsum(is_tp[order])
    precision = tp / np.arange(1, len(order) + 1)
    recall = tp / n_true
    # interpolated precision: the best precision at this or any higher recall
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    recall_steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(recall_steps * precision))


def average_precision(pred_xy, score, true_xy, radius: float) -> float:
    """Average precision of one micrograph's picks ranked by ``score`` (see the module notes).

    Returns NaN when there is no true centre.
    """
    pred = _as_xy(pred_xy, "pred_xy")
    s = _as_scores(score, len(pred))
    is_tp = greedy_match_by_score(pred, s, true_xy, radius)
    return _ap_from_ranking(s, is_tp, len(_as_xy(true_xy, "true_xy")))


def pooled_average_precision(preds: Sequence, scores: Sequence, trues: Sequence, radius: float) -> float:
    """Average precision over many micrographs: all picks ranked together, each matched in its micrograph."""
    if not len(preds) == len(scores) == len(trues):
        raise ValueError("preds, scores and trues must have one entry per micrograph")
    all_s, all_tp, n_true = [], [], 0
    for p, s, t in zip(preds, scores, trues):
        p = _as_xy(p, "pred_xy")
        s = _as_scores(s, len(p))
        all_s.append(s)
        all_tp.append(greedy_match_by_score(p, s, t, radius))
        n_true += len(_as_xy(t, "true_xy"))
    s = np.concatenate(all_s) if all_s else np.zeros(0)
    tp = np.concatenate(all_tp) if all_tp else np.zeros(0, dtype=bool)
    return _ap_from_ranking(s, tp, n_true)


# ----------------------------------------------------------------------------------------------------------
# masks


def _as_mask(a, label, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2D map, got shape {a.shape}")
    return (a == label) if label is not None else a.astype(bool)


def mask_iou(pred_mask, true_mask, label: int | None = None) -> float:
    """Pixel intersection over union of two masks of one micrograph.

    Parameters
    ----------
    pred_mask, true_mask : array_like
        2D maps of the same shape. Taken as booleans (non-zero = inside) unless ``label`` is given.
    label : int, optional
        Compare ``pred_mask == label`` with ``true_mask == label`` (e.g. label maps with
        :data:`relion_pixer.PARTICLE`).

    Returns
    -------
    float
        IoU in [0, 1]; 1.0 when both masks are empty.
    """
    p = _as_mask(pred_mask, label, "pred_mask")
    t = _as_mask(true_mask, label, "true_mask")
    if p.shape != t.shape:
        raise ValueError(f"mask shapes differ: {p.shape} vs {t.shape}")
    union = int(np.count_nonzero(p | t))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(p & t)) / union


def particle_ious(pred_mask, instance_map, margin_px: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """IoU of the predicted mask with each true particle, in a window around it (see the module notes).

    Parameters
    ----------
    pred_mask : array_like
        2D predicted particle mask (non-zero = particle).
    instance_map : array_like of int
        2D map of the same shape: 0 background, ``k > 0`` the pixels of true particle ``k``.
    margin_px : int
        The window is the particle's bounding box grown by this many pixels (default 8, a quarter of
        :data:`relion_pixer.NET_DIAMETER_PX`).

    Returns
    -------
    ids : numpy.ndarray
        The instance labels present, increasing.
    ious : numpy.ndarray
        Their IoUs.
    """
    import scipy.ndimage

    pred = _as_mask(pred_mask, None, "pred_mask")
    inst = np.asarray(instance_map)
    if inst.ndim != 2:
        raise ValueError(f"instance_map must be 2D, got shape {inst.shape}")
    if inst.shape != pred.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {inst.shape}")
    if inst.dtype.kind not in "iub":
        raise ValueError(f"instance_map must hold integer labels, got dtype {inst.dtype}")
    if inst.size and inst.min() < 0:
        raise ValueError("instance_map labels must be >= 0")
    margin_px = int(margin_px)
    if margin_px < 0:
        raise ValueError(f"margin_px must be >= 0, got {margin_px}")
    inst = inst.astype(np.int64, copy=False)
    ids = np.unique(inst[inst > 0])
    ious = np.zeros(len(ids), dtype=np.float64)
    slices = scipy.ndimage.find_objects(inst)
    h, w = inst.shape
    for n, k in enumerate(ids):
        sy, sx = slices[k - 1]
        y0, y1 = max(0, sy.start - margin_px), min(h, sy.stop + margin_px)
        x0, x1 = max(0, sx.start - margin_px), min(w, sx.stop + margin_px)
        win = inst[y0:y1, x0:x1]
        t = win == k
        p = pred[y0:y1, x0:x1] & ((win == 0) | t)
        ious[n] = np.count_nonzero(p & t) / np.count_nonzero(p | t)
    return ids, ious


def best_mask_at_stride(mask, stride: int, steps: int = 300) -> np.ndarray:
    """A mask close to ``mask`` that a segmentation head of output stride ``stride`` can draw (module notes).

    Parameters
    ----------
    mask : array_like
        2D mask (non-zero = particle).
    stride : int
        Output stride (:class:`relion_pixer.models.Trunk`'s ``stride``, 4 for the shipped networks).
    steps : int
        Adam steps of the fit (300 is enough for particle-sized masks at stride 4).

    Returns
    -------
    numpy.ndarray
        Boolean mask of the same shape.
    """
    import torch
    import torch.nn.functional as F

    m = _as_mask(mask, None, "mask")
    if m.ndim != 2:
        raise ValueError(f"mask must be 2D, got shape {m.shape}")
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride}")
    stride = int(stride)
    h, w = m.shape
    target = torch.from_numpy(m.astype(np.float32))[None, None]
    target = F.pad(target, (0, (-w) % stride, 0, (-h) % stride), mode="replicate")

    def draw(logits):
        return F.interpolate(logits, scale_factor=stride, mode="bilinear", align_corners=False)

    with torch.enable_grad():
        logits = torch.logit(F.avg_pool2d(target, stride).clamp(0.02, 0.98)).requires_grad_(True)
        opt = torch.optim.Adam([logits], lr=0.1)
        for _ in range(steps if stride > 1 else 0):
            loss = F.binary_cross_entropy_with_logits(4.0 * draw(logits), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return draw(logits.detach())[0, 0, :h, :w].numpy() > 0.0


# ----------------------------------------------------------------------------------------------------------
# reading picks and truth

#: Suffixes stripped from a file stem to find its micrograph (``mic_autopick.star`` -> ``mic``).
_SUFFIXES = re.compile(r"(_(autopick|manualpick|pick|picks|coords|coordinates|pixer|particles|extract))+$",
                       re.IGNORECASE)


def matched_filter_dprime(signal, noise, xy, box: int, mask_radius: float | None = None, n_noise_boxes: int = 128,
                          rng: np.random.Generator | None = None) -> np.ndarray:
    """Ideal-observer detectability ``d'`` of particles whose noise-free image and noise are known.

    Parameters
    ----------
    signal : array_like
        2D noise-free image of the particles alone (e.g. ``SimulatedMicrograph.particle_signal``).
    noise : array_like
        2D noise image of the same shape (e.g. ``image - clean``); it must hold at least one whole box.
    xy : array_like
        ``N x 2`` ``(x, y)`` particle centres in pixels.
    box : int
        Box side in pixels (e.g. two particle diameters).
    mask_radius : float, optional
        Keep only the signal within this radius of the centre (leaves neighbouring particles out); None: the
        whole box.
    n_noise_boxes : int
        Random noise boxes averaged for the noise power spectrum.
    rng : numpy.random.Generator, optional
        Draws the noise boxes' positions (default: seed 0).

    Returns
    -------
    numpy.ndarray
        ``N`` float64 ``d'`` (see the module docstring).
    """
    signal = np.asarray(signal)
    noise = np.asarray(noise)
    if signal.ndim != 2 or signal.shape != noise.shape:
        raise ValueError(f"signal and noise must be 2D images of one shape, got {signal.shape} and {noise.shape}")
    box = int(box)
    h, w = noise.shape
    if not 2 <= box <= min(h, w):
        raise ValueError(f"box must be between 2 and the image's smaller side ({min(h, w)}), got {box}")
    xy = _as_xy(xy, "xy")
    rng = np.random.default_rng(0) if rng is None else rng
    ys = rng.integers(0, h - box + 1, int(n_noise_boxes))
    xs = rng.integers(0, w - box + 1, int(n_noise_boxes))
    stack = np.stack([noise[a : a + box, b : b + box] for a, b in zip(ys, xs)]).astype(np.float64)
    stack -= stack.mean(axis=(1, 2), keepdims=True)
    psd = (np.abs(np.fft.fft2(stack, norm="ortho")) ** 2).mean(0)
    psd[0, 0] = np.inf  # the box mean: no picker can tell it from the background level
    from relion_pixer.preprocess import cut_boxes

    ij = np.rint(xy)
    if len(ij) and (ij.min() < 0 or (ij[:, 0] >= w).any() or (ij[:, 1] >= h).any()):
        raise ValueError(f"particle centres must lie inside the {w} x {h} image")
    boxes = cut_boxes([signal], np.column_stack([np.zeros(len(xy)), xy]), box).astype(np.float64)
    if mask_radius is not None:
        yy, xx = np.mgrid[:box, :box] - box // 2
        boxes *= np.hypot(yy, xx) <= float(mask_radius)
    spec = np.abs(np.fft.fft2(boxes, norm="ortho")) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(psd > 0, spec / psd, 0.0)
    return np.sqrt(ratio.sum(axis=(1, 2)))


def micrograph_key(path: str | Path) -> str:
    """The micrograph a file refers to: its base name without extension and pick suffixes."""
    stem = Path(str(path)).name
    for ext in (".star", ".mrcs", ".mrc", ".tiff", ".tif", ".eer", ".box", ".txt", ".coords"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    return _SUFFIXES.sub("", stem)


def _read_star_blocks(path: Path) -> dict:
    """The blocks of a STAR file, read as the picking job reads them (:func:`relion_pixer.io.read_star`: RELION's
    rules for quotes and ``#``, values as strings), so that a micrograph name reads the same in both."""
    from relion_pixer import io

    return io.read_star(path)


@dataclass(frozen=True)
class ParticleRows:
    """One micrograph's rows of a particles STAR file (Extract, Select, Class2D, Refine3D: one table for every
    micrograph, split by ``_rlnMicrographName``), read once with the file: what :func:`read_picks` gives for such a
    file in place of a coordinate file's path."""

    path: Path
    micrograph: str
    xy: np.ndarray
    fom: np.ndarray | None

    def is_file(self) -> bool:
        return True

    def __str__(self) -> str:
        return f"{self.path} (micrograph {self.micrograph})"


def _table_with(blocks: dict, *columns: str):
    """The first table of a STAR file's ``blocks`` that has all ``columns``, or None."""
    for block in blocks.values():
        if hasattr(block, "columns") and all(c in block.columns for c in columns):
            return block
    return None


def _block_numbers(block, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(xy, fom)`` of a coordinate table as float64; ValueError naming ``path`` for a value that is not a number."""
    import pandas as pd

    def column(name):
        values = pd.to_numeric(block[name], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise ValueError(f"{path}: _{name} is not a finite number in {len(bad)} row(s) (first: row {bad[0] + 1}, "
                             f"{block[name].iloc[bad[0]]!r})")
        return values

    xy = np.column_stack([column("rlnCoordinateX"), column("rlnCoordinateY")]).reshape(-1, 2)
    fom = column("rlnAutopickFigureOfMerit") if "rlnAutopickFigureOfMerit" in block.columns else None
    return xy, fom


def read_coordinates(path: str | Path | ParticleRows) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a per-micrograph coordinate STAR file (or one micrograph's :class:`ParticleRows`).

    Returns
    -------
    xy : numpy.ndarray
        ``N x 2`` ``(x, y)`` from ``_rlnCoordinateX`` / ``_rlnCoordinateY`` (empty for a file with no rows).
    fom : numpy.ndarray or None
        ``_rlnAutopickFigureOfMerit`` when present.

    Raises
    ------
    ValueError
        A coordinate or figure of merit that is not a finite number (the message names the file).
    """
    if isinstance(path, ParticleRows):
        return path.xy, path.fom
    path = Path(path)
    block = _table_with(_read_star_blocks(path), "rlnCoordinateX", "rlnCoordinateY")
    if block is None:  # a file with only a header (no particles) has no usable block
        return np.zeros((0, 2)), None
    return _block_numbers(block, path)


def _split_by_micrograph(path: Path, block) -> dict[str, ParticleRows]:
    """A particles STAR's table split by ``_rlnMicrographName`` (keys: :func:`micrograph_key`). The coordinates are
    taken as written: origin offsets (``_rlnOriginXAngst``) are not applied."""
    xy, fom = _block_numbers(block, path)
    names = block["rlnMicrographName"].astype(str).to_numpy()
    out: dict[str, ParticleRows] = {}
    full: dict[str, str] = {}
    for name in dict.fromkeys(names):
        key = micrograph_key(name)
        if key in full:
            raise ValueError(f"{path}: two micrographs named {key!r} ({full[key]} and {name}); evaluation matches them "
                             "by base name")
        full[key] = name
        rows = names == name
        out[key] = ParticleRows(path, name, xy[rows], None if fom is None else fom[rows])
    return out


#: STAR files of a RELION job directory that are not per-micrograph coordinates.
_JOB_FILES = {"autopick.star", "manualpick.star", "job.star", "job_pipeline.star", "default_pipeline.star", "summary.star",
              "local_selection.star", "micrographs_selected.star", "labels.star", "particles.star"}


def _is_job_file(path: Path) -> bool:
    return path.name in _JOB_FILES or path.name.startswith(("coords_suffix", "run_", "RELION_"))


def read_picks(picks: str | Path, project_dir: str | Path | None = None) -> dict[str, Path]:
    """Map micrograph key -> coordinate file for a set of picks.

    Parameters
    ----------
    picks : path
        A RELION ``autopick.star`` / ``manualpick.star`` (``data_coordinate_files`` with ``_rlnMicrographName``
        and ``_rlnMicrographCoordinates``), a directory of per-micrograph coordinate STARs (searched
        recursively; RELION's own job files such as ``autopick.star``, ``job.star`` or an Extract job's
        ``particles.star`` are skipped), a RELION 3.1 ``coords_suffix_*.star`` (read as its job directory), a
        particles STAR with ``_rlnMicrographName`` (Extract, Select, Class2D: split by micrograph, values are
        :class:`ParticleRows`), or one coordinate STAR.
    project_dir : path, optional
        Directory that the paths in the node file are relative to (where RELION ran). Default: the current
        directory; a path not found there is looked for relative to the node file's own directory and each of its
        parents (the project of ``Project/AutoPick/jobNNN/autopick.star``, or where ``--o out/`` was given).
    """
    picks = Path(picks)
    if picks.is_file() and picks.name.startswith("coords_suffix"):
        return read_picks(picks.parent, project_dir)
    if picks.is_dir():
        files = sorted(p for p in picks.rglob("*.star") if p.is_file() and not _is_job_file(p))
        if not files:
            others = sorted({p.suffix for p in picks.rglob("*") if p.is_file() and p.suffix not in ("", ".star")})
            raise ValueError(f"{picks}: no coordinate STAR files in it" + (
                f" (it has {', '.join(others)} files; only RELION coordinate STAR files are read)" if others else ""))
        out: dict[str, Path] = {}
        for f in files:
            key = micrograph_key(f)
            if key in out:
                raise ValueError(f"two pick files for micrograph {key!r}: {out[key]} and {f}")
            out[key] = f
        return out
    if not picks.is_file():
        raise FileNotFoundError(f"picks not found: {picks}")
    blocks = _read_star_blocks(picks)
    block = _table_with(blocks, "rlnMicrographCoordinates")
    if block is None:
        particles = _table_with(blocks, "rlnCoordinateX", "rlnCoordinateY")
        if particles is not None and "rlnMicrographName" in particles.columns:
            return _split_by_micrograph(picks, particles)  # one table for many micrographs
        return {micrograph_key(picks): picks}  # a single coordinate file
    if "rlnMicrographName" not in block.columns:
        raise ValueError(f"{picks}: data_coordinate_files has no _rlnMicrographName column")
    resolved = picks.resolve()
    bases = [Path(project_dir) if project_dir is not None else Path.cwd(), *resolved.parents]
    out = {}
    for mic, coords in zip(block["rlnMicrographName"], block["rlnMicrographCoordinates"]):
        rel = Path(str(coords))
        found = rel if rel.is_absolute() else next((b / rel for b in bases if (b / rel).is_file()), bases[0] / rel)
        key = micrograph_key(mic)
        if key in out:
            raise ValueError(f"{picks}: two micrographs named {key!r}; evaluation matches them by base name")
        out[key] = found
    return out


def read_truth(truth: str | Path, project_dir: str | Path | None = None) -> dict[str, Path]:
    """Map micrograph key -> truth coordinate STAR, read as :func:`read_picks` reads picks: a directory of
    ``<micrograph>.star`` files, a coordinate-file list (a ManualPick job's ``manualpick.star``) or one file."""
    truth = Path(truth)
    if not truth.exists():
        raise FileNotFoundError(f"truth not found: {truth}")
    return read_picks(truth, project_dir)


# ----------------------------------------------------------------------------------------------------------
# command line


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="relion_pixer evaluate",
        description="Score particle picks against ground-truth coordinates: one-to-one (Hungarian) matching within "
        "a radius, precision, recall, F1 per micrograph and pooled, average precision over the figure of merit, and "
        "the median distance from a matched pick to its true centre (how well picks are centred).",
    )
    p.add_argument("--picks", required=True, help="autopick.star of a picking job, its directory, a directory of "
                   "coordinate STARs, or a particles STAR (Extract, Select, Class2D; split by _rlnMicrographName, "
                   "coordinates as written, origin offsets not applied)")
    p.add_argument("--truth", required=True, help="directory of per-micrograph coordinate STARs (<micrograph>.star), "
                   "a coordinate-file list such as a ManualPick job's manualpick.star, or a particles STAR")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--radius", type=float, help="matching radius in pixels of the coordinates")
    g.add_argument("--diameter", type=float, help="particle diameter in pixels (radius = diameter / 2)")
    p.add_argument("--project_dir", default=None, help="directory the paths in autopick.star are relative to (default: cwd)")
    p.add_argument("--min_fom", type=float, default=None, help="ignore picks with a figure of merit below this")
    p.add_argument(
        "--all_truth",
        action="store_true",
        help="also count truth micrographs without picks (all their particles missed); default: only picked ones",
    )
    p.add_argument("--json", default=None, help="write the per-micrograph and pooled figures to this JSON file")
    return p


def _fmt(v) -> str:
    if isinstance(v, float):
        return "   nan" if math.isnan(v) else f"{v:6.3f}"
    return str(v)


def json_safe(obj):
    """``obj`` with every NaN or infinite float (in nested dicts and lists) made None, so that the JSON written is
    standard (``null``) and any JSON reader takes it."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    """``relion_pixer evaluate``: print a per-micrograph table and pooled figures; 0 on success."""
    args = _build_parser().parse_args(argv)
    try:
        if args.diameter is not None and not (args.diameter > 0 and math.isfinite(args.diameter)):
            raise ValueError(f"--diameter must be positive and finite, got {args.diameter:g}")
        radius = _check_radius(args.radius if args.radius is not None else args.diameter / 2.0)
        picks = read_picks(args.picks, args.project_dir)
        truth = read_truth(args.truth, args.project_dir)
    except (ValueError, FileNotFoundError) as exc:
        print(f"relion_pixer evaluate: error: {exc}", file=sys.stderr)
        return 2

    keys = sorted(k for k in picks if k in truth)
    for k in sorted(set(picks) - set(truth)):
        print(f"warning: no truth for micrograph {k}: skipped", file=sys.stderr)
    missing = sorted(set(truth) - set(picks))
    if missing:
        action = "counted as missed" if args.all_truth else "not evaluated (use --all_truth to count them)"
        print(f"warning: {len(missing)} truth micrograph(s) without picks, {action}", file=sys.stderr)
        if args.all_truth:
            keys = sorted(keys + missing)
    if not keys:
        print("relion_pixer evaluate: error: no micrograph has both picks and truth", file=sys.stderr)
        return 1

    rows, preds, scores, trues, matches = [], [], [], [], []
    have_fom = True
    try:
        for k in keys:
            if k in picks:
                if not picks[k].is_file():
                    raise ValueError(f"pick file listed for {k} not found: {picks[k]}")
                xy, fom = read_coordinates(picks[k])
            else:
                xy, fom = np.zeros((0, 2)), np.zeros(0)
            if fom is None and len(xy) == 0:
                fom = np.zeros(0)
            if args.min_fom is not None:
                if fom is None:
                    raise ValueError(f"--min_fom given but {picks[k]} has no _rlnAutopickFigureOfMerit")
                keep = fom >= args.min_fom
                xy, fom = xy[keep], fom[keep]
            t_xy, _ = read_coordinates(truth[k])
            m = match_picks(xy, t_xy, radius)
            s = Scores.from_counts(m.tp, len(xy), len(t_xy))
            ap = average_precision(xy, fom, t_xy, radius) if fom is not None else math.nan
            have_fom &= fom is not None
            preds.append(xy)
            scores.append(fom)
            trues.append(t_xy)
            matches.append(m)
            rows.append({"micrograph": k, **asdict(s), "average_precision": ap,
                         "median_distance": median_distance([m])})
    except (ValueError, FileNotFoundError) as exc:
        print(f"relion_pixer evaluate: error: {exc}", file=sys.stderr)
        return 2

    pooled = asdict(Scores.pooled(matches))
    pooled["average_precision"] = pooled_average_precision(preds, scores, trues, radius) if have_fom else math.nan
    pooled["median_distance"] = median_distance(matches)
    pooled["n_micrographs"] = len(keys)

    cols = ["n_true", "n_pred", "tp", "precision", "recall", "f1", "average_precision", "median_distance"]
    heads = ["n_true", "n_pred", "tp", "prec", "recall", "f1", "AP", "dist"]
    width = max(10, max(len(r["micrograph"]) for r in rows))
    print(f"matching radius {radius:g} px; {len(keys)} micrograph(s); dist: median distance from a matched pick to "
          "its true centre, px")
    print(f"{'micrograph':<{width}} " + " ".join(f"{h:>6}" for h in heads))
    for r in rows + [{"micrograph": "pooled", **pooled}]:
        print(f"{r['micrograph']:<{width}} " + " ".join(f"{_fmt(r[c]):>6}" for c in cols))
    if args.json:
        out = {"radius": radius, "picks": str(args.picks), "truth": str(args.truth), "micrographs": rows, "pooled": pooled}
        from relion_pixer import io

        try:
            with io.atomic_write(args.json) as fh:
                fh.write(json.dumps(json_safe(out), indent=2) + "\n")
        except OSError as exc:
            print(f"relion_pixer evaluate: error: cannot write {args.json} ({exc.strerror or exc})", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
