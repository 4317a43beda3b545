"""Grid-based local-maximum picking: from a particle-probability map to particle centres.

The PIXER picking step (Zhang et al., BMC Bioinformatics 2019), done on a map at the network's scale:

1. **Score.** The probability map is correlated with a normalised, particle-sized Gaussian ``W``
   (``sigma = diameter / 6`` by default, so that ``+-3 sigma`` spans one particle diameter). A pixel's score is
   the Gaussian-weighted fraction of its particle-sized neighbourhood that the network calls "particle": about
   0.99 at the centre of a fully covered disc, near 0 on background, about 0.5 at the rim of a particle.
   Edges are handled by reflecting the map (``scipy.ndimage`` ``mode="reflect"``), so a particle cut by the
   border still scores as high as a whole one, its peak pulled toward the border (``edge="constant"`` smooths
   with zeros beyond the edge instead; measured and not made the default: ``benchmarks/tune_defaults.py``).
   Large kernels go through a real FFT, small ones through a direct separable correlation.
2. **Grid.** The score map is split into cells of ``s/2 x s/2`` pixels (``s`` = particle diameter); each cell
   gives one candidate at its maximum.
3. **Climb.** Every candidate moves, in parallel, to the highest score in its search window
   (``(2h+1) x (2h+1)`` pixels, ``h = round(s/4)``: about one cell), until no candidate moves
   (at most ``max_iter`` moves). Ties keep the first maximum in row-major order and a candidate only moves
   to a strictly higher score, so the result is deterministic and, from the same score map, the same on both
   backends (the smoothing itself differs by about 1e-7 between them: cuFFT against pocketfft, float32 sums on the
   GPU's direct path; that moves a pick only where it sits on a cut's edge).
4. **Select.** Converged duplicates merge. A peak is kept when it rises above its window by more than 0.1 % of
   its score (a flat plateau, e.g. a constant map, has no peak), its score is at least ``threshold``, and its centre lies at least ``margin_px``
   inside the image. Of peaks closer than ``min_distance_px`` the higher score is kept (exact greedy
   non-maximum suppression between *peaks*, not between a peak and its neighbour's slope; that is what keeps
   touching particles). Positions are refined to sub-pixel precision by a parabola through the peak and its
   4-neighbours (at most half a pixel).

Two backends share one interface: NumPy/SciPy on the CPU (vectorised over candidates), and CuPy on a CUDA
device (FFT smoothing with cuFFT and a ``RawKernel`` climbing step, one thread per candidate; a CUDA torch
tensor is read through DLPack without a copy). Only the final peaks (a few hundred numbers) come back to the
host, where selection is shared by both backends.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import warnings
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "DEFAULT_THRESHOLD",
    "SIGMA_PER_DIAMETER",
    "MIN_DISTANCE_PER_DIAMETER",
    "EDGE",
    "EDGES",
    "PickResult",
    "pick_centres",
    "adaptive_threshold",
    "score_map",
    "gaussian_kernel1d",
]

#: Default minimum score (Gaussian-smoothed probability) of a pick. A particle-covered neighbourhood scores
#: about 0.99, background about 0; 0.5 means "the particle-sized neighbourhood is more particle than not".
#: It is deliberately permissive: the 3-way classifier (:mod:`relion_pixer.classify`) filters the picks next.
DEFAULT_THRESHOLD = 0.5

#: Default Gaussian sigma, as a fraction of the particle diameter (``+-3 sigma`` spans one diameter).
SIGMA_PER_DIAMETER = 1.0 / 6.0

#: Default minimum distance between picks, as a fraction of the particle diameter (as RELION's usual
#: "minimum inter-particle distance" of half a diameter): touching particles, whose centres are about one
#: diameter apart, are both kept.
MIN_DISTANCE_PER_DIAMETER = 0.5

#: How the map is extended beyond its edges when it is smoothed: ``"reflect"`` (mirrored, ``scipy.ndimage``
#: ``mode="reflect"``) or ``"constant"`` (zeros: nothing outside the micrograph is particle).
EDGES = ("reflect", "constant")

#: The default of :data:`EDGES`.
EDGE = "reflect"

#: The Gaussian is truncated at this many sigmas.
TRUNCATE = 4.0

#: Kernels with a radius above this many pixels are applied through an FFT, smaller ones directly.
_FFT_MIN_RADIUS = 6

_BACKENDS = ("auto", "numpy", "cupy")

#: A peak must rise above the lowest score of its search window by this fraction of its own score
#: (so that a plateau, flat up to floating-point rounding, gives no pick).
_RISE_FRACTION = 1e-3
#: ... and by this fraction of the map's largest absolute score (float32 FFT rounding is ~1e-7 of it).
_NOISE_FRACTION = 1e-5


class PickResult(NamedTuple):
    """Picked centres, best first.

    Attributes
    ----------
    xy : numpy.ndarray
        ``N x 2`` float64, ``(x, y)`` = (column, row), 0-based pixel positions in the probability map.
    score : numpy.ndarray
        ``N`` float64 scores (smoothed probability at the peak), in decreasing order.
    """

    xy: np.ndarray
    score: np.ndarray


# ----------------------------------------------------------------------------------------------------------
# public functions


def gaussian_kernel1d(sigma: float, truncate: float = TRUNCATE) -> np.ndarray:
    """Sampled, normalised 1D Gaussian of radius ``int(truncate * sigma + 0.5)`` (as ``scipy.ndimage``).

    Parameters
    ----------
    sigma : float
        Standard deviation in pixels (> 0).
    truncate : float
        Radius in sigmas.

    Returns
    -------
    numpy.ndarray
        float64 weights of length ``2 * radius + 1``, summing to 1.
    """
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be positive and finite, got {sigma!r}")
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / float(sigma)) ** 2)
    return k / k.sum()


def score_map(prob_map: Any, diameter_px: float, sigma: float | None = None, backend: str = "auto",
              edge: str | None = None) -> Any:
    """The picking score: ``prob_map`` correlated with a normalised Gaussian (edges reflected by default).

    Parameters
    ----------
    prob_map : numpy.ndarray or torch.Tensor
        2D probability map, values in [0, 1].
    diameter_px : float
        Particle diameter in pixels of the map.
    sigma : float, optional
        Gaussian sigma in pixels; default ``diameter_px / 6``; 0 means no smoothing.
    backend : {"auto", "numpy", "cupy"}
        As in :func:`pick_centres`.
    edge : {"reflect", "constant"}
        As in :func:`pick_centres`.

    Returns
    -------
    numpy.ndarray or cupy.ndarray
        float32 score map of the same shape (a CuPy array on the CuPy backend).
    """
    xp, arr = _as_backend_array(prob_map, backend)
    diameter_px, sigma = _check_diameter_sigma(diameter_px, sigma)
    edge = _check_edge(edge)
    with _on_device(arr, xp):
        _check_map(arr, xp)
        return _smooth(arr, sigma, xp, edge)


def pick_centres(
    prob_map: Any,
    diameter_px: float,
    min_distance_px: float | None = None,
    threshold: float | None = DEFAULT_THRESHOLD,
    margin_px: float = 0.0,
    backend: str = "auto",
    sigma: float | None = None,
    *,
    max_iter: int = 1000,
    subpixel: bool = True,
    edge: str | None = None,
) -> PickResult:
    """Particle centres from a particle-probability map by grid-based local maximum (PIXER).

    Parameters
    ----------
    prob_map : numpy.ndarray or torch.Tensor (CPU or CUDA) or cupy.ndarray
        2D map ``[y, x]`` of P(particle), values in [0, 1], at the network's scale. Any shape.
    diameter_px : float
        Particle diameter ``s`` in pixels of the map (:data:`relion_pixer.NET_DIAMETER_PX` at network scale).
        Sets the Gaussian, the grid cells (``round(s/2)``) and the search window (half-width ``round(s/4)``).
    min_distance_px : float, optional
        Of two picks closer than this (centre to centre, pixels), only the higher-scoring one is kept.
        Default ``0.5 * diameter_px``; 0 disables the suppression.
    threshold : float or None
        Minimum score of a pick, on the smoothed map (default :data:`DEFAULT_THRESHOLD` = 0.5). None keeps
        every peak.
    margin_px : float
        Keep a pick only when its centre is at least this far inside the image, i.e.
        ``margin <= x <= W - 1 - margin`` and likewise for y. 0 (default) keeps every centre inside the image;
        ``box_size / 2`` keeps only picks whose whole box fits.
    backend : {"auto", "numpy", "cupy"}
        "auto" uses CuPy for CUDA tensors and CuPy arrays, NumPy/SciPy otherwise. "numpy" copies a CUDA
        tensor to the host; "cupy" copies a host map to the current CUDA device.
    sigma : float, optional
        Gaussian sigma in pixels; default ``diameter_px / 6``. 0 scores the map as it is.
    max_iter : int
        Bound on the climbing moves of one candidate; a candidate still moving after it is dropped.
    subpixel : bool
        Refine each peak by a parabola through its 4-neighbours (by at most half a pixel).
    edge : {"reflect", "constant"} or None
        How the map is extended beyond its edges for the smoothing (:data:`EDGES`; None: :data:`EDGE`).
        Reflected, a particle cut by the border scores as high as a whole one but its peak is pulled toward its
        mirror image, outward; with zeros its peak stays near the centre of what is visible of it.

    Returns
    -------
    PickResult
        ``(xy, score)``: numpy arrays, ``xy`` ``N x 2`` float64 ``(x, y)``, ``score`` ``N`` float64, sorted by
        decreasing score.

    Raises
    ------
    ValueError
        Map not 2D or with non-finite values, non-positive diameter, negative distance, margin or sigma,
        unknown backend.
    ImportError
        The CuPy backend was asked for explicitly and CuPy is not installed.

    Warns
    -----
    RuntimeWarning
        Once per process, when "auto" meets a CUDA map and CuPy is not installed, or is installed but cannot
        compile or launch its kernels (no CUDA toolkit for NVRTC, a driver too old for the device): the climb then
        runs on the CPU, with the same result, instead of failing the job.

    Notes
    -----
    The coordinates are in pixels of ``prob_map`` (network scale for the pipeline: map them back with
    :func:`relion_pixer.preprocess.to_original`). Because the map is reflected at its edges, a particle whose
    centre lies within about a quarter diameter of the border is picked on the border; use ``margin_px`` to
    drop picks whose box would leave the micrograph. Along an axis where the peak is on the border, no
    sub-pixel refinement is done.
    """
    diameter_px, sigma = _check_diameter_sigma(diameter_px, sigma)
    if min_distance_px is None:
        min_distance_px = MIN_DISTANCE_PER_DIAMETER * diameter_px
    min_distance_px = float(min_distance_px)
    if not (min_distance_px >= 0 and math.isfinite(min_distance_px)):
        raise ValueError(f"min_distance_px must be >= 0 and finite, got {min_distance_px!r}")
    margin_px = float(margin_px)
    if not (margin_px >= 0 and math.isfinite(margin_px)):
        raise ValueError(f"margin_px must be >= 0 and finite, got {margin_px!r}")
    if threshold is not None:
        threshold = float(threshold)
        if math.isnan(threshold):
            raise ValueError("threshold must not be NaN")
    edge = _check_edge(edge)
    max_iter = int(max_iter)
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")

    cell = max(1, int(round(diameter_px / 2.0)))
    half = max(1, int(round(diameter_px / 4.0)))
    if backend == "auto" and _cupy_wanted(prob_map):
        try:
            return _pick(prob_map, backend, diameter_px, sigma, cell, half, max_iter, threshold, subpixel, margin_px,
                         min_distance_px, edge)
        except (ValueError, TypeError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - CuPy imports but cannot compile or launch: climb on the CPU
            _cupy_broken(exc)
    return _pick(prob_map, backend, diameter_px, sigma, cell, half, max_iter, threshold, subpixel, margin_px,
                 min_distance_px, edge)


def _pick(prob_map, backend, diameter_px, sigma, cell, half, max_iter, threshold, subpixel, margin_px,
          min_distance_px, edge) -> PickResult:
    """:func:`pick_centres` after its arguments are checked."""
    xp, arr = _as_backend_array(prob_map, backend)
    height, width = arr.shape if arr.ndim == 2 else (0, 0)
    with _on_device(arr, xp):
        _check_map(arr, xp)
        if arr.size == 0:
            return _empty_result()
        score = _smooth(arr, sigma, xp, edge)
        if xp is np:
            rows, cols, peak_score, raised, offset = _peaks_numpy(score, cell, half, max_iter)
        else:
            rows, cols, peak_score, raised, offset = _peaks_cupy(score, cell, half, max_iter)

    keep = raised
    if threshold is not None:
        keep &= peak_score >= threshold
    rows, cols, peak_score, offset = rows[keep], cols[keep], peak_score[keep], offset[keep]
    xy = np.stack([cols, rows], axis=1).astype(np.float64)
    if subpixel:
        xy += offset
    inside = (
        (xy[:, 0] >= margin_px)
        & (xy[:, 0] <= width - 1 - margin_px)
        & (xy[:, 1] >= margin_px)
        & (xy[:, 1] <= height - 1 - margin_px)
    )
    xy, peak_score, flat = xy[inside], peak_score[inside], (rows * width + cols)[inside]
    # best first; ties broken by position (row-major) so that the order is deterministic
    order = np.lexsort((flat, -peak_score))
    xy, peak_score = xy[order], peak_score[order]
    if min_distance_px > 0 and len(xy) > 1:
        kept = _greedy_suppression(xy, min_distance_px)
        xy, peak_score = xy[kept], peak_score[kept]
    return PickResult(np.ascontiguousarray(xy, dtype=np.float64), peak_score.astype(np.float64))


# ----------------------------------------------------------------------------------------------------------
# input handling


#: Quantile of a micrograph's candidate scores that :func:`adaptive_threshold` takes as its typical particle score.
ADAPTIVE_QUANTILE = 75.0


def adaptive_threshold(
    scores: np.ndarray, floor: float, relative: float, quantile: float = ADAPTIVE_QUANTILE, odds: float = 0.0
) -> float:
    """A micrograph's own score threshold: ``max(floor, relative * q, odds cut)``.

    ``q`` is the ``quantile`` (percent) of the candidate ``scores`` at or above ``floor``: a typical particle's
    score on this micrograph. On clean data particles score near 1, so faint specks below ``relative`` of that are
    dropped; on very noisy data every particle scores low, and the threshold falls with them down to ``floor``.

    The odds cut asks the same in odds, ``s / (1 - s)``: a candidate needs at least ``odds`` times the typical
    candidate's odds. Near 1 odds stretch: with ``q`` = 0.975 (odds 39) ``odds`` 0.05 cuts at 0.66, where
    ``relative`` would need 0.68 to cut as high; with ``q`` = 0.3 the same ``odds`` cuts at 0.02, below any useful
    ``relative`` cut. So it drops the half-confident specks of clean micrographs and leaves noisy ones alone.

    Parameters
    ----------
    scores : numpy.ndarray
        Scores of the candidates (:func:`pick_centres` with ``threshold=floor``), in [0, 1].
    floor : float
        Lowest threshold.
    relative : float
        Fraction of the typical score a candidate needs; 0 turns this cut off.
    quantile : float
        Which quantile of the scores is "typical", in percent.
    odds : float
        Fraction of the typical candidate's odds a candidate needs; 0 turns this cut off.

    Returns
    -------
    float
        The threshold (``floor`` when no score reaches it).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    scores = scores[scores >= floor]
    if not len(scores) or (relative <= 0 and odds <= 0):
        return float(floor)
    q = float(np.percentile(scores, quantile))
    cut = max(float(floor), relative * q)
    if odds > 0:  # the score s whose odds s / (1 - s) are odds * q / (1 - q); 1 when q is 1
        cut = max(cut, odds * q / (odds * q + (1.0 - q)))
    return float(cut)


def _empty_result() -> PickResult:
    return PickResult(np.zeros((0, 2), dtype=np.float64), np.zeros(0, dtype=np.float64))


def _check_diameter_sigma(diameter_px: float, sigma: float | None) -> tuple[float, float]:
    try:
        diameter_px = float(diameter_px)
    except (TypeError, ValueError):
        raise ValueError(f"diameter_px must be a positive number, got {diameter_px!r}") from None
    if not (diameter_px > 0 and math.isfinite(diameter_px)):
        raise ValueError(f"diameter_px must be positive and finite, got {diameter_px!r}")
    sigma = SIGMA_PER_DIAMETER * diameter_px if sigma is None else float(sigma)
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be >= 0 and finite, got {sigma!r}")
    return diameter_px, sigma


def _is_torch(x: Any) -> bool:
    return "torch" in sys.modules and isinstance(x, sys.modules["torch"].Tensor)


def _is_cupy(x: Any) -> bool:
    return "cupy" in sys.modules and isinstance(x, sys.modules["cupy"].ndarray)


def _summary(exc: BaseException) -> str:
    """``"Type: first line of the message"`` (the type alone for an empty message), for warnings and notes."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}".rstrip(": ")


def _import_cupy():
    """``import cupy``; any failure (absent, or an installation that breaks on import: a CuPy built for another NumPy
    or CUDA) as an ImportError that says why."""
    try:
        import cupy
    except Exception as exc:  # noqa: BLE001 - re-raised as ImportError: every caller falls back on it
        raise ImportError(
            f"the CuPy picking backend needs a working cupy (pip install 'relion-pixer[gpu]'); import cupy failed "
            f"({_summary(exc)}); use backend='numpy' or a CPU map instead"
        ) from exc
    return cupy


@functools.cache
def _cupy_import_error() -> str | None:
    """Why CuPy does not import here (``"ModuleNotFoundError: ..."``), or None when it does (asked once per process: a
    failed import would search ``sys.path`` per micrograph)."""
    try:
        _import_cupy()
    except ImportError as exc:
        return _summary(exc.__cause__ or exc)
    return None


def _cupy_available() -> bool:
    """Whether CuPy imports (:func:`_cupy_import_error`)."""
    return _cupy_import_error() is None


_WARNED: set = set()

#: Why CuPy cannot run in this process (set by the first failure to compile or launch), or None.
_CUPY_BROKEN: str | None = None


def _cupy_wanted(prob_map: Any) -> bool:
    """Whether the "auto" backend would run on CuPy: a CUDA tensor or a CuPy array, and CuPy usable so far."""
    if _CUPY_BROKEN is not None:
        return False
    if _is_cupy(prob_map):
        return True
    return _is_torch(prob_map) and prob_map.device.type == "cuda" and _cupy_available()


def _cupy_broken(exc: BaseException) -> None:
    """Remember that CuPy cannot run here and say so once; the "auto" backend uses NumPy from now on."""
    global _CUPY_BROKEN
    _CUPY_BROKEN = _summary(exc)
    _warn_once(f"CuPy is installed but cannot compile or launch its kernels here ({_CUPY_BROKEN}): the local-maximum "
               "search runs on the CPU from now on; segmentation and classification stay on the GPU")


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _as_backend_array(prob_map: Any, backend: str):
    """Return ``(xp, array)``: the array module and the map as a float32 array of it (no copy if possible)."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if _is_torch(prob_map):
        t = prob_map.detach()
        if t.dtype != sys.modules["torch"].float32:
            t = t.float()  # also half / bfloat16 / bool, which NumPy or DLPack may not take
        on_cuda = t.device.type == "cuda"
        if backend == "auto" and on_cuda and _CUPY_BROKEN is not None:
            return np, _float32(t.cpu().numpy(), np)
        if backend == "auto" and on_cuda and not _cupy_available():
            # torch has CUDA but CuPy (the optional [gpu] extra) is absent or broken: climb on the CPU, not fail
            why = _cupy_import_error()
            _warn_once(("CuPy is not installed (pip install 'relion-pixer[gpu]')"
                        if why.startswith("ModuleNotFoundError") else f"CuPy is installed but does not import ({why})")
                       + ": the local-maximum search runs on the CPU; segmentation and classification stay on the GPU")
            return np, _float32(t.cpu().numpy(), np)
        if backend == "cupy" or (backend == "auto" and on_cuda):
            cupy = _import_cupy()
            if on_cuda:
                with cupy.cuda.Device(t.device.index or 0):
                    arr = cupy.from_dlpack(t)  # zero-copy view of the tensor's memory
                    return cupy, _float32(arr, cupy)
            return cupy, _float32(cupy.asarray(t.numpy()), cupy)
        return np, _float32(t.cpu().numpy(), np)
    if _is_cupy(prob_map):
        if backend == "numpy" or (backend == "auto" and _CUPY_BROKEN is not None):
            return np, _float32(prob_map.get(), np)
        cupy = sys.modules["cupy"]
        with prob_map.device:
            return cupy, _float32(prob_map, cupy)
    arr = np.asarray(prob_map)
    if backend == "cupy":
        cupy = _import_cupy()
        return cupy, _float32(cupy.asarray(arr), cupy)
    return np, _float32(arr, np)


def _on_device(arr, xp):
    """Context that makes the array's CUDA device current (CuPy), or does nothing (NumPy)."""
    return contextlib.nullcontext() if xp is np else arr.device


def _float32(arr, xp):
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"prob_map must be real-valued, got dtype {arr.dtype}")
    return xp.ascontiguousarray(arr, dtype=xp.float32)


def _check_map(arr, xp) -> None:
    if arr.ndim != 2:
        raise ValueError(f"prob_map must be 2D [y, x], got shape {tuple(arr.shape)}")
    if arr.size and not bool(xp.isfinite(arr).all()):
        raise ValueError("prob_map contains NaN or infinite values")


# ----------------------------------------------------------------------------------------------------------
# smoothing


def _fft_workers() -> int:
    torch = sys.modules.get("torch")
    if torch is not None:
        return max(1, torch.get_num_threads())
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _check_edge(edge: str | None) -> str:
    """``edge``, or :data:`EDGE` (read at each call) for None; a ValueError for anything not in :data:`EDGES`."""
    edge = EDGE if edge is None else edge
    if edge not in EDGES:
        raise ValueError(f"edge must be one of {EDGES}, got {edge!r}")
    return edge


def _smooth(arr, sigma: float, xp, edge: str):
    """Correlate with the normalised Gaussian, the map extended beyond its edges as ``edge`` says (``"reflect"``:
    ``scipy.ndimage`` ``mode='reflect'``; ``"constant"``: zeros)."""
    if sigma == 0 or arr.size == 0:
        return arr.copy()
    k = gaussian_kernel1d(sigma)
    radius = len(k) // 2
    if radius <= _FFT_MIN_RADIUS:
        if xp is np:
            import scipy.ndimage as ndi
        else:
            import cupyx.scipy.ndimage as ndi
        kk = xp.asarray(k, dtype=xp.float64)
        out = ndi.correlate1d(arr, kk, axis=0, mode=edge, output=xp.float32)
        return ndi.correlate1d(out, kk, axis=1, mode=edge, output=xp.float32)
    return _fft_smooth(arr, k, xp, edge)


def _fft_smooth(arr, k: np.ndarray, xp, edge: str):
    import scipy.fft

    radius = len(k) // 2
    height, width = arr.shape
    # numpy "symmetric" == scipy.ndimage "reflect"; numpy "constant" pads zeros, as scipy.ndimage "constant"
    padded = xp.pad(arr, radius, mode="symmetric" if edge == "reflect" else "constant")
    n0 = scipy.fft.next_fast_len(height + 2 * radius, real=True)
    n1 = scipy.fft.next_fast_len(width + 2 * radius, real=True)

    def wrapped(n: int) -> np.ndarray:
        # the kernel with its centre at index 0 (circular): correlation == convolution for a symmetric kernel
        w = np.zeros(n, dtype=np.float64)
        w[: radius + 1] = k[radius:]
        w[n - radius :] = k[:radius]
        return w

    ky = np.fft.fft(wrapped(n0)).real  # symmetric kernel: real transform
    kx = np.fft.rfft(wrapped(n1)).real
    transfer = np.outer(ky, kx).astype(np.float32)
    # the Gaussian's transfer function underflows to float32 denormals at high frequencies, which makes the
    # multiply and the inverse FFT many times slower: flush the negligible values to zero
    transfer[np.abs(transfer) < 1e-12] = 0.0
    transfer = xp.asarray(transfer)
    if xp is np:
        workers = _fft_workers()
        spec = scipy.fft.rfft2(padded, s=(n0, n1), workers=workers)
        spec *= transfer
        out = scipy.fft.irfft2(spec, s=(n0, n1), workers=workers)
    else:
        spec = xp.fft.rfft2(padded, s=(n0, n1))
        spec *= transfer
        out = xp.fft.irfft2(spec, s=(n0, n1))
    # outputs within `radius` of the padded array's edge wrap around; the image's own pixels do not
    return xp.ascontiguousarray(out[radius : radius + height, radius : radius + width], dtype=xp.float32)


# ----------------------------------------------------------------------------------------------------------
# candidates and climbing


def _cell_maxima(score, cell: int, xp):
    """Flat index (into ``score``) of the maximum of each ``cell x cell`` grid cell (first one on ties)."""
    height, width = score.shape
    gy, gx = -(-height // cell), -(-width // cell)
    padded = xp.full((gy * cell, gx * cell), -xp.inf, dtype=xp.float32)
    padded[:height, :width] = score
    blocks = padded.reshape(gy, cell, gx, cell).transpose(0, 2, 1, 3).reshape(gy, gx, cell * cell)
    arg = blocks.argmax(axis=2)
    rows = xp.arange(gy)[:, None] * cell + arg // cell
    cols = xp.arange(gx)[None, :] * cell + arg % cell
    return (rows * width + cols).ravel()


def _window_offsets(half: int, padded_width: int) -> np.ndarray:
    d = np.arange(-half, half + 1)
    return (d[:, None] * padded_width + d[None, :]).ravel()  # row-major over (dy, dx)


def _peak_properties(padded_flat, peaks_p, half: int, padded_width: int, scale: float, xp):
    """Score, "rises above its window" flag and sub-pixel offset (dx, dy) of peaks given as padded indices.

    ``scale`` is the largest absolute score of the map (sets the floating-point noise floor).
    """
    offs = xp.asarray(_window_offsets(half, padded_width))
    vals = padded_flat[peaks_p[:, None] + offs[None, :]]
    centre = vals[:, offs.size // 2]
    lowest = xp.where(xp.isfinite(vals), vals, xp.inf).min(axis=1)
    # FFT rounding leaves ~1e-7 ripples (relative to the map's largest value) on plateaus: a peak must rise by a
    # small fraction of its own height and clearly above that noise
    raised = (centre - lowest) > _RISE_FRACTION * xp.abs(centre) + _NOISE_FRACTION * scale

    def parabola(lo, hi):
        ok = xp.isfinite(lo) & xp.isfinite(hi)
        lo = xp.where(ok, lo, centre)
        hi = xp.where(ok, hi, centre)
        denom = lo - 2.0 * centre + hi
        safe = xp.where(denom < 0, denom, -1.0)
        d = xp.where(denom < 0, 0.5 * (lo - hi) / safe, 0.0)
        return xp.clip(d, -0.5, 0.5)

    dx = parabola(padded_flat[peaks_p - 1], padded_flat[peaks_p + 1])
    dy = parabola(padded_flat[peaks_p - padded_width], padded_flat[peaks_p + padded_width])
    return centre, raised, xp.stack([dx, dy], axis=1)


def _to_padded(flat, width: int, half: int):
    return (flat // width + half) * (width + 2 * half) + (flat % width + half)


def _from_padded(flat_p, width: int, half: int):
    pw = width + 2 * half
    return flat_p // pw - half, flat_p % pw - half


def _peaks_numpy(score: np.ndarray, cell: int, half: int, max_iter: int):
    height, width = score.shape
    padded = np.pad(score, half, mode="constant", constant_values=-np.inf)
    pw = padded.shape[1]
    flat = padded.ravel()
    offs = _window_offsets(half, pw)
    centre = offs.size // 2
    # windows as a strided view: gathering (n, K, K) windows by their corner copies whole rows at a time
    windows = np.lib.stride_tricks.sliding_window_view(padded, (2 * half + 1, 2 * half + 1))
    moving = np.unique(_to_padded(_cell_maxima(score, cell, np), width, half))
    done = []
    for _ in range(max_iter):
        if moving.size == 0:
            break
        py, px = np.divmod(moving, pw)
        vals = windows[py - half, px - half].reshape(moving.size, -1)  # row-major over (dy, dx), as offs
        j = vals.argmax(axis=1)
        moves = vals[np.arange(moving.size), j] > vals[:, centre]
        done.append(moving[~moves])
        moving = np.unique(moving[moves] + offs[j[moves]])  # converged duplicates merge as they meet
    peaks_p = np.unique(np.concatenate(done)) if done else np.zeros(0, dtype=np.int64)
    scale = float(np.abs(score).max())
    value, raised, offset = _peak_properties(flat, peaks_p, half, pw, scale, np)
    rows, cols = _from_padded(peaks_p, width, half)
    return rows, cols, value.astype(np.float64), raised, offset.astype(np.float64)


_CLIMB_SOURCE = r"""
extern "C" __global__ void climb(const float* __restrict__ score, const int height, const int width,
                                 const int half, const int max_iter, const long long* __restrict__ start,
                                 long long* __restrict__ finish, const int n)
{
    // One thread per candidate: move to the first strictly higher maximum of the (2h+1)^2 window,
    // row-major, until the candidate is the maximum of its window. finish = -1 if still moving after max_iter.
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int y = (int)(start[i] / width);
    int x = (int)(start[i] % width);
    int it = 0;
    for (; it < max_iter; ++it) {
        float best = score[(long long)y * width + x];
        int by = y, bx = x;
        const int y0 = max(y - half, 0), y1 = min(y + half, height - 1);
        const int x0 = max(x - half, 0), x1 = min(x + half, width - 1);
        for (int yy = y0; yy <= y1; ++yy) {
            const float* row = score + (long long)yy * width;
            for (int xx = x0; xx <= x1; ++xx) {
                const float v = row[xx];
                if (v > best) { best = v; by = yy; bx = xx; }
            }
        }
        if (by == y && bx == x) break;
        y = by; x = bx;
    }
    finish[i] = (it < max_iter) ? (long long)y * width + x : -1LL;
}
"""

_CLIMB_KERNELS: dict[int, Any] = {}


def _climb_kernel(cupy):
    device = cupy.cuda.Device().id
    if device not in _CLIMB_KERNELS:
        _CLIMB_KERNELS[device] = cupy.RawKernel(_CLIMB_SOURCE, "climb")
    return _CLIMB_KERNELS[device]


def _peaks_cupy(score, cell: int, half: int, max_iter: int):
    cupy = sys.modules["cupy"]
    height, width = score.shape
    start = cupy.unique(_cell_maxima(score, cell, cupy)).astype(cupy.int64)
    finish = cupy.empty_like(start)
    n = int(start.size)
    threads = 128
    _climb_kernel(cupy)(
        ((n + threads - 1) // threads,),
        (threads,),
        (score, np.int32(height), np.int32(width), np.int32(half), np.int32(min(int(max_iter), 2**31 - 1)), start,
         finish, np.int32(n)),
    )
    peaks = cupy.unique(finish)
    peaks = peaks[peaks >= 0]
    padded = cupy.pad(score, half, mode="constant", constant_values=-np.inf)
    peaks_p = _to_padded(peaks, width, half)
    scale = float(cupy.abs(score).max())
    value, raised, offset = _peak_properties(padded.ravel(), peaks_p, half, padded.shape[1], scale, cupy)
    rows, cols = _from_padded(peaks_p, width, half)
    return (
        cupy.asnumpy(rows),
        cupy.asnumpy(cols),
        cupy.asnumpy(value).astype(np.float64),
        cupy.asnumpy(raised),
        cupy.asnumpy(offset).astype(np.float64),
    )


# ----------------------------------------------------------------------------------------------------------
# suppression


def _greedy_suppression(xy: np.ndarray, min_distance: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression of points given best first (``xy[0]`` is the best).

    Exactly the sequential rule "walk down the list, keep a point unless a kept point is closer than
    ``min_distance``", computed in a few vectorised rounds over the close pairs.
    """
    from scipy.spatial import cKDTree

    n = len(xy)
    pairs = cKDTree(xy).query_pairs(min_distance, output_type="ndarray")
    if len(pairs):
        d = np.hypot(*(xy[pairs[:, 0]] - xy[pairs[:, 1]]).T)
        pairs = pairs[d < min_distance]
    if len(pairs) == 0:
        return np.arange(n)
    hi = pairs.min(axis=1)  # the better of the two (lower index = higher rank)
    lo = pairs.max(axis=1)
    undecided = np.ones(n, dtype=bool)
    kept = np.zeros(n, dtype=bool)
    suppressed = np.zeros(n, dtype=bool)
    while undecided.any():
        live = ~suppressed[hi]
        blocked = np.bincount(lo[live], minlength=n) > 0
        new = undecided & ~blocked
        kept |= new
        undecided &= ~new
        losers = lo[new[hi]]
        suppressed[losers] = True
        undecided[losers] = False
    return np.flatnonzero(kept)
