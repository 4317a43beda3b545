"""The particle size the networks see best, measured from the data.

Users give the particle's longest dimension, as for RELION's LoG picker; the networks were trained with particles
:data:`relion_pixer.NET_DIAMETER_PX` pixels across, and a real particle looks "one diameter" wide to them at a scale
that depends on its shape, its contrast and its neighbours. So the job measures it: a few micrographs are segmented
with the diameter scaled by each factor of :data:`FACTORS`, and each scale gets the networks' *confidence*, the mean
log-odds of the upper half of the candidate scores (:func:`confidence`). The estimate is the scale of the highest
confidence, refined by a parabola through it and its neighbours (in log scale). The networks are surest where the
particles have the width they learned, so the estimate follows the data and not the diameter given: a diameter
from 0.8x to 1.25x the true one gives the same estimate. The job reports it and warns when it is far from the
diameter given; it picks between the two (:func:`picking_diameter`), with the weight :data:`ESTIMATE_WEIGHT` that
``benchmarks/tune_size.py`` chooses for the shipped weights (0.5 for ``pixer_v12``: halfway, in log scale, from the
diameter given to the estimate; chosen leave one set out, each real set scored by networks that never saw its
protein, as a job meets a new one).

The networks' preferred scale is what they see as one diameter, not a physical size; it read 0.82x-0.91x the
diameter on the real sets and 0.65x-0.91x on simulated ones, so the estimate reported is that scale times
:data:`CALIBRATION` (fitted on the real sets' train + valid micrographs). Clean, compact particles still read small
(about 0.75x on simulated micrographs at SNR 3; ``docs/benchmarks.md``).

The same networks tell whether the particles are dark, as they learned them: :func:`check_contrast` compares their
confidence on a few micrographs as given and negated, and the job warns when the negated ones look like particles and
the micrographs do not (negative stain, an inverted export: ``invert Yes``).
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import numpy as np

from relion_pixer import NET_DIAMETER_PX

__all__ = ["FACTORS", "ESTIMATE_WEIGHT", "CALIBRATION", "SPACING_FLOOR", "SizeEstimate", "Spacing", "confidence",
           "upper_half_log_odds", "first_micrographs", "estimate_diameter", "picking_diameter", "pick_spacing",
           "spacing_diameter", "check_spacing", "CONTRAST_MARGIN", "CONTRAST_FLOOR", "Contrast", "check_contrast"]

#: Scales of the given diameter tried (14 steps, 9.5 % apart, 0.55x to 1.8x).
FACTORS = tuple(float(f) for f in np.exp(np.linspace(np.log(0.55), np.log(1.8), 14)))
#: Weight of the estimate against the diameter given in the diameter the job picks at (geometric blend;
#: ``benchmarks/tune_size.py`` chose it: 0.5 with pixer_v4; 0 with pixer_v12 and the raw estimate, on train + valid and
#: on valid alone; 0.25 with pixer_v12 and the calibrated estimate (:data:`CALIBRATION`), on valid, the splits that
#: judge a model trained on the train splits; 0.5 leave one set out, ``tune_size.py --set_model``, session 14: each real
#: set scored by a model of v12's recipe that never saw its protein, the case the project is judged on).
ESTIMATE_WEIGHT = 0.5
#: The networks' preferred scale times this is the estimate reported. They are surest at about 0.86x the particle's
#: longest dimension (the diameter users give) on the real sets, so the raw scale read low on every set measured;
#: ``benchmarks/calibrate_size.py`` fitted this on the real sets' train + valid micrographs, by the rule written
#: there (``benchmarks/results/calibrate_size.json``; 1 would report the raw scale).
CALIBRATION = 1.16
#: Micrographs of a job the estimate is made on (the first ones, in the order of the input STAR file).
SAMPLE_MICROGRAPHS = 3
#: Largest network-scale side the estimate segments: a larger micrograph is cropped to its centre so that even at
#: the smallest factor its network image is at most this wide (time and memory stay bounded on K3-sized data).
MAX_NET_SIDE = 1280
#: The pick-spacing check (:func:`check_spacing`) never shrinks the picking diameter below this fraction of it (the
#: range, 0.8x-1.25x, over which picks must hold for a diameter given off by that much).
SPACING_FLOOR = 0.8
#: Most picks of the sample the spacing check makes (:func:`check_spacing`): 1 picks once at the diameter checked.
SPACING_ROUNDS = 1
#: The spacing check measures the picks of the job's second pass too where the job makes it (``crowded Yes``):
#: the particles it adds beside the first picks are those whose spacing the check needs. ``bench_crowd.py``'s rule 5
#: (session 25) made it the check's way, and the check the job's default: on fresh crowded simulated micrographs at
#: the kept-apart scale, mean F1 over the diameters given +0.013 and +0.047 with the spreads 0.034 -> 0.002 and
#: 0.098 -> 0.016; on the real sets it never acts.
SPACING_SECOND_PASS = True
#: The spacing check needs at least this many picks with a neighbour on its micrographs (fewer: no check).
MIN_SPACING_PICKS = 30
#: Edge margin of the candidates the confidence is taken over, in particle diameters (the picking default was 0.5
#: when :data:`CALIBRATION` was fitted; the estimate keeps it).
ESTIMATE_MARGIN = 0.5
#: Candidate scores are clipped to this distance from 0 and 1 before their log-odds are taken.
_EPS = 1e-4


class SizeEstimate(NamedTuple):
    """Result of :func:`estimate_diameter`.

    Attributes
    ----------
    diameter_A : float
        The estimated diameter (Angstrom).
    given_A : float
        The diameter given.
    factors : tuple of float
        The scales tried, relative to ``given_A``.
    confidence : tuple of float
        The networks' confidence at each scale (NaN where a scale could not be used).
    at_edge : bool
        The highest confidence lies at the smallest or largest scale tried: the size may lie beyond the range.
    """

    diameter_A: float
    given_A: float
    factors: tuple
    confidence: tuple
    at_edge: bool

    @property
    def ratio(self) -> float:
        """Estimated / given diameter."""
        return self.diameter_A / self.given_A

    @property
    def measured(self) -> bool:
        """Whether any scale gave a confidence (otherwise ``diameter_A`` is the diameter given)."""
        return bool(np.isfinite(np.asarray(self.confidence, dtype=float)).any())

    def record(self, picking_A: float) -> dict:
        """What a job keeps of the estimate for Continue (``pixer_size.json``, and adapt's note when the adapted
        networks measure it again), with the diameter it picks at."""
        return {"given_A": self.given_A, "estimate_A": self.diameter_A, "picking_A": float(picking_A),
                "factors": self.factors, "confidence": self.confidence}


def confidence(prob_map) -> float:
    """The networks' confidence on one probability map: mean log-odds of the upper half of its candidate scores
    (every local maximum of the smoothed map scoring at least 0.05, away from the edges); NaN without candidates."""
    from relion_pixer import picking

    cand = picking.pick_centres(prob_map, NET_DIAMETER_PX, threshold=0.05, margin_px=ESTIMATE_MARGIN * NET_DIAMETER_PX)
    return upper_half_log_odds(cand.score)


def _confidence_at(image: np.ndarray, angpix: float, diameter_A: float, models, device: str) -> float:
    """:func:`confidence` of the networks on ``image`` segmented at ``diameter_A``; NaN where the micrograph cannot
    be segmented at that diameter (too small or too large at that scale) or gives no candidate."""
    from relion_pixer.pipeline import segment_micrograph

    try:
        _, prob, _ = segment_micrograph(image, angpix, diameter_A, models, device)
    except ValueError:
        return float("nan")
    return confidence(prob)


def upper_half_log_odds(scores) -> float:
    """Mean log-odds of the upper half of ``scores`` (probabilities, clipped to ``_EPS`` from 0 and 1); NaN when
    empty."""
    s = np.sort(np.clip(np.asarray(scores, dtype=np.float64).reshape(-1), _EPS, 1.0 - _EPS))
    if not len(s):
        return float("nan")
    top = s[len(s) // 2:]
    return float(np.mean(np.log(top / (1.0 - top))))


def first_micrographs(entries, invert: bool = False, read: list | None = None):
    """A job's first :data:`SAMPLE_MICROGRAPHS` readable micrographs (:func:`relion_pixer.io.readable_micrographs`
    of its ``entries``) as ``(image, angpix)``, read one at a time: a generator, so that an estimate or a check over
    them holds one full-size micrograph in memory. The name of each one read is appended to ``read`` when given."""
    import itertools

    from relion_pixer import io

    for entry, image, angpix in itertools.islice(io.readable_micrographs(entries, invert), SAMPLE_MICROGRAPHS):
        if read is not None:
            read.append(entry.name)
        yield image, angpix


def _centre_crop(image: np.ndarray, side: float) -> np.ndarray:
    """The central ``side`` x ``side`` pixels of ``image`` (the image itself where it is no larger)."""
    side = int(side)
    h, w = np.shape(image)
    y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return image[y0:y0 + side, x0:x0 + side] if (h > side or w > side) else image


def estimate_diameter(micrographs: Iterable[tuple[np.ndarray, float]], diameter_A: float, models,
                      device: str = "cpu", factors: Sequence[float] = FACTORS,
                      calibration: float | None = None) -> SizeEstimate:
    """Estimate the particle diameter the networks see best (see the module docstring).

    Parameters
    ----------
    micrographs : iterable of (image, angpix)
        A few micrographs (particles dark), each with its pixel size; read one at a time.
    diameter_A : float
        The diameter given (Angstrom).
    models : relion_pixer.models.PixerModels
        The networks, on ``device``.
    device : str
    factors : sequence of float
        Scales of ``diameter_A`` to try, increasing.
    calibration : float, optional
        The preferred scale is multiplied by this (default :data:`CALIBRATION`; 1: the raw scale).

    Returns
    -------
    SizeEstimate
        ``diameter_A`` is the given one when no scale gave a confidence.
    """
    diameter_A = float(diameter_A)
    factors = tuple(float(f) for f in factors)
    values = [[] for _ in factors]
    for image, angpix in micrographs:  # one micrograph at a time: an iterator keeps only one in memory
        image = _centre_crop(image, MAX_NET_SIDE * diameter_A * min(factors) / (NET_DIAMETER_PX * float(angpix)))
        for k, f in enumerate(factors):
            value = _confidence_at(image, angpix, diameter_A * f, models, device)
            if np.isfinite(value):
                values[k].append(value)
    conf = [float(np.mean(v)) if v else float("nan") for v in values]
    c = np.asarray(conf)
    if not np.isfinite(c).any():
        return SizeEstimate(diameter_A, diameter_A, factors, tuple(conf), False)
    i = int(np.nanargmax(c))
    log_f = np.log(factors)
    best = log_f[i]
    if 0 < i < len(c) - 1 and np.isfinite(c[i - 1]) and np.isfinite(c[i + 1]):
        # vertex of the parabola through the three points (log scale), kept between the neighbours
        x, y = log_f[i - 1:i + 2], c[i - 1:i + 2]
        a, b, _ = np.polyfit(x, y, 2)
        if a < 0:
            best = float(np.clip(-b / (2 * a), x[0], x[2]))
    calibration = CALIBRATION if calibration is None else float(calibration)
    return SizeEstimate(float(diameter_A * np.exp(best) * calibration), diameter_A, factors, tuple(conf),
                        i in (0, len(c) - 1))


def picking_diameter(estimate: SizeEstimate, weight: float = ESTIMATE_WEIGHT) -> float:
    """The diameter to pick at: ``given ** (1 - weight) * estimate ** weight`` (0: the diameter given; 1: the
    estimate). Between the two, a diameter given off by a factor ``k`` moves the picking scale by only ``k **
    (1 - weight)``, and the estimate's own error (the networks' preferred scale is not the physical size) counts
    ``weight`` times. Gates on the estimate where the networks are unsure were measured and not shipped
    (``benchmarks/gate_size.py``)."""
    weight = float(weight)
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight!r}")
    return float(estimate.given_A ** (1.0 - weight) * estimate.diameter_A ** weight)


class Spacing(NamedTuple):
    """Result of :func:`check_spacing`.

    Attributes
    ----------
    diameter_A : float
        The diameter to pick at (the one checked where the picks are not crowded).
    checked_A : float
        The diameter checked (the sample was picked at it).
    spacing_A : float
        Median distance from a pick to its nearest neighbour (NaN with too few picks).
    picks : int
        Picks with a neighbour that the median was taken over.
    """

    diameter_A: float
    checked_A: float
    spacing_A: float
    picks: int

    @property
    def ratio(self) -> float:
        """Spacing / diameter checked (NaN with too few picks)."""
        return self.spacing_A / self.checked_A


def pick_spacing(xy_A: Iterable[np.ndarray]) -> tuple[float, int]:
    """Median distance from each pick to its nearest neighbour on the same micrograph, and how many picks it was
    taken over (picks alone on their micrograph do not count; NaN and 0 without any).

    Parameters
    ----------
    xy_A : iterable of numpy.ndarray
        Each micrograph's picks, ``(N, 2)`` in Angstrom.
    """
    from scipy.spatial import cKDTree

    nearest = []
    for xy in xy_A:
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        if len(xy) >= 2:
            nearest.append(cKDTree(xy).query(xy, 2)[0][:, 1])
    nearest = np.concatenate(nearest) if nearest else np.zeros(0)
    return (float(np.median(nearest)) if len(nearest) else float("nan")), int(len(nearest))


def spacing_diameter(diameter_A: float, spacing_A: float, picks: int, floor: float = SPACING_FLOOR) -> float:
    """The diameter to pick at after the spacing check: ``diameter_A`` where the picks' median nearest-neighbour
    distance ``spacing_A`` is at least one diameter (or fewer than :data:`MIN_SPACING_PICKS` picks measured it),
    else the spacing, but no less than ``floor`` times ``diameter_A``."""
    diameter_A = float(diameter_A)
    if picks < MIN_SPACING_PICKS or not np.isfinite(spacing_A):
        return diameter_A
    return float(np.clip(spacing_A, float(floor) * diameter_A, diameter_A))


def spacing_repick(crowded: bool) -> bool:
    """Whether the spacing check picks with the second pass (``check_spacing(repick=...)``) in a job whose ``crowded``
    setting is given: where the job makes the pass and :data:`SPACING_SECOND_PASS` is on."""
    return bool(SPACING_SECOND_PASS and crowded)


def check_spacing(micrographs, diameter_A: float, models, device: str = "cpu", floor: float = SPACING_FLOOR,
                  rounds: int = SPACING_ROUNDS, repick: bool = False) -> Spacing:
    """Pick a few micrographs at ``diameter_A`` (the default settings) and shrink the diameter where the picks sit
    closer than one diameter to each other (:func:`spacing_diameter`).

    The check picks with the default :class:`relion_pixer.pipeline.PickParams` whatever the job's own threshold, cap
    and margin: it measures how far apart the particles sit, and a user's stricter or looser cut would measure the
    cut instead (a threshold of 0 would count noise picks between particles as neighbours).

    Particles cannot overlap in the ice, so when most picks have a neighbour closer than the diameter, the particles
    are narrower than that across the direction they touch in: the diameter given was the longest dimension of a
    particle packed side by side, or too large. Picked at that diameter, the networks see touching particles
    smaller than they learned them and merge them, and the local-maximum search's spacing suppresses one of each
    close pair (``benchmarks/bench_crowd.py``). Picking at the spacing finds them; the floor keeps the change within
    the range over which picks are meant to hold.

    The picks measured miss some of the touching particles, so their spacing reads above the particles' own. With
    ``rounds`` above 1 the check picks again at the diameter it found, while that keeps shrinking it (at most
    ``rounds`` picks of the sample; never below ``floor`` times ``diameter_A``).

    Parameters
    ----------
    micrographs : iterable of (image, angpix), or a function returning one
        A few micrographs (particles dark), each with its pixel size; read one at a time. With ``rounds`` above 1,
        a function is called once per round (so that the sample is read again rather than held in memory); an
        iterable is read once into a list.
    diameter_A : float
        The diameter to check (Angstrom).
    models : relion_pixer.models.PixerModels
        The networks, on ``device``.
    device : str
    floor : float
        Smallest result, as a fraction of ``diameter_A``.
    rounds : int
        Most picks of the sample (1: pick once at ``diameter_A``).
    repick : bool
        Pick with the job's second pass (``PickParams.repick``; False: one pass, as the check was first measured).

    Returns
    -------
    Spacing
        ``checked_A`` is ``diameter_A``; ``spacing_A`` and ``picks`` are those of the last round.
    """
    from relion_pixer.pipeline import PickParams, pick_micrograph

    rounds = int(rounds)
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds!r}")
    if callable(micrographs):
        sample = micrographs
    else:
        kept = micrographs if rounds == 1 else list(micrographs)
        sample = lambda: kept  # noqa: E731
    params = PickParams(device=str(device), repick=bool(repick))
    lowest = float(floor) * float(diameter_A)
    d = float(diameter_A)
    for _ in range(rounds):
        xy_A = []
        for image, angpix in sample():
            try:
                r = pick_micrograph(image, angpix, d, models, params)
            except ValueError:  # too small at this scale
                continue
            xy_A.append(r.xy * float(angpix))
        spacing, n = pick_spacing(xy_A)
        new = max(spacing_diameter(d, spacing, n, floor), lowest)
        if new >= d:
            break
        d = new
    return Spacing(d, float(diameter_A), spacing, n)


#: The contrast check (:func:`check_contrast`) calls the micrographs inverted when the networks' confidence on the
#: negated micrographs exceeds that on them as given by more than this (log-odds) ...
CONTRAST_MARGIN = 1.0
#: ... and is above this: the networks see particles there at all. Set from the confidences of session 29 (a ``/tmp``
#: measurement at the set's diameter): the 19 shared real micrographs, as given 3.67-4.23 and negated -1.22-1.90 (the
#: hollow apoferritin shells read 0.86-1.90 negated); 30 simulated micrographs, SNR 0.01-3, six families, negated at
#: most 0.15 above as given and then both below 0, and above 0 negated only for thin shells at SNR 3 (1.23, against
#: 4.33 as given). So every real micrograph, negated, would be called inverted (by at least 2.2), and none as given.
CONTRAST_FLOOR = 0.0


class Contrast(NamedTuple):
    """Result of :func:`check_contrast`.

    Attributes
    ----------
    as_given : float
        The networks' mean confidence (:func:`confidence`) on the micrographs as given (NaN: none measured).
    negated : float
        The same on the negated micrographs.
    micrographs : int
        Micrographs measured.
    """

    as_given: float
    negated: float
    micrographs: int

    @property
    def inverted(self) -> bool:
        """Whether the networks see particles clearly better in the negated micrographs (:data:`CONTRAST_MARGIN`,
        :data:`CONTRAST_FLOOR`): particles lighter than the background, where they expect them dark."""
        return bool(np.isfinite(self.as_given) and np.isfinite(self.negated)
                    and self.negated > self.as_given + CONTRAST_MARGIN and self.negated > CONTRAST_FLOOR)


def check_contrast(micrographs: Iterable[tuple[np.ndarray, float]], diameter_A: float, models,
                   device: str = "cpu") -> Contrast:
    """How sure the networks are of particles in a few micrographs as given and negated, at ``diameter_A``.

    The networks learned cryo-EM contrast, particles darker than the background. Negative stain, or an export with
    the contrast inverted, shows them light; the networks then see little in the micrographs as given and particles
    in the negated ones. Each micrograph is cropped to its centre as for :func:`estimate_diameter` (at scale 1) and
    segmented both ways; the confidences are averaged over the micrographs.

    Parameters
    ----------
    micrographs : iterable of (image, angpix)
        A few micrographs, each with its pixel size; read one at a time.
    diameter_A : float
        The particle diameter (Angstrom).
    models : relion_pixer.models.PixerModels
        The networks, on ``device``.
    device : str

    Returns
    -------
    Contrast
    """
    diameter_A = float(diameter_A)
    values: tuple[list, list] = ([], [])
    n = 0
    for image, angpix in micrographs:
        crop = np.asarray(_centre_crop(image, MAX_NET_SIDE * diameter_A / (NET_DIAMETER_PX * float(angpix))),
                          dtype=np.float32)
        measured = False
        for k, img in enumerate((crop, -crop)):
            value = _confidence_at(img, angpix, diameter_A, models, device)
            if np.isfinite(value):
                values[k].append(value)
                measured = True
        n += measured
    as_given, negated = (float(np.mean(v)) if v else float("nan") for v in values)
    return Contrast(as_given, negated, n)
