"""Pick one micrograph: the stages of the PIXER method chained in order.

``preprocess.prepare`` (resample so the particle is :data:`relion_pixer.NET_DIAMETER_PX` pixels wide, normalise) ->
``segment.predict_probability`` (per-pixel particle probability) -> ``picking.pick_centres`` (grid local maxima) ->
``classify.classify_candidates`` (3-way classifier) -> ``decide.decide`` (figure of merit from the map's and the
classifier's evidence, the classifier weighed by how far it agrees with the map on this micrograph; the cut) ->
``preprocess.to_original`` (back to micrograph pixels). With ``PickParams.repick`` (crowded micrographs) a second pass
follows: the picks are masked out and the masked micrograph is picked again (:func:`repick`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np

from relion_pixer import NET_DIAMETER_PX, preprocess
from relion_pixer.classify import BATCH_SIZE

__all__ = ["PickParams", "PickResult", "pick_micrograph", "segment_micrograph", "pick_segmented", "pick_from_map",
           "map_cut", "map_cut_value", "repick", "mask_picks", "MARGIN_PER_DIAMETER", "REPICK_RADIUS", "REPICK_APART",
           "REPICK_DENSITY_PERCENTILE", "REPICK_FOM_PERCENTILE", "REPICK_MIN_FIRST", "REPICK_ROUNDS"]

#: The default edge margin (``PickParams.margin_A`` None), in particle diameters: picks whose centre lies closer to
#: the edge are dropped. 0.4 since session 15 (``benchmarks/tune_defaults.py --set_model``, leave one set out; 0.5
#: before, which keeps only particles lying wholly inside).
MARGIN_PER_DIAMETER = 0.4
#: With ``repick``, each first-pass pick is masked out by a disc of this many particle diameters (radius) filled with
#: noise like the micrograph's background, feathered over :data:`REPICK_FEATHER_PX` network pixels.
REPICK_RADIUS = 0.5
REPICK_FEATHER_PX = 4.0
#: With ``repick``, a second-pass pick is added only this many diameters or more from every first-pass pick (what lies
#: nearer is the edge of a masked disc, or the same particle found again).
REPICK_APART = 0.6
#: With ``repick``, a second-pass pick is added only where the image is at least as dark at particle scale
#: (:func:`relion_pixer.preprocess.darkness_at`) as this percentile of the first picks are: on uncrowded micrographs
#: the second pass otherwise finds faint "particles" on the empty ice around the masked ones (``bench_repick.py``,
#: round 2).
REPICK_DENSITY_PERCENTILE = 5.0
#: With ``repick``, a second-pass pick is added only if its figure of merit reaches this percentile of the first
#: picks' (0: no such check): a particle the neighbours hid scores like the micrograph's particles once it stands
#: alone, a gap between hollow shells much lower (``bench_repick.py``, round 4).
REPICK_FOM_PERCENTILE = 5.0
#: With fewer first picks than this, the second pass adds nothing (no reference darkness, and no crowd).
REPICK_MIN_FIRST = 10
#: With ``repick``, the pass is made this many times at most, each with every pick so far masked out (it stops early
#: when a pass adds nothing).
REPICK_ROUNDS = 1
#: The fill's mean and spread are those of the pixels where P(particle) is below this (the whole image when fewer
#: than :data:`_MIN_BACKGROUND_PX` are).
_BACKGROUND_P = 0.2
_MIN_BACKGROUND_PX = 100


@dataclass(frozen=True)
class PickParams:
    """Settings of one picking run.

    Attributes
    ----------
    threshold : float
        Lowest figure of merit a pick may have (:mod:`relion_pixer.decide`: the map score, lowered by the
        classifier where it recognises background or contamination and agrees with the map on this micrograph).
    max_particles : int
        Keep at most this many picks per micrograph, best first; 0 means no cap.
    margin_A : float or None
        Drop picks closer than this to the micrograph's edge, in Angstrom (None: :data:`MARGIN_PER_DIAMETER` times
        the particle diameter, so a particle cut by the edge is kept only while at most a tenth of its diameter lies
        outside; 0 keeps every centre inside the image).
    min_distance_A : float or None
        Smallest distance between two picks, in Angstrom (None: the picker's default, half a diameter,
        :data:`relion_pixer.picking.MIN_DISTANCE_PER_DIAMETER`).
    map_threshold : float
        Lowest score (the probability map smoothed by a particle-sized Gaussian) a candidate centre may have
        before the classifier sees it.
    map_relative : float
        A candidate also needs this fraction of the micrograph's typical candidate score (its 75th percentile;
        :func:`relion_pixer.picking.adaptive_threshold`), so faint specks on clean data are dropped while on very
        noisy data, where every particle scores low, the threshold falls to ``map_threshold``. 0 turns it off.
    map_odds : float
        A candidate also needs this fraction of the typical candidate score's odds (``s / (1 - s)``): on clean
        micrographs, where particles score near 1, this drops half-confident candidates (0.05: below 0.66 when
        the typical score is 0.975) and on noisy ones it cuts almost nothing. 0 turns it off.
    sigma_per_diameter : float or None
        Sigma of the Gaussian the map is smoothed by before the local-maximum search, as a fraction of the particle
        diameter (None: :data:`relion_pixer.picking.SIGMA_PER_DIAMETER`, 1/6).
    device : str
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (already resolved; ``"auto"`` is resolved by the caller).
    repick : bool
        Crowded micrographs: after picking, mask every pick out and pick the masked micrograph again, adding what
        that finds at least :data:`REPICK_APART` diameters from every first pick (:func:`repick`): particles the
        networks do not see among their neighbours. On by default since session 24 (``benchmarks/bench_repick.py``,
        round 4: on crowded simulated micrographs F1 +0.04 / +0.11, on the real sets' test splits +0.000 to
        +0.007); False picks once, as before.
    batch_size : int
        Boxes per classifier batch (64 was the fastest on the CPU, from 32 to 644 boxes: ``bench_speed.py``).
    """

    threshold: float = 0.1
    max_particles: int = 0
    min_distance_A: float | None = None
    margin_A: float | None = None
    map_threshold: float = 0.1
    map_relative: float = 0.2
    map_odds: float = 0.03
    sigma_per_diameter: float | None = None
    device: str = "cpu"
    batch_size: int = BATCH_SIZE
    repick: bool = True


@dataclass
class PickResult:
    """Picks of one micrograph.

    Attributes
    ----------
    xy : numpy.ndarray
        (N, 2) float64 ``(x, y)`` in micrograph pixels (0-based), best figure of merit first.
    fom : numpy.ndarray
        (N,) figure of merit (:mod:`relion_pixer.decide`), in [0, 1].
    prob_map : numpy.ndarray or None
        float32 particle probability at network scale (None when the picker makes none).
    factors : tuple of float
        ``(fy, fx)`` network pixels per micrograph pixel (:func:`relion_pixer.preprocess.to_original`).
    net_image : numpy.ndarray or None
        The normalised, Fourier-cropped (so low-passed) micrograph at network scale, for pictures.
    capped : int
        Picks at or above the threshold that ``max_particles`` cut (0: none).
    map_score : numpy.ndarray or None
        (N,) each pick's map score (the evidence of the map alone), in the order of ``xy``.
    trust : float
        The classifier's say on this micrograph (:func:`relion_pixer.decide.classifier_trust`).
    vetoed : int
        Candidates whose map score reached ``threshold`` but whose figure of merit the classifier's vetoes took below
        it: what the map alone would have kept and the decision dropped.
    map_cut : float
        The lowest map score a candidate needed on this micrograph (:func:`map_cut_value`).
    contamination_trust : float
        The contamination veto's say on this micrograph (:func:`relion_pixer.decide.contamination_trust`).
    repicked : int
        Picks the second pass added (``PickParams.repick``; 0 without it).
    """

    xy: np.ndarray
    fom: np.ndarray
    prob_map: np.ndarray | None
    factors: tuple[float, float]
    net_image: np.ndarray | None = None
    capped: int = 0
    trust: float = 1.0
    map_score: np.ndarray | None = None
    vetoed: int = 0
    map_cut: float = 0.0
    contamination_trust: float = 0.0
    repicked: int = 0


def pick_micrograph(image: np.ndarray, angpix: float, diameter_A: float, models, params: PickParams) -> PickResult:
    """Pick the particles of one micrograph.

    Parameters
    ----------
    image : numpy.ndarray
        2D micrograph ``[y, x]`` (any real dtype), particles dark.
    angpix : float
        Its pixel size in Angstrom.
    diameter_A : float
        Particle diameter in Angstrom.
    models : relion_pixer.models.PixerModels
        ``segmenter`` and ``classifier`` on ``params.device``, in eval mode.
    params : PickParams

    Returns
    -------
    PickResult
    """
    return pick_segmented(*segment_micrograph(image, angpix, diameter_A, models, params.device), diameter_A, models,
                          params)


def pick_segmented(net_image: np.ndarray, prob, factors: tuple[float, float], diameter_A: float, models,
                   params: PickParams) -> PickResult:
    """What :func:`pick_micrograph` does once :func:`segment_micrograph` has made ``net_image``, ``prob`` and
    ``factors``: :func:`pick_from_map`, then with ``params.repick`` the second pass (:func:`repick`)."""
    if not params.repick:
        return pick_from_map(net_image, prob, factors, diameter_A, models, params)
    first = pick_from_map(net_image, prob, factors, diameter_A, models, replace(params, max_particles=0))
    return repick(first, diameter_A, models, params)


def segment_micrograph(image: np.ndarray, angpix: float, diameter_A: float, models, device: str = "cpu"):
    """The first two stages: the network-scale image, its particle probability map and the scale ``factors``."""
    from relion_pixer import segment

    net_image, factors = preprocess.prepare(image, angpix, diameter_A)
    prob = segment.predict_probability(models.segmenter, net_image, device)
    return net_image, prob, factors


def pick_from_map(net_image: np.ndarray, prob, factors: tuple[float, float], diameter_A: float, models,
                  params: PickParams) -> PickResult:
    """The last stages: candidates from the probability map, the classifier, the decision, micrograph coordinates.

    ``net_image``, ``prob`` and ``factors`` are what :func:`segment_micrograph` returns; only ``params`` may differ
    between calls, so settings can be compared without segmenting again.
    """
    from relion_pixer import classify, decide

    cand_xy, cand_score = _candidates(prob, diameter_A, params, params.map_threshold)
    # suppression keeps the higher score of a close pair, so cutting afterwards equals picking with the higher cut
    cut_value = map_cut_value(cand_score, params)
    passed = cand_score >= cut_value
    cand_xy, cand_score = cand_xy[passed], cand_score[passed]
    probs = classify.classify_candidates(models.classifier, net_image, cand_xy, device=params.device,
                                         batch_size=params.batch_size)
    darkness = None
    if decide.DARK_SPARE is not None and len(cand_xy):
        hp = preprocess.highpass(net_image, 2 * NET_DIAMETER_PX)
        darkness = preprocess.darkness_at(hp, NET_DIAMETER_PX, cand_xy)
    decision = decide.decide(cand_score, probs, params.threshold, int(params.max_particles), darkness=darkness)
    vetoed = int(np.count_nonzero((cand_score >= params.threshold) & (decision.fom < params.threshold)))
    fom = decision.fom[decision.keep]
    xy = preprocess.to_original(cand_xy[decision.keep], factors)
    return PickResult(xy=xy, fom=fom, prob_map=_numpy_map(prob), factors=factors,
                      net_image=net_image, capped=decision.capped, trust=decision.trust,
                      map_score=cand_score[decision.keep], vetoed=vetoed, map_cut=cut_value,
                      contamination_trust=decision.contamination_trust)


def _numpy_map(prob) -> np.ndarray:
    """A probability map (torch tensor on any device, or array) as a float32 NumPy array."""
    prob_np = prob.detach().float().cpu().numpy() if hasattr(prob, "detach") else np.asarray(prob, np.float32)
    return prob_np.astype(np.float32, copy=False)


def _candidates(prob, diameter_A: float, params: PickParams, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidate centres (network pixels) and their map scores: the local maxima of the smoothed map at or above
    ``threshold``, with ``params``' spacing, edge margin and smoothing."""
    from relion_pixer import picking

    min_distance_px = None
    if params.min_distance_A:
        min_distance_px = float(params.min_distance_A) * NET_DIAMETER_PX / float(diameter_A)
    margin_A = MARGIN_PER_DIAMETER * float(diameter_A) if params.margin_A is None else float(params.margin_A)
    margin_px = margin_A * NET_DIAMETER_PX / float(diameter_A)
    sigma = None if params.sigma_per_diameter is None else float(params.sigma_per_diameter) * NET_DIAMETER_PX
    xy, score = picking.pick_centres(prob, NET_DIAMETER_PX, min_distance_px=min_distance_px, margin_px=margin_px,
                                     threshold=threshold, sigma=sigma)
    return (np.asarray(xy, dtype=np.float64).reshape(-1, 2), np.asarray(score, dtype=np.float64).reshape(-1))


def repick(first: PickResult, diameter_A: float, models, params: PickParams, rounds: int | None = None) -> PickResult:
    """The second pass of ``PickParams.repick``: pick ``first``'s micrograph again with ``first``'s picks masked out.

    On crowded micrographs the segmentation network misses many particles that neighbours surround: it learned
    particles with background around them. With the picks found replaced by background-like noise
    (:func:`mask_picks`), the hidden ones stand alone and the network sees them. The masked image is segmented again,
    its candidates must reach the map score ``first`` needed (``first.map_cut``: the second pass's own typical score
    would be lower and let faint specks through), lie at least :data:`REPICK_APART` diameters from every first pick,
    pass the same decision, the classifier weighed by ``first``'s trusts on this micrograph, and lie where the image
    is at least as dark at particle scale (:func:`relion_pixer.preprocess.darkness_at`) as the first picks'
    :data:`REPICK_DENSITY_PERCENTILE` th percentile, with a figure of merit reaching the first picks'
    :data:`REPICK_FOM_PERCENTILE` th percentile (when above 0); with fewer than :data:`REPICK_MIN_FIRST` first picks
    nothing is added. With ``rounds`` above 1 the pass is made again with every pick so far masked out, until one
    adds nothing. The picks of all passes are then cut together (``threshold``, ``max_particles``).

    Parameters
    ----------
    first : PickResult
        The first pass, made with ``params`` but no ``max_particles`` cap (it needs ``net_image`` and ``prob_map``).
    diameter_A : float
    models : relion_pixer.models.PixerModels
    params : PickParams
    rounds : int or None
        Most passes (None: :data:`REPICK_ROUNDS`; 0: none, only the cut).

    Returns
    -------
    PickResult
        All passes' picks, best figure of merit first; ``prob_map`` is the largest of the passes' maps at each pixel
        (the masked discs keep the first's); ``repicked`` counts the kept picks the later passes added.
    """
    from relion_pixer import decide

    result = first
    rounds = REPICK_ROUNDS if rounds is None else int(rounds)
    if rounds > 0 and len(first.xy) >= REPICK_MIN_FIRST:  # picks only grow from pass to pass
        hp = preprocess.highpass(first.net_image, 2 * NET_DIAMETER_PX)  # the same image every pass
        for _ in range(rounds):
            result = _repick_once(result, hp, diameter_A, models, params)
            if not result.repicked:
                break
    keep, capped = decide.cut(result.fom, params.threshold, int(params.max_particles))
    return replace(result, xy=result.xy[keep], fom=result.fom[keep], map_score=result.map_score[keep],
                   capped=first.capped + capped, repicked=int(np.count_nonzero(keep >= len(first.xy))))


def _repick_once(prev: PickResult, hp: np.ndarray, diameter_A: float, models, params: PickParams) -> PickResult:
    """One pass of :func:`repick` over ``prev``'s picks (``hp``: :func:`relion_pixer.preprocess.highpass` of its
    network-scale image, for :func:`relion_pixer.preprocess.darkness_at`): ``prev``'s picks followed by those the pass
    adds (not cut nor sorted), ``repicked`` the number added."""
    from scipy.spatial import cKDTree

    from relion_pixer import CONTAMINATION, PARTICLE, classify, decide, segment

    xy1 = preprocess.to_network(prev.xy, prev.factors)
    masked = mask_picks(prev.net_image, prev.prob_map, xy1)
    prob2 = segment.predict_probability(models.segmenter, masked, params.device)
    cand_xy, cand_score = _candidates(prob2, diameter_A, params, max(prev.map_cut, params.map_threshold))
    dark = np.percentile(preprocess.darkness_at(hp, NET_DIAMETER_PX, xy1), REPICK_DENSITY_PERCENTILE)
    # the figure of merit never exceeds the map score, so what scores below the check's floor is not classified
    floor = np.percentile(prev.fom, REPICK_FOM_PERCENTILE) if REPICK_FOM_PERCENTILE > 0 else 0.0
    ok = ((cand_score >= floor) & (cKDTree(xy1).query(cand_xy)[0] >= REPICK_APART * NET_DIAMETER_PX)
          & (preprocess.darkness_at(hp, NET_DIAMETER_PX, cand_xy) >= dark)) if len(cand_xy) else np.zeros(0, bool)
    cand_xy, cand_score = cand_xy[ok], cand_score[ok]
    fom2 = np.zeros(0)
    if len(cand_xy):
        probs = classify.classify_candidates(models.classifier, masked, cand_xy, device=params.device,
                                             batch_size=params.batch_size)
        fom2 = decide.figure_of_merit(cand_score, probs[:, PARTICLE], prev.trust,
                                      p_contamination=probs[:, CONTAMINATION], ctrust=prev.contamination_trust)
    vetoed = int(np.count_nonzero((cand_score >= params.threshold) & (fom2 < params.threshold)))
    new = (fom2 >= params.threshold) & (fom2 >= floor)
    return replace(prev, xy=np.concatenate([prev.xy, preprocess.to_original(cand_xy[new], prev.factors)]),
                   fom=np.concatenate([prev.fom, fom2[new]]),
                   map_score=np.concatenate([prev.map_score, cand_score[new]]), vetoed=prev.vetoed + vetoed,
                   prob_map=np.maximum(prev.prob_map, _numpy_map(prob2)), repicked=int(np.count_nonzero(new)))


def mask_picks(net_image: np.ndarray, prob_map: np.ndarray, xy: np.ndarray, seed: int = 0) -> np.ndarray:
    """``net_image`` with a disc of :data:`REPICK_RADIUS` diameters around each of ``xy`` (network pixels) replaced
    by Gaussian noise of the mean and spread of the image's background (where ``prob_map`` is below 0.2), feathered
    over :data:`REPICK_FEATHER_PX` pixels. The noise comes from ``seed``, so a micrograph is masked the same way every
    time."""
    img = np.asarray(net_image, dtype=np.float32)
    background = img[np.asarray(prob_map) < _BACKGROUND_P]
    if background.size < _MIN_BACKGROUND_PX:
        background = img.ravel()
    mean, sd = float(background.mean()), float(background.std())
    r = REPICK_RADIUS * NET_DIAMETER_PX
    half = int(np.ceil(r + 0.5 * REPICK_FEATHER_PX))
    weight = np.zeros(img.shape, np.float32)
    ny, nx = img.shape
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    ix, iy = np.round(xy[:, 0]).astype(int), np.round(xy[:, 1]).astype(int)
    offsets = np.arange(-half, half + 1)
    for start in range(0, len(xy), 512):  # the discs of 512 picks at once (512 x 37 x 37 float64: 5.6 MB)
        part = slice(start, start + 512)
        dy = (iy[part, None] + offsets) - xy[part, 1:2]
        dx = (ix[part, None] + offsets) - xy[part, 0:1]
        discs = np.clip((r + 0.5 * REPICK_FEATHER_PX - np.hypot(dy[:, :, None], dx[:, None, :])) / REPICK_FEATHER_PX,
                        0.0, 1.0)
        for disc, cx, cy in zip(discs, ix[part], iy[part]):
            y0, y1, x0, x1 = max(0, cy - half), min(ny, cy + half + 1), max(0, cx - half), min(nx, cx + half + 1)
            if y0 < y1 and x0 < x1:
                np.maximum(weight[y0:y1, x0:x1], disc[y0 - cy + half:y1 - cy + half, x0 - cx + half:x1 - cx + half],
                           out=weight[y0:y1, x0:x1])
    unit = (_unit_noise(img.shape, seed) if img.size <= _CACHED_NOISE_PX
            else np.random.default_rng(seed).standard_normal(img.shape, dtype=np.float32))
    noise = unit * np.float32(sd) + np.float32(mean)
    return img + weight * (noise - img)


#: :func:`mask_picks` keeps its unit noise for network images up to this many pixels (16 MB): drawn once per job.
_CACHED_NOISE_PX = 1 << 22


@functools.lru_cache(maxsize=1)
def _unit_noise(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Standard normal float32 noise of ``shape`` from ``seed`` (read-only), the same for every image of a shape."""
    noise = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    noise.flags.writeable = False
    return noise


def map_cut(score: np.ndarray, params: PickParams) -> np.ndarray:
    """Which candidates (by map score) pass the map's cuts: ``map_threshold`` and the micrograph's own cut
    (:func:`relion_pixer.picking.adaptive_threshold` of those above ``map_threshold``, with ``map_relative`` and
    ``map_odds``). Boolean mask in the order of ``score``."""
    score = np.asarray(score, dtype=np.float64).reshape(-1)
    return score >= map_cut_value(score, params)


def map_cut_value(score: np.ndarray, params: PickParams) -> float:
    """The lowest map score a candidate needs on a micrograph whose candidates score ``score``: ``map_threshold``,
    raised by the micrograph's own cut (:func:`relion_pixer.picking.adaptive_threshold` with ``map_relative`` and
    ``map_odds``, over the scores at or above ``map_threshold``; never below it)."""
    from relion_pixer import picking

    return picking.adaptive_threshold(score, params.map_threshold, params.map_relative, odds=params.map_odds)
