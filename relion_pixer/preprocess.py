"""Resample and normalise micrographs to the scale and statistics the networks expect.

The networks work at a fixed particle size (:data:`relion_pixer.NET_DIAMETER_PX` pixels). A micrograph is
Fourier-cropped (or zero-padded) so that the user's particle diameter becomes that size; coordinates map back
exactly with :func:`to_original` because Fourier resampling keeps the field of view: output pixel ``k`` sits at
input position ``k * N / M``.

Normalisation is robust to 8-bit exports, float16, gain differences, hot pixels and slow gradients: extreme pixels
are clipped before resampling (:func:`clip_outliers`), then a Gaussian high-pass
removes ice-thickness ramps and uneven illumination, then the image is standardised by its median and
median absolute deviation and clipped.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft
import scipy.ndimage

from relion_pixer import BOX_SIZE, NET_DIAMETER_PX

__all__ = [
    "scale_factor",
    "resample",
    "normalise",
    "prepare",
    "clip_outliers",
    "flat_pixels",
    "fill_flat",
    "check_particle_width",
    "check_fits",
    "to_original",
    "to_network",
    "nearest_resample",
    "cut_boxes",
    "density_map",
    "highpass",
    "disk_means",
    "darkness_at",
    "nearest_pixels",
    "values_at",
]

#: Clip normalised images at this many robust standard deviations (keeps ice blobs and hot pixels bounded).
CLIP_SIGMA = 6.0


def scale_factor(diameter_angstrom: float, angpix: float, target_px: float = NET_DIAMETER_PX) -> float:
    """Factor (output pixels per input pixel) that makes a particle ``target_px`` pixels wide.

    Parameters
    ----------
    diameter_angstrom : float
        Particle diameter in Angstrom.
    angpix : float
        Pixel size of the micrograph in Angstrom.
    target_px : float
        Particle diameter wanted after resampling, in pixels.
    """
    if not diameter_angstrom or diameter_angstrom <= 0:
        raise ValueError(f"particle diameter must be positive, got {diameter_angstrom!r} A")
    if not angpix or angpix <= 0:
        raise ValueError(f"pixel size must be positive, got {angpix!r} A/px")
    return float(target_px) * float(angpix) / float(diameter_angstrom)


#: Pixels per block of rows that :func:`resample` transforms at a time (a few MB: the block stays in cache).
_BLOCK_PIXELS = 1 << 20
#: Pixels of the sample whose mean :func:`resample` takes off before its transforms.
_MEAN_SAMPLE = 1 << 16


def _output_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    return tuple(max(1, int(round(n * factor))) for n in shape)  # type: ignore[return-value]


def resample(image: np.ndarray, factor: float, workers: int | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """Fourier-crop (``factor < 1``) or zero-pad (``factor > 1``) a 2D image.

    Parameters
    ----------
    image : numpy.ndarray
        2D image, any real dtype.
    factor : float
        Wanted output pixels per input pixel. The output shape is ``round(shape * factor)``.
    workers : int, optional
        Threads for :mod:`scipy.fft` (default: all of ``torch.get_num_threads()`` or 1).

    Returns
    -------
    out : numpy.ndarray
        Resampled float32 image.
    factors : tuple of float
        The exact factors ``(fy, fx) = out.shape / image.shape`` to map coordinates with.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {image.shape}")
    n0, n1 = image.shape
    m0, m1 = _output_shape(image.shape, factor)
    if (m0, m1) == (n0, n1):
        return image.astype(np.float32, copy=True), (1.0, 1.0)
    if workers is None:
        workers = _default_workers()
    img = image.astype(np.float32, copy=False)
    # Any constant may be taken off before the transforms and added back after (the crop is linear and keeps the
    # mean); one near the mean keeps the float32 transforms precise. A sample's mean is near enough.
    mean = float(_sample(img, _MEAN_SAMPLE).mean(dtype=np.float64))
    # rfft2 one axis at a time (the same transforms): the columns beyond the kept ones skip the second FFT. The
    # rows go through in blocks, so no image-sized temporary (mean-subtracted copy, full half spectrum) is made.
    k1 = min(n1 // 2 + 1, m1 // 2 + 1)
    spec = np.empty((n0, k1), dtype=np.result_type(img.dtype, np.complex64))
    rows = max(1, _BLOCK_PIXELS // max(1, n1))
    for r in range(0, n0, rows):
        spec[r : r + rows] = scipy.fft.rfft(img[r : r + rows] - mean, axis=1, workers=workers)[:, :k1]
    spec = scipy.fft.fft(spec, axis=0, workers=workers, overwrite_x=True)
    out_spec = np.zeros((m0, m1 // 2 + 1), dtype=spec.dtype)
    # rows: keep low frequencies from both ends; columns: the first k1 of the half spectrum
    k0 = min(n0, m0)
    lo = (k0 + 1) // 2
    hi = k0 // 2
    out_spec[:lo, :k1] = spec[:lo]
    if hi:
        out_spec[m0 - hi :, :k1] = spec[n0 - hi :]
    out = scipy.fft.irfft2(out_spec, s=(m0, m1), workers=workers)
    out *= (m0 * m1) / float(n0 * n1)
    out += mean
    return out.astype(np.float32, copy=False), (m0 / n0, m1 / n1)


#: At most about this many pixels give :func:`normalise` its median and MAD (the median of 2^18 Gaussian pixels is
#: off by about 0.002 sd).
_NORMALISE_SAMPLE = 1 << 18


def _linear_resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Linear interpolation of a 2D image (each side at least 2 px) to ``shape``, corners aligned (output pixel
    ``j`` sits at input ``j (n - 1) / (N - 1)``), as ``scipy.ndimage.zoom(order=1)`` maps it; one axis at a time."""
    out = np.asarray(image, dtype=np.float32)
    for axis, size in enumerate(shape):
        n = out.shape[axis]
        pos = np.arange(size, dtype=np.float64) * ((n - 1) / (size - 1) if size > 1 else 0.0)
        i0 = np.minimum(pos.astype(np.int64), n - 2)
        w = (pos - i0).astype(np.float32)
        lo, hi = np.take(out, i0, axis=axis), np.take(out, i0 + 1, axis=axis)
        w = w.reshape((-1, 1) if axis == 0 else (1, -1))
        out = lo + (hi - lo) * w
    return out


def normalise(image: np.ndarray, highpass_sigma: float | None = 2.0 * NET_DIAMETER_PX,
              exclude: np.ndarray | None = None) -> np.ndarray:
    """High-pass and robustly standardise an image (median 0, robust sd 1, clipped).

    Parameters
    ----------
    image : numpy.ndarray
        2D image at network scale.
    highpass_sigma : float or None
        Sigma, in pixels, of the Gaussian whose blur is subtracted (None: no high-pass).
    exclude : numpy.ndarray, optional
        Boolean mask of the image's shape: pixels left out of the median and the spread (a flat region,
        :func:`flat_pixels`), unless they are nearly all of it.
    """
    img = np.asarray(image, dtype=np.float32)
    if highpass_sigma:
        img = highpass(img, highpass_sigma)
    if exclude is not None:  # the image and its mask both C-contiguous, so sampled at the same pixels
        img = np.ascontiguousarray(img)
    # median and MAD of at most _NORMALISE_SAMPLE pixels spread over the image (all of a smaller image)
    sample = _sample(img, _NORMALISE_SAMPLE)
    if exclude is not None:
        kept = ~_sample(np.ascontiguousarray(exclude, dtype=bool), _NORMALISE_SAMPLE)
        if kept.sum() >= 0.01 * len(sample):
            sample = sample[kept]
    med = float(np.median(sample))
    mad = float(np.median(np.abs(sample - med)))
    scale = 1.4826 * mad
    if not np.isfinite(scale) or scale <= 0:
        scale = float(img.std())
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError("image has no contrast (constant after high-pass)")
    out = (img - med) / scale
    np.clip(out, -CLIP_SIGMA, CLIP_SIGMA, out=out)
    return out.astype(np.float32, copy=False)


def highpass(image: np.ndarray, sigma: float) -> np.ndarray:
    """A float32 image minus its Gaussian blur of sd ``sigma`` pixels (mode ``reflect``), the blur taken on a 4x-binned
    copy and interpolated back: the same low-pass at a sixteenth of the cost (to a small fraction of the blur's
    own variation, for the wide sigmas of :func:`normalise` and the second pass's darkness)."""
    img = np.asarray(image, dtype=np.float32)
    small = img[: img.shape[0] // 4 * 4, : img.shape[1] // 4 * 4]
    if small.size and min(small.shape) >= 8:
        binned = small.reshape(small.shape[0] // 4, 4, small.shape[1] // 4, 4).mean(axis=(1, 3))
        low = scipy.ndimage.gaussian_filter(binned, sigma / 4.0, mode="reflect")
        low = _linear_resize(low, img.shape)
    else:
        low = scipy.ndimage.gaussian_filter(img, sigma, mode="reflect")
    return img - low


#: Outlier pixels (hot pixels, hot rows and columns, small defects) are clipped before resampling spreads them as
#: Fourier ringing: to the range between these percentiles of the micrograph, widened by ``OUTLIER_WIDEN`` times
#: its width on each side. Defects covering less than 1 % of the micrograph cannot move the percentiles.
OUTLIER_PERCENTILES = (1.0, 99.0)
OUTLIER_WIDEN = 3.0
#: At most about this many pixels estimate those percentiles.
_OUTLIER_SAMPLE = 1 << 18


def _sample(image: np.ndarray, n: int) -> np.ndarray:
    """About ``n`` pixels spread over every row and column: a flat stride coprime with the row length, so the
    sampled columns shift from row to row (a non-contiguous image: a regular grid of its rows and columns)."""
    if not image.flags.c_contiguous:
        k = max(1, int(math.sqrt(image.size / max(1, n))))
        return image[::k, ::k].reshape(-1)
    flat = image.reshape(-1)
    step = max(1, flat.size // n)
    while step > 1 and math.gcd(step, image.shape[1]) != 1:
        step += 1
    return flat[::step]


def value_range(image: np.ndarray) -> tuple[float, float]:
    """``(min, max)`` of an image in one pass (NaN where it has NaN; torch's threads for float32 and float64)."""
    image = np.asarray(image)
    if image.dtype in (np.float32, np.float64) and image.size:
        try:
            import torch

            lo, hi = torch.aminmax(torch.from_numpy(image))
            return float(lo), float(hi)
        except (TypeError, ValueError, RuntimeError):  # e.g. negative strides: the NumPy way below
            pass
    return float(image.min()), float(image.max())


#: A micrograph whose typical spread (the width between the :data:`OUTLIER_PERCENTILES`) lies outside this range is
#: shifted by its median and scaled by a power of two before anything else: float32 sums and variances overflow near
#: 1e38 (the micrograph had read as "no contrast") and lose precision near 1e-38. Real micrographs lie far inside it.
WORKABLE_SPREAD = (1e-15, 1e15)


def clip_outliers(image: np.ndarray) -> np.ndarray:
    """The image with extreme pixels clipped (float32), or the image itself when it has none.

    The bounds are ``lo - k w`` and ``hi + k w``, where ``lo`` and ``hi`` are the :data:`OUTLIER_PERCENTILES`,
    ``w = hi - lo`` and ``k`` = :data:`OUTLIER_WIDEN`: about +-16 sd for Gaussian noise, so ordinary pixels, 8-bit
    exports, dark ice or carbon and strong particles keep their values, while hot pixels, rows or columns thousands
    of sd out no longer ring across the whole resampled micrograph. An image whose spread ``w`` lies outside
    :data:`WORKABLE_SPREAD` is also shifted by its median and scaled by a power of two so that ``w`` is about 1
    (the picking normalises every image, so this changes nothing else).

    Raises
    ------
    ValueError
        If the image has NaN or infinite pixels (they would spread over the whole image in the Fourier crop).
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {image.shape}")
    lo_all, hi_all = value_range(image)
    if not (np.isfinite(lo_all) and np.isfinite(hi_all)):
        bad = int(np.count_nonzero(~np.isfinite(image)))
        raise ValueError(f"image has {bad} non-finite pixel{'s' if bad != 1 else ''} (NaN or inf)")
    sample = _sample(image, _OUTLIER_SAMPLE).astype(np.float64)
    lo, hi = np.percentile(sample, OUTLIER_PERCENTILES)
    width = hi - lo
    if width > 0 and not WORKABLE_SPREAD[0] <= width <= WORKABLE_SPREAD[1]:
        shift, scale = float(np.median(sample)), 2.0 ** -round(math.log2(width))
        image = ((image.astype(np.float64) - shift) * scale).astype(np.float32)
        return clip_outliers(image)
    lo, hi = lo - OUTLIER_WIDEN * width, hi + OUTLIER_WIDEN * width
    if lo_all >= lo and hi_all <= hi:
        return image
    out = image.astype(np.float32, copy=True)
    np.clip(out, np.float32(lo), np.float32(hi), out=out)
    return out


#: A micrograph with at least this share of its pixels in flat regions (areas of one value: a blank border, a masked
#: or zero-padded area; :func:`flat_pixels`) has them filled with its typical value and left out of its normalisation:
#: otherwise they make its spread look small, and the networks see the rest saturated.
FLAT_SHARE = 0.01
#: Pixels of a micrograph sampled to decide whether it has flat regions.
_FLAT_SAMPLE = 1 << 14


def flat_pixels(image: np.ndarray) -> np.ndarray | None:
    """The pixels of ``image`` in flat regions, or None where they are under :data:`FLAT_SHARE` of it.

    A pixel is flat when it equals the two pixels on each side of it, across and down. Noise does not do this, even
    in an 8-bit export of hardly any contrast (with a spread of one grey level, about one pixel in 5000 does); a
    constant area does everywhere. Flat regions are then the connected areas of flat pixels that are each at least
    :data:`FLAT_SHARE` of the micrograph, grown by two pixels to their own edge: the iso-grey patches of a clean,
    smooth 8-bit export are small pieces. About :data:`_FLAT_SAMPLE` pixels decide first, so an ordinary micrograph
    costs a few gathers.
    """
    img = np.asarray(image)
    h, w = img.shape
    if h < 5 or w < 5:
        return None
    flat = img.reshape(-1) if img.flags.c_contiguous else np.ascontiguousarray(img).reshape(-1)
    step = max(1, (h - 4) * w // _FLAT_SAMPLE)
    idx = np.arange(2 * w + 2, (h - 2) * w - 2, step)
    idx = idx[(idx % w >= 2) & (idx % w < w - 2)]
    if not len(idx):
        return None
    v = flat[idx]
    same = np.ones(len(idx), dtype=bool)
    for offset in (1, 2, w, 2 * w):
        same &= (v == flat[idx - offset]) & (v == flat[idx + offset])
    if same.mean() < FLAT_SHARE:
        return None
    c = img[2:-2, 2:-2]
    core = np.ones(c.shape, dtype=bool)
    for dy, dx in ((0, 1), (0, 2), (1, 0), (2, 0)):
        core &= (c == img[2 - dy:h - 2 - dy, 2 - dx:w - 2 - dx]) & (c == img[2 + dy:h - 2 + dy, 2 + dx:w - 2 + dx])
    mask = np.zeros((h, w), dtype=bool)
    mask[2:-2, 2:-2] = core
    # large areas of one value (a value change leaves a gap of pixels that are not flat between two areas): a blank
    # or padded region, not the small iso-grey patches of a clean 8-bit export
    regions, n = scipy.ndimage.label(mask)
    if n:
        sizes = np.bincount(regions.reshape(-1))
        sizes[0] = 0
        mask = (sizes >= FLAT_SHARE * h * w)[regions]
    mask = scipy.ndimage.binary_dilation(mask, structure=np.ones((5, 5), dtype=bool))
    return mask if mask.mean() >= FLAT_SHARE else None


def fill_flat(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(image, flat)``: the image with its flat regions (:func:`flat_pixels`) set to the median of the rest, and
    their mask; the image itself and None where it has none (or nothing but them)."""
    flat = flat_pixels(image)
    if flat is None or flat.all():
        return image, None
    out = np.array(image, dtype=np.float32, copy=True)
    rest = out[~flat]
    out[flat] = np.median(rest[:: max(1, rest.size // _NORMALISE_SAMPLE)])
    return out, flat


#: Smallest particle, in micrograph pixels, that :func:`prepare` accepts: smaller ones have too few pixels to pick
#: from, and usually mean the diameter was given in nm or the pixel size is wrong.
MIN_PARTICLE_PX = 10.0
#: Largest side, in pixels, of the network-scale image :func:`prepare` makes. Particles under 32 px are upsampled;
#: beyond this the job would take minutes and gigabytes per micrograph.
MAX_NETWORK_SIDE = 8192


def check_particle_width(diameter_angstrom: float, angpix: float, shape: tuple[int, int] | None = None,
                         target_px: float = NET_DIAMETER_PX) -> None:
    """Raise ValueError, with the likely cause, if the particle is narrower than :data:`MIN_PARTICLE_PX` pixels,
    or (given the micrograph's ``shape``) if resampling it so the particle is ``target_px`` wide would exceed
    :data:`MAX_NETWORK_SIDE`."""
    width = float(diameter_angstrom) / float(angpix)
    if width < MIN_PARTICLE_PX:
        raise ValueError(
            f"a {diameter_angstrom:.4g} A particle is only {width:.1f} px wide at {angpix:g} A/px (at least "
            f"{MIN_PARTICLE_PX:g} px are needed): is the diameter in Angstrom, and the pixel size right?")
    if shape is not None:
        out = _output_shape(tuple(shape), scale_factor(diameter_angstrom, angpix, target_px))
        if max(out) > MAX_NETWORK_SIDE:
            raise ValueError(
                f"a {diameter_angstrom:.4g} A particle is {width:.1f} px wide at {angpix:g} A/px, so this "
                f"{shape[1]} x {shape[0]} px micrograph would be upsampled to {out[1]} x {out[0]} px for the "
                f"networks (at most {MAX_NETWORK_SIDE}; the side is the field of view x {target_px:g} / the "
                "diameter, whatever the binning): check the diameter and the pixel size")


def check_fits(diameter_angstrom: float, angpix: float, shape: tuple[int, int]) -> None:
    """Raise ValueError if a micrograph of ``shape`` is smaller than the particle: the picking skips it."""
    diameter_px = float(diameter_angstrom) / float(angpix)
    if min(shape) < diameter_px:
        raise ValueError(f"image ({shape[1]} x {shape[0]} px) is smaller than the particle ({diameter_px:.0f} px at "
                         f"{angpix:g} A/px)")


def prepare(
    image: np.ndarray, angpix: float, diameter_angstrom: float, target_px: float = NET_DIAMETER_PX
) -> tuple[np.ndarray, tuple[float, float]]:
    """Clip outlier pixels, fill flat regions (:func:`fill_flat`), resample a micrograph to network scale and
    normalise it (leaving the flat regions out of its statistics).

    Returns the network-scale image and the exact ``(fy, fx)`` factors for :func:`to_original`.

    Raises
    ------
    ValueError
        If the image has NaN or infinite pixels, has no contrast, the diameter or pixel size is not positive, or
        the particle is narrower than :data:`MIN_PARTICLE_PX` pixels or the network-scale image would be wider
        than :data:`MAX_NETWORK_SIDE`.
    """
    factor = scale_factor(diameter_angstrom, angpix, target_px)  # first: it rejects a diameter or pixel size <= 0
    check_particle_width(diameter_angstrom, angpix, np.shape(image), target_px)
    image, flat = fill_flat(clip_outliers(image))
    small, factors = resample(image, factor)
    return normalise(small, exclude=None if flat is None else nearest_resample(flat, small.shape)), factors


def to_original(xy: np.ndarray, factors: tuple[float, float]) -> np.ndarray:
    """Map ``(x, y)`` network-scale coordinates (N x 2) back to micrograph pixels."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    fy, fx = factors
    return np.stack([xy[:, 0] / fx, xy[:, 1] / fy], axis=1)


def to_network(xy: np.ndarray, factors: tuple[float, float]) -> np.ndarray:
    """Map ``(x, y)`` micrograph coordinates (N x 2) to network-scale pixels."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    fy, fx = factors
    return np.stack([xy[:, 0] * fx, xy[:, 1] * fy], axis=1)


def _default_workers() -> int:
    try:
        import torch

        return max(1, torch.get_num_threads())
    except Exception:  # pragma: no cover - torch is a dependency
        return 1


def nearest_resample(labels: np.ndarray, shape: tuple) -> np.ndarray:
    """Nearest-neighbour resampling of a label or instance map to ``shape`` on the Fourier-resampling grid of
    :func:`resample` (output pixel j sits at input j * N / M), so labels stay aligned with the resampled image."""
    rows = np.minimum(np.round(np.arange(shape[0]) * labels.shape[0] / shape[0]).astype(int), labels.shape[0] - 1)
    cols = np.minimum(np.round(np.arange(shape[1]) * labels.shape[1] / shape[1]).astype(int), labels.shape[1] - 1)
    return labels[np.ix_(rows, cols)]


def cut_boxes(images: list, xyz: np.ndarray, box: int = BOX_SIZE, jitter: float = 0.0, rng=None) -> np.ndarray:
    """Cut ``box`` x ``box`` float32 boxes centred (the centre at ``box // 2``, rounded to the nearest pixel) at
    ``(image index, x, y)`` rows, zero-padded at the edges; ``jitter`` shifts each centre by up to that many pixels
    (uniform, from ``rng``)."""
    half = box // 2
    out = np.zeros((len(xyz), box, box), dtype=np.float32)
    for k, (i, x, y) in enumerate(xyz):
        if jitter and rng is not None:
            x = x + rng.uniform(-jitter, jitter)
            y = y + rng.uniform(-jitter, jitter)
        img = images[int(i)]
        x0, y0 = int(round(x)) - half, int(round(y)) - half
        sy0, sx0 = max(0, y0), max(0, x0)
        sy1, sx1 = min(img.shape[0], y0 + box), min(img.shape[1], x0 + box)
        if sy1 > sy0 and sx1 > sx0:
            out[k, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = img[sy0:sy1, sx0:sx1]
    return out


#: Radius of the disk :func:`density_map` averages over, in particle diameters.
DENSITY_DISK = 0.35


def density_map(image: np.ndarray, diameter_px: float, disk: float = DENSITY_DISK) -> np.ndarray:
    """How much dark, particle-sized density lies around each pixel: a dark-blob measure.

    The image is high-passed (its Gaussian blur of sd two diameters subtracted), robustly standardised (median,
    MAD), averaged over a disk of ``disk`` diameters and negated, so dark particles read positive. Compared with
    the value at labelled particle centres it tells particle-like places from empty ones without a network.

    Parameters
    ----------
    image : numpy.ndarray
        2D image ``[y, x]``, particles dark.
    diameter_px : float
        Particle diameter in pixels of ``image``.
    disk : float
        Radius of the averaging disk, in diameters.

    Returns
    -------
    numpy.ndarray
        float64 map of the same shape.
    """
    import scipy.signal

    img = np.asarray(image, np.float64)
    img = img - gaussian_blur(img, 2 * diameter_px)
    med = np.median(img)
    img = (img - med) / (1.4826 * np.median(np.abs(img - med)) or 1.0)
    kernel = _disk(disk * diameter_px).astype(np.float64)
    return -scipy.signal.fftconvolve(img, kernel / kernel.sum(), mode="same")


def _disk(radius: float) -> np.ndarray:
    """The pixels within ``radius`` of the centre of a square of side ``2 int(radius) + 1``: a boolean kernel."""
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return yy**2 + xx**2 <= radius * radius


def darkness_at(highpassed: np.ndarray, diameter_px: float, xy: np.ndarray, disk: float = DENSITY_DISK) -> np.ndarray:
    """:func:`density_map`'s dark-blob measure at the ``(x, y)`` rows of ``xy`` only, without its standardisation:
    minus the mean of ``highpassed`` (:func:`highpass` of the image, sigma two diameters) over a disk of ``disk``
    diameters. An increasing affine map of :func:`density_map`'s values (up to the binned blur), so it orders points
    as that does, at a small fraction of the cost."""
    return -disk_means(highpassed, disk * float(diameter_px), xy)


def disk_means(image: np.ndarray, radius: float, xy: np.ndarray) -> np.ndarray:
    """The mean of ``image`` over the disk of ``radius`` pixels around the pixel nearest each ``(x, y)`` row of ``xy``
    (pixels outside the image count as 0): what :func:`density_map` convolves with, read at those points only."""
    rows, cols = nearest_pixels(xy, image.shape)
    inside = _disk(radius)
    dy, dx = (np.nonzero(inside)[k] - inside.shape[k] // 2 for k in (0, 1))
    yy, xx = rows[:, None] + dy[None, :], cols[:, None] + dx[None, :]
    ok = (yy >= 0) & (yy < image.shape[0]) & (xx >= 0) & (xx < image.shape[1])
    vals = np.where(ok, np.asarray(image)[np.clip(yy, 0, image.shape[0] - 1), np.clip(xx, 0, image.shape[1] - 1)], 0)
    return vals.sum(axis=1, dtype=np.float64) / len(dy)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(image, sigma)`` (mode ``reflect``, truncated at 4 sigma) of a float64 2D image,
    computed by FFT along each axis: the same to rounding, and several times faster for the wide blurs of
    :func:`density_map` (sigma two particle diameters). It stays apart from the picking stage's float32 FFT smoothing
    (:mod:`relion_pixer.picking`): through :func:`density_map` its float64 values decide the real-data training
    labels (:func:`relion_pixer.train.far_background`), so the shipped weights retrain bit for bit only with it."""
    import scipy.signal

    from relion_pixer.picking import gaussian_kernel1d

    k = gaussian_kernel1d(float(sigma))
    r = len(k) // 2
    out = np.asarray(image, np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        out = scipy.signal.fftconvolve(np.pad(out, pad, mode="symmetric"), np.expand_dims(k, 1 - axis), mode="valid")
    return out


def nearest_pixels(xy: np.ndarray, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` of the pixels nearest to the ``(x, y)`` rows of ``xy`` in an image of ``shape``, clipped
    into it: ``image[nearest_pixels(xy, image.shape)]`` reads the image there."""
    ij = np.clip(np.round(np.asarray(xy, np.float64).reshape(-1, 2)).astype(int), 0, np.array(shape[1::-1]) - 1)
    return ij[:, 1], ij[:, 0]


def values_at(values: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """``values`` at the pixels nearest to the ``(x, y)`` rows of ``xy`` (clipped into the image)."""
    return values[nearest_pixels(xy, values.shape)]
