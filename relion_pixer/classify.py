"""The 3-way classifier filter: keep the candidates that the classifier calls "particle".

Each candidate centre gets a ``box_size x box_size`` box (default :data:`relion_pixer.BOX_SIZE`, two particle
diameters at network scale) cut from the *normalised network-scale* image (the image the segmentation net saw,
from :func:`relion_pixer.preprocess.prepare`). Boxes that reach past the image are zero-padded, which is the
image's median level after normalisation. The boxes go through the classifier in batches; the softmax of its
logits gives P(background), P(particle), P(contamination) in the class order of :mod:`relion_pixer`.

Figure of merit: ``fom = P(particle)`` in [0, 1], higher is better. A candidate is kept when
``fom >= threshold``; the kept ones are sorted by decreasing fom (equal foms keep the input order) and at most
``max_particles`` are returned.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from relion_pixer import BOX_SIZE, PARTICLE

#: Boxes per classifier batch by default: on the CPU, 64 ran fastest from 32 to 644 (``benchmarks/bench_speed.py``).
BATCH_SIZE = 64

__all__ = ["FilterResult", "extract_boxes", "classify_boxes", "classify_candidates", "filter_candidates"]


class FilterResult(NamedTuple):
    """Candidates kept by the classifier, best first.

    Attributes
    ----------
    xy : numpy.ndarray
        ``K x 2`` float64 ``(x, y)`` centres (network-scale pixels, as given).
    fom : numpy.ndarray
        ``K`` float64 figures of merit, ``P(particle)``, decreasing.
    probs : numpy.ndarray
        ``K x 3`` float32 class probabilities (background, particle, contamination).
    """

    xy: np.ndarray
    fom: np.ndarray
    probs: np.ndarray


def _box_index(xy: np.ndarray, shape: tuple[int, int], box_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corner (row, col) of each box in the image padded by ``box_size`` on every side."""
    h, w = shape
    half = box_size // 2
    cx = np.floor(xy[:, 0] + 0.5).astype(np.int64)
    cy = np.floor(xy[:, 1] + 0.5).astype(np.int64)
    bad = (cx < -half) | (cx > w - 1 + half) | (cy < -half) | (cy > h - 1 + half)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{int(bad.sum())} candidate(s) lie more than half a box outside the {w} x {h} image, "
            f"e.g. (x, y) = ({xy[i, 0]:g}, {xy[i, 1]:g})"
        )
    return cy - half + box_size, cx - half + box_size


def _check_inputs(net_image: Any, xy: Any, box_size: int):
    import torch

    if isinstance(net_image, torch.Tensor):
        image = net_image.detach().to(torch.float32)
    else:
        image = torch.from_numpy(np.ascontiguousarray(np.asarray(net_image, dtype=np.float32)))
    if image.ndim != 2:
        raise ValueError(f"net_image must be a 2D image [y, x], got shape {tuple(image.shape)}")
    if image.numel() == 0:
        raise ValueError("net_image is empty")
    box_size = int(box_size)
    if box_size < 1:
        raise ValueError(f"box_size must be >= 1, got {box_size}")
    xy = np.asarray(xy, dtype=np.float64)
    if xy.size == 0:
        xy = np.zeros((0, 2), dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"xy must be an N x 2 array of (x, y), got shape {xy.shape}")
    if not np.isfinite(xy).all():
        raise ValueError("xy contains NaN or infinite coordinates")
    return image, xy, box_size


def extract_boxes(net_image: Any, xy: Any, box_size: int = BOX_SIZE):
    """Boxes centred at the candidates, zero-padded at the edges.

    The box of a centre ``(x, y)`` covers rows ``round(y) - box_size // 2`` to ``round(y) - box_size // 2 +
    box_size - 1`` (likewise columns), so the centre pixel sits at index ``box_size // 2``.

    Parameters
    ----------
    net_image : numpy.ndarray or torch.Tensor
        2D normalised network-scale image ``[y, x]``.
    xy : array_like
        ``N x 2`` ``(x, y)`` centres; each must be within half a box of the image.
    box_size : int
        Box side in pixels.

    Returns
    -------
    torch.Tensor
        ``N x 1 x box_size x box_size`` float32, on the image's device (the CPU for a NumPy image).
    """
    import torch

    image, xy, box_size = _check_inputs(net_image, xy, box_size)
    padded = torch.nn.functional.pad(image, (box_size, box_size, box_size, box_size))
    return _gather(padded, *_box_index(xy, tuple(image.shape), box_size), box_size)


def _gather(padded, r0: np.ndarray, c0: np.ndarray, box_size: int):
    import torch

    device = padded.device
    ar = torch.arange(box_size, device=device)
    rows = torch.as_tensor(r0, device=device)[:, None, None] + ar[None, :, None]
    cols = torch.as_tensor(c0, device=device)[:, None, None] + ar[None, None, :]
    return padded[rows, cols].unsqueeze(1)


def classify_boxes(classifier, boxes, batch_size: int = BATCH_SIZE):
    """Softmax class probabilities of boxes (``N x 1 x B x B``), batch by batch, on the boxes' device.

    Returns
    -------
    torch.Tensor
        ``N x 3`` float32 probabilities (background, particle, contamination).
    """
    import torch

    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = []
    with torch.inference_mode():
        for i in range(0, len(boxes), batch_size):
            logits = classifier(boxes[i : i + batch_size])
            _check_logits(logits, len(boxes[i : i + batch_size]))
            out.append(torch.softmax(logits.float(), dim=1))
    if not out:
        return torch.zeros((0, 3), dtype=torch.float32, device=boxes.device)
    return torch.cat(out)


def _check_logits(logits, n: int) -> None:
    shape = tuple(getattr(logits, "shape", ()))
    if shape != (n, 3):
        raise ValueError(f"classifier must return N x 3 logits (background, particle, contamination); got {shape} for N={n}")


def classify_candidates(
    classifier,
    net_image: Any,
    xy: Any,
    device: Any = "cpu",
    batch_size: int = BATCH_SIZE,
    box_size: int = BOX_SIZE,
) -> np.ndarray:
    """Class probabilities of candidate centres: a box around each, through the classifier.

    Parameters are as for :func:`filter_candidates`.

    Returns
    -------
    numpy.ndarray
        ``N x 3`` float32 probabilities (background, particle, contamination), in the order of ``xy``.
    """
    image, xy, box_size = _check_inputs(net_image, xy, box_size)
    return _classify_checked(classifier, image, xy, device, batch_size, box_size)


def _classify_checked(classifier, image, xy: np.ndarray, device, batch_size: int, box_size: int) -> np.ndarray:
    """:func:`classify_candidates` after :func:`_check_inputs`."""
    import torch

    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(xy) == 0:
        return np.zeros((0, 3), dtype=np.float32)
    device = torch.device(device)
    for p in list(classifier.parameters())[:1]:
        if p.device.type != device.type or (device.index is not None and p.device.index != device.index):
            raise ValueError(f"classifier parameters are on {p.device} but device={device}; move it with .to(device)")

    r0, c0 = _box_index(xy, tuple(image.shape), box_size)
    padded = torch.nn.functional.pad(image.to(device), (box_size, box_size, box_size, box_size))
    was_training = classifier.training
    classifier.eval()
    try:
        probs = []
        with torch.inference_mode():
            for i in range(0, len(xy), batch_size):
                boxes = _gather(padded, r0[i : i + batch_size], c0[i : i + batch_size], box_size)
                probs.append(classify_boxes(classifier, boxes, batch_size))
        return torch.cat(probs).cpu().numpy().astype(np.float32)
    finally:
        classifier.train(was_training)


def filter_candidates(
    classifier,
    net_image: Any,
    xy: Any,
    threshold: float = 0.6,
    max_particles: int = 500,
    device: Any = "cpu",
    batch_size: int = BATCH_SIZE,
    box_size: int = BOX_SIZE,
) -> FilterResult:
    """Keep the candidates the 3-way classifier calls "particle", best first.

    Parameters
    ----------
    classifier : torch.nn.Module
        Maps ``N x 1 x box x box`` float32 boxes to ``N x 3`` logits (background, particle, contamination);
        its parameters must be on ``device``. It runs in eval mode (its previous mode is restored) under
        :func:`torch.inference_mode`.
    net_image : numpy.ndarray or torch.Tensor
        2D normalised network-scale image ``[y, x]`` (the segmentation net's input).
    xy : array_like
        ``N x 2`` ``(x, y)`` candidate centres in network-scale pixels (e.g. from
        :func:`relion_pixer.picking.pick_centres`).
    threshold : float
        Keep candidates with ``P(particle) >= threshold`` (in [0, 1]; default 0.6).
    max_particles : int
        At most this many picks per micrograph, the highest figures of merit; 0 means no cap.
    device : str or torch.device
        Where the boxes are cut and classified.
    batch_size : int
        Boxes per classifier call (the result does not depend on it).
    box_size : int
        Box side in pixels (default :data:`relion_pixer.BOX_SIZE`).

    Returns
    -------
    FilterResult
        ``(xy, fom, probs)`` of the kept candidates, sorted by decreasing ``fom = P(particle)``.
    """
    from relion_pixer.decide import cut

    cut(np.zeros(0), threshold, max_particles)  # check the settings before the classifier runs
    image, xy, box_size = _check_inputs(net_image, xy, box_size)
    probs_np = _classify_checked(classifier, image, xy, device, batch_size, box_size)
    fom = probs_np[:, PARTICLE].astype(np.float64)
    keep, _ = cut(fom, threshold, max_particles)
    return FilterResult(xy[keep].copy(), fom[keep], probs_np[keep])
