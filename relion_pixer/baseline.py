"""A Laplacian-of-Gaussian blob picker: the classical baseline the benchmarks compare PIXER with.

Works on a normalised network-scale image (:func:`relion_pixer.preprocess.prepare`), where particles are dark
and about :data:`relion_pixer.NET_DIAMETER_PX` pixels wide. The response is the scale-normalised LoG of the
inverted image at ``sigma = diameter / (2 sqrt 2)`` (the scale at which a disc of that diameter responds most);
picks are its local maxima at least ``min_distance`` apart, above a threshold in robust standard deviations of
the response.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

from relion_pixer import NET_DIAMETER_PX

__all__ = ["log_response", "log_pick"]


def log_response(net_image: np.ndarray, diameter_px: float = NET_DIAMETER_PX) -> np.ndarray:
    """Scale-normalised LoG response of the inverted image, standardised by its median and MAD."""
    sigma = diameter_px / (2.0 * np.sqrt(2.0))
    resp = sigma**2 * scipy.ndimage.gaussian_laplace(np.asarray(net_image, np.float32), sigma)
    # particles are dark: a dark blob gives a positive LoG, so no sign flip is needed
    med = float(np.median(resp))
    mad = 1.4826 * float(np.median(np.abs(resp - med))) or 1.0
    return ((resp - med) / mad).astype(np.float32)


def log_pick(
    net_image: np.ndarray,
    diameter_px: float = NET_DIAMETER_PX,
    threshold: float = 3.0,
    min_distance: float | None = None,
    margin: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick blobs: returns ``(xy, score)`` sorted by decreasing score (score = LoG response in robust sd).

    Picks closer than ``margin`` pixels to the edge are dropped (default: PIXER's,
    :data:`relion_pixer.pipeline.MARGIN_PER_DIAMETER` diameters).
    """
    from relion_pixer.pipeline import MARGIN_PER_DIAMETER

    resp = log_response(net_image, diameter_px)
    margin = MARGIN_PER_DIAMETER * diameter_px if margin is None else float(margin)
    dist = int(round(min_distance if min_distance is not None else 0.8 * diameter_px))
    size = 2 * max(1, dist // 2) + 1
    peaks = (resp == scipy.ndimage.maximum_filter(resp, size=size, mode="nearest")) & (resp >= threshold)
    h, w = resp.shape
    peaks[: int(np.ceil(margin)), :] = peaks[h - int(np.ceil(margin)) :, :] = False
    peaks[:, : int(np.ceil(margin))] = peaks[:, w - int(np.ceil(margin)) :] = False
    rows, cols = np.nonzero(peaks)
    score = resp[rows, cols]
    order = np.argsort(-score, kind="stable")
    rows, cols, score = rows[order], cols[order], score[order]
    # greedy suppression of plateaus and near neighbours the square filter let through
    xy = np.stack([cols, rows], 1).astype(np.float64)
    keep = np.zeros(len(xy), dtype=bool)
    for i in range(len(xy)):
        kept = xy[keep]
        keep[i] = not len(kept) or bool(np.hypot(*(kept - xy[i]).T).min() >= dist)
    return xy[keep], score[keep].astype(np.float64)
