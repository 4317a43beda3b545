"""Pick one micrograph: the stages of the PIXER method chained in order.

``preprocess.prepare`` (resample so the particle is :data:`relion_pixer.NET_DIAMETER_PX` pixels wide, normalise) ->
``segment.predict_probability`` (per-pixel particle probability) -> ``picking.pick_centres`` (grid local maxima) ->
``classify.classify_candidates`` (3-way classifier) -> ``decide.decide`` (figure of merit from the map's and the
classifier's evidence, the classifier weighed by how far it agrees with the map on this micrograph; the cut) ->
``preprocess.to_original`` (back to micrograph pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from relion_pixer import NET_DIAMETER_PX, preprocess
from relion_pixer.classify import BATCH_SIZE

__all__ = ["PickParams", "PickResult", "pick_micrograph", "segment_micrograph", "pick_from_map", "map_cut",
           "MARGIN_PER_DIAMETER"]

#: The default edge margin (``PickParams.margin_A`` None), in particle diameters: picks whose centre lies closer to
#: the edge are dropped. 0.4 since session 15 (``benchmarks/tune_defaults.py --set_model``, leave one set out; 0.5
#: before, which keeps only particles lying wholly inside).
MARGIN_PER_DIAMETER = 0.4


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
    net_image, prob, factors = segment_micrograph(image, angpix, diameter_A, models, params.device)
    return pick_from_map(net_image, prob, factors, diameter_A, models, params)


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
    from relion_pixer import classify, decide, picking

    min_distance_px = None
    if params.min_distance_A:
        min_distance_px = float(params.min_distance_A) * NET_DIAMETER_PX / float(diameter_A)
    margin_A = MARGIN_PER_DIAMETER * float(diameter_A) if params.margin_A is None else float(params.margin_A)
    margin_px = margin_A * NET_DIAMETER_PX / float(diameter_A)
    sigma = None if params.sigma_per_diameter is None else float(params.sigma_per_diameter) * NET_DIAMETER_PX
    cand_xy, cand_score = picking.pick_centres(prob, NET_DIAMETER_PX, min_distance_px=min_distance_px,
                                               margin_px=margin_px, threshold=params.map_threshold, sigma=sigma)
    cand_xy = np.asarray(cand_xy, dtype=np.float64).reshape(-1, 2)
    cand_score = np.asarray(cand_score, dtype=np.float64).reshape(-1)
    # suppression keeps the higher score of a close pair, so cutting afterwards equals picking with the higher cut
    passed = map_cut(cand_score, params)
    cand_xy, cand_score = cand_xy[passed], cand_score[passed]
    probs = classify.classify_candidates(models.classifier, net_image, cand_xy, device=params.device,
                                         batch_size=params.batch_size)
    decision = decide.decide(cand_score, probs, params.threshold, int(params.max_particles))
    vetoed = int(np.count_nonzero((cand_score >= params.threshold) & (decision.fom < params.threshold)))
    fom = decision.fom[decision.keep]
    xy = preprocess.to_original(cand_xy[decision.keep], factors)
    prob_np = prob.detach().float().cpu().numpy() if hasattr(prob, "detach") else np.asarray(prob, np.float32)
    return PickResult(xy=xy, fom=fom, prob_map=prob_np.astype(np.float32, copy=False), factors=factors,
                      net_image=net_image, capped=decision.capped, trust=decision.trust,
                      map_score=cand_score[decision.keep], vetoed=vetoed)


def map_cut(score: np.ndarray, params: PickParams) -> np.ndarray:
    """Which candidates (by map score) pass the map's cuts: ``map_threshold`` and the micrograph's own cut
    (:func:`relion_pixer.picking.adaptive_threshold` of those above ``map_threshold``, with ``map_relative`` and
    ``map_odds``). Boolean mask in the order of ``score``."""
    from relion_pixer import picking

    score = np.asarray(score, dtype=np.float64).reshape(-1)
    floor = score >= params.map_threshold
    cut = picking.adaptive_threshold(score[floor], params.map_threshold, params.map_relative, odds=params.map_odds)
    return floor & (score >= cut)
