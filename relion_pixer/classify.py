"""The 3-way classifier filter: keep the candidates that the classifier calls "particle".

Each candidate centre gets a ``box_size x box_size`` box (default :data:`relion_pixer.BOX_SIZE`, two particle
diameters at network scale) cut from the *normalised network-scale* image (the image the segmentation net saw,
from :func:`relion_pixer.preprocess.prepare`). Boxes that reach past the image are zero-padded, which is the
image's median level after normalisation. The boxes go through the classifier in batches; the softmax of its
logits gives P(background), P(particle), P(contamination) in the class order of :mod:`relion_pixer`. (Measured and
not used: the candidates sharing one pass of the classifier's trunk over the whole image, :data:`CONTEXT`.)

:func:`filter_candidates`, the paper's hard veto (kept for comparison; the picking job's figure of merit is
:mod:`relion_pixer.decide`'s instead): ``fom = P(particle)`` in [0, 1], higher is better. A candidate is kept when
``fom >= threshold`` (default 0.6); the kept ones are sorted by decreasing fom (equal foms keep the input order) and
at most ``max_particles`` (default 500) are returned.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from relion_pixer import BOX_SIZE, PARTICLE

#: Boxes per classifier batch by default: on the CPU, 64 ran fastest from 32 to 644 (``benchmarks/bench_speed.py``).
BATCH_SIZE = 64
#: Candidates share one pass of the classifier's trunk over the whole image (True), instead of the trunk running on
#: each box (False): the cost grows with the image's area, not with the number of candidates. Only the head runs
#: per candidate, on the trunk's features in the box's window, the box's origin rounded to the trunk's stride (4
#: px, an eighth of a particle). Features near a box's edge then see the neighbouring image instead of the box's
#: zero padding. ``benchmarks/bench_context.py`` measured what that changes and its rule, written before the run,
#: kept the boxes: on the validation data the simulated SNR 0.01 micrographs lost 0.009 F1 (the rule allowed 0.003),
#: the real sets none (``benchmarks/results/context.json``). Nor does it save time at the usual crowding: the trunk
#: over a whole K3 micrograph costs more than its 620 candidates' boxes (0.27 against 0.19 s, measured with a
#: classifier trained with context, ``configs/experiments/context_classifier_v13.toml``, which was not shipped).
#: A classifier trained with context (:attr:`relion_pixer.models.Classifier.context`) always takes this path.
CONTEXT = False
#: Network pixels per band of :func:`_trunk_features` (the trunk's first layer holds 64 bytes a pixel), and the
#: overlap of the bands (whole strides, beyond the trunk's receptive field radius of about 15 px).
_BAND_PIXELS = 2 << 20
_BAND_MARGIN = 32
#: Batch sizes are whole multiples of this (see :func:`_classify_checked`).
_BATCH_STEP = 8

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
    """``N x C x box x box`` windows with top-left corners ``(r0, c0)`` of a ``H x W`` image (C = 1) or a ``C x H x
    W`` feature map."""
    import torch

    device = padded.device
    r0, c0 = torch.as_tensor(r0, device=device), torch.as_tensor(c0, device=device)
    if padded.ndim == 2:
        # every box of the image as a view (no copy), then the wanted ones copied out row by row
        h, w = padded.shape
        padded = padded.contiguous()
        windows = padded.as_strided((h - box_size + 1, w - box_size + 1, box_size, box_size), (w, 1, w, 1))
        return windows[r0, c0].unsqueeze(1)
    ar = torch.arange(box_size, device=device)
    rows = r0[:, None, None] + ar[None, :, None]
    cols = c0[:, None, None] + ar[None, None, :]
    return padded[:, rows, cols].permute(1, 0, 2, 3).contiguous(memory_format=torch.channels_last)


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
    from relion_pixer.models import inference_autocast

    out = []
    with torch.inference_mode():
        for i in range(0, len(boxes), batch_size):
            with inference_autocast(boxes.device):
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
    context: bool | None = None,
) -> np.ndarray:
    """Class probabilities of candidate centres: a box around each, through the classifier.

    Parameters are as for :func:`filter_candidates`; ``context`` chooses whether the candidates share one pass of
    the trunk over the image (default :data:`CONTEXT`; only for a :class:`relion_pixer.models.Classifier`).

    Returns
    -------
    numpy.ndarray
        ``N x 3`` float32 probabilities (background, particle, contamination), in the order of ``xy``.
    """
    image, xy, box_size = _check_inputs(net_image, xy, box_size)
    return _classify_checked(classifier, image, xy, device, batch_size, box_size, context)


def _classify_checked(classifier, image, xy: np.ndarray, device, batch_size: int, box_size: int,
                      context: bool | None = None) -> np.ndarray:
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

    # a classifier trained with context takes boxes with that many pixels around them
    ctx = int(getattr(classifier, "context", 0) or 0)
    side = box_size + 2 * ctx
    # corners of the boxes with their context in the image padded by box_size + ctx (= the boxes' corners in the
    # image padded by box_size)
    r0, c0 = _box_index(xy, tuple(image.shape), box_size)
    pad = box_size + ctx
    padded = torch.nn.functional.pad(image.to(device), (pad, pad, pad, pad))
    was_training = classifier.training
    classifier.eval()
    try:
        probs = []
        with torch.inference_mode():
            if _uses_context(classifier, box_size, context):
                feats, stride = _trunk_features(classifier, padded)
                n = box_size // stride
                fr, fc = (r0 + ctx + stride // 2) // stride, (c0 + ctx + stride // 2) // stride
                for i in range(0, len(xy), batch_size):
                    windows = _gather(feats, fr[i : i + batch_size], fc[i : i + batch_size], n)
                    logits = classifier.head(windows)
                    _check_logits(logits, len(windows))
                    probs.append(torch.softmax(logits.float(), dim=1))
            else:
                for i in range(0, len(xy), batch_size):
                    boxes = _gather(padded, r0[i : i + batch_size], c0[i : i + batch_size], side)
                    n = len(boxes)
                    # a short last batch is filled up to whole steps of _BATCH_STEP boxes: each new batch size
                    # costs the CPU's convolution library a few ms to set up, every micrograph anew otherwise
                    fill = min(batch_size, -(-n // _BATCH_STEP) * _BATCH_STEP) - n
                    if fill > 0:
                        boxes = torch.cat([boxes, boxes.new_zeros((fill, *boxes.shape[1:]))])
                    probs.append(classify_boxes(classifier, boxes, batch_size)[:n])
        return torch.cat(probs).cpu().numpy().astype(np.float32)
    finally:
        classifier.train(was_training)


def _uses_context(classifier, box_size: int, context: bool | None) -> bool:
    """Whether the candidates go through the classifier's trunk once per image: by default (``context`` None) for a
    classifier trained with context (:attr:`relion_pixer.models.Classifier.context`), else as :data:`CONTEXT`
    says; only for a :class:`relion_pixer.models.Classifier` of ``box_size`` boxes whose trunk stride divides the
    box."""
    from relion_pixer.models import Classifier

    if not isinstance(classifier, Classifier):
        return False
    if context is None:
        context = CONTEXT or bool(classifier.context)
    return bool(context) and classifier.box_size == box_size and box_size % classifier.trunk.stride == 0


def _trunk_features(classifier, padded):
    """The classifier's trunk on a whole (zero-padded) image, in bands of rows: ``(C x H/s x W/s features, s)``.

    The bands overlap by :data:`_BAND_MARGIN` pixels, beyond the trunk's receptive field, and start at whole
    strides, so the features equal those of the whole image at once."""
    import torch

    trunk = classifier.trunk
    s = int(trunk.stride)
    h, w = padded.shape
    # whole strides, and one more stride below and right: a box origin rounded up still has its window
    padded = torch.nn.functional.pad(padded, (0, s + (-(w + s)) % s, 0, s + (-(h + s)) % s))
    h, w = padded.shape
    band = max(s, _BAND_PIXELS // w // s * s)
    feats = None
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        a, b = max(0, y0 - _BAND_MARGIN), min(h, y1 + _BAND_MARGIN)
        out = trunk(padded[None, None, a:b].contiguous(memory_format=torch.channels_last))[0]
        if feats is None:
            feats = torch.empty((out.shape[0], h // s, w // s), dtype=out.dtype, device=out.device)
        feats[:, y0 // s : y1 // s] = out[:, (y0 - a) // s : (y1 - a) // s]
    return feats, s


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
