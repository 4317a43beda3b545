"""The decision stage: one figure of merit from the map's evidence and the classifier's, and the cut.

The segmentation map sees particles of kinds the 3-way classifier never learned; on such a particle the classifier's
probabilities say little (on apoferritin shells it calls most of the particles the map is sure of "contamination").
So the classifier may only lower a candidate's figure of merit as far as it has shown, on this micrograph, that it
agrees with the map:

``fom = s * (1 - trust * veto(P(particle)))``, ``veto(P) = clip((VETO_HIGH - P) / (VETO_HIGH - VETO_LOW), 0, 1)``

- ``s`` is the candidate's map score (the particle-probability map smoothed by a particle-sized Gaussian, at the
  candidate's local maximum; :func:`relion_pixer.picking.pick_centres`), in [0, 1];
- ``P(particle)`` the classifier's probability;
- ``trust`` in [0, 1] is how often the classifier is sure of the micrograph's *reference* candidates: those whose
  map score reaches the micrograph's :data:`REFERENCE_QUANTILE` th percentile (all candidates when fewer than
  :data:`MIN_REFERENCE` do), the ones the map is surest of. Its agreement ``a`` (share with ``P(particle) >=``
  :data:`AGREE_P`) maps linearly onto trust: ``a <= TRUST_LOW`` gives 0 and ``a >= TRUST_HIGH`` gives 1. A
  classifier that knows the particle is sure of the map's best candidates (ribosomes: all of them); one that does
  not hesitates even where it is right (apoferritin shells: none), so it gets no say there
  (``benchmarks/tune_decision.py`` measured the choice).

Where the classifier knows the particle (agreement near 1, as on the ribosome set), a candidate it gives
``P(particle)`` below :data:`VETO_LOW` loses its figure of merit, as the paper's veto at 0.6 drops it, and one above
:data:`VETO_HIGH` keeps its map score: what it recognises as ice, carbon or background is dropped. Where it does not
(it is unsure of most of the map's surest candidates), it cannot veto and ``fom = s``.

A second, narrower veto drops what the classifier is all but sure is contamination (ice, carbon, aggregates) even where
it hesitates on the particles: the figure of merit is multiplied by ``1 - ctrust * cveto(P(contamination))``, with
``cveto`` 0 below :data:`CONT_VETO_LOW`, 1 above :data:`CONT_VETO_HIGH`, linear between. Its trust ``ctrust`` is how
rarely the classifier calls the reference candidates contamination (share with ``P(contamination) <``
:data:`CONT_AGREE_P`, mapped linearly from :data:`CONT_TRUST_LOW` to :data:`CONT_TRUST_HIGH`): on a new particle type
it takes for contamination (issue 17's hollow shells) it cannot veto. ``benchmarks/tune_veto.py`` chose it by its rule
(session 15). The figure of merit stays in [0, 1] and is never above the map score. ``threshold`` is the lowest figure
of merit kept.

Where the classifier is sure of the micrograph's best candidates it can still call fainter particles of a kind it never
saw "background" (simulated thin shells on crowded micrographs). With :data:`DARK_SPARE` set, the particle veto has no
say over a candidate the classifier calls background rather than contamination (``P(background) >=
P(contamination)``) where the image is as dark at particle scale as at the reference candidates: its darkness
(:func:`relion_pixer.preprocess.darkness_at`) at least :data:`DARK_SPARE` robust sds from theirs (median, 1.4826 MAD).
Empty ice is not dark, and what the classifier calls contamination stays vetoed (:func:`dark_spared`). It is off: its
rule (``docs/benchmarks.md``, "The decision stage") asked that it cost at most 0.02 of the ice and carbon dropped on
fresh seeds, and it cost 0.027 (one carbon candidate), while it lifted the unseen shells kept from 0.977 to 0.994.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from relion_pixer import BACKGROUND, CONTAMINATION, PARTICLE

__all__ = ["Decision", "classifier_trust", "contamination_trust", "veto", "contamination_veto", "dark_spared",
           "figure_of_merit", "cut", "decide"]

#: Percentile of a micrograph's candidate map scores above which candidates are the reference.
REFERENCE_QUANTILE = 50.0
#: Fewer reference candidates than this: all candidates are the reference.
MIN_REFERENCE = 8
#: A reference candidate counts as agreed when the classifier gives it at least this P(particle).
AGREE_P = 0.9
#: Agreement at or below which the classifier gets no say, and at or above which it gets its full say.
TRUST_LOW = 0.5
TRUST_HIGH = 0.8
#: The veto: full below this P(particle), none above :data:`VETO_HIGH`, linear between.
VETO_LOW = 0.55
VETO_HIGH = 0.6
#: A reference candidate counts as "not contamination" below this P(contamination).
CONT_AGREE_P = 0.5
#: Share of such reference candidates at or below which the contamination veto has no say, at or above which its full.
CONT_TRUST_LOW = 0.5
CONT_TRUST_HIGH = 0.8
#: The contamination veto: none below this P(contamination), full above :data:`CONT_VETO_HIGH`, linear between.
CONT_VETO_LOW = 0.9
CONT_VETO_HIGH = 0.99


#: The particle veto has no say over a candidate whose map score reaches this (None: it has a say over every one).
SPARE_MAP: float | None = None
#: The particle veto has no say over a candidate the classifier calls background rather than contamination whose
#: darkness is at least this many robust sds from the reference candidates' (None: off; :func:`dark_spared`). The
#: first pass only: what the second pass (``crowded``) adds keeps the veto.
DARK_SPARE: float | None = None


class Decision(NamedTuple):
    """The decision on one micrograph's candidates.

    Attributes
    ----------
    keep : numpy.ndarray
        Indices of the kept candidates, best figure of merit first (ties keep the input order).
    fom : numpy.ndarray
        Figure of merit of every candidate (input order).
    trust : float
        The classifier's say on this micrograph, in [0, 1].
    agreement : float
        Share of the reference candidates the classifier is sure are particles (NaN without candidates).
    capped : int
        Candidates at or above the threshold that ``max_particles`` cut.
    contamination_trust : float
        The contamination veto's say on this micrograph, in [0, 1].
    """

    keep: np.ndarray
    fom: np.ndarray
    trust: float
    agreement: float
    capped: int
    contamination_trust: float = 0.0


def _reference(s: np.ndarray, quantile: float) -> np.ndarray:
    """The reference candidates: map score at or above the ``quantile`` th percentile (all when fewer than
    :data:`MIN_REFERENCE` are)."""
    ref = s >= np.percentile(s, quantile)
    return ref if ref.sum() >= MIN_REFERENCE else np.ones(len(s), dtype=bool)


def classifier_trust(map_score, p_particle, quantile: float = REFERENCE_QUANTILE, agree_p: float = AGREE_P,
                     low: float = TRUST_LOW, high: float = TRUST_HIGH) -> tuple[float, float]:
    """``(trust, agreement)`` of the classifier on one micrograph's candidates (see the module docstring; the
    keywords default to :data:`REFERENCE_QUANTILE`, :data:`AGREE_P`, :data:`TRUST_LOW` and :data:`TRUST_HIGH`)."""
    s = np.asarray(map_score, dtype=np.float64).reshape(-1)
    p = np.asarray(p_particle, dtype=np.float64).reshape(-1)
    if len(s) != len(p):
        raise ValueError(f"{len(s)} map scores but {len(p)} classifier probabilities")
    if not len(s):
        return 1.0, float("nan")
    agreement = float(np.mean(p[_reference(s, quantile)] >= agree_p))
    trust = float(np.clip((agreement - low) / (high - low), 0.0, 1.0))
    return trust, agreement


def contamination_trust(map_score, p_contamination, low: float = CONT_TRUST_LOW,
                        high: float = CONT_TRUST_HIGH) -> float:
    """The contamination veto's say on one micrograph: the share of the reference candidates with
    ``P(contamination) <`` :data:`CONT_AGREE_P`, mapped linearly from ``low`` (0) to ``high`` (1); 0 without
    candidates."""
    s = np.asarray(map_score, dtype=np.float64).reshape(-1)
    p = np.asarray(p_contamination, dtype=np.float64).reshape(-1)
    if len(s) != len(p):
        raise ValueError(f"{len(s)} map scores but {len(p)} classifier probabilities")
    if not len(s):
        return 0.0
    share = float(np.mean(p[_reference(s, REFERENCE_QUANTILE)] < CONT_AGREE_P))
    return float(np.clip((share - low) / (high - low), 0.0, 1.0))


def veto(p_particle, low: float = VETO_LOW, high: float = VETO_HIGH) -> np.ndarray:
    """How far the classifier vetoes a candidate: 1 below ``low``, 0 above ``high`` (:data:`VETO_LOW`,
    :data:`VETO_HIGH`), linear between."""
    p = np.asarray(p_particle, dtype=np.float64).reshape(-1)
    return np.clip((high - p) / (high - low), 0.0, 1.0)


def contamination_veto(p_contamination, low: float = CONT_VETO_LOW, high: float = CONT_VETO_HIGH) -> np.ndarray:
    """How far the classifier's contamination call vetoes a candidate: 0 below ``low``, 1 above ``high``
    (:data:`CONT_VETO_LOW`, :data:`CONT_VETO_HIGH`), linear between."""
    p = np.asarray(p_contamination, dtype=np.float64).reshape(-1)
    return np.clip((p - low) / (high - low), 0.0, 1.0)


def dark_spared(map_score, probs, darkness, floor: float | None) -> np.ndarray:
    """Which candidates the particle veto spares: the classifier calls them background rather than contamination
    (``probs``: ``N x 3``, background, particle, contamination) and their ``darkness``
    (:func:`relion_pixer.preprocess.darkness_at`), in robust sds (1.4826 MAD) from the median of the reference
    candidates' (the map's better half, as for :func:`classifier_trust`), is at least ``floor`` (:func:`decide` passes
    :data:`DARK_SPARE`; None: no candidate is spared)."""
    s = np.asarray(map_score, dtype=np.float64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64).reshape(-1, 3)
    dark = np.asarray(darkness, dtype=np.float64).reshape(-1)
    if not len(s) == len(p) == len(dark):
        raise ValueError(f"{len(s)} map scores, {len(p)} classifier probabilities and {len(dark)} darknesses")
    if floor is None or not len(s):
        return np.zeros(len(s), dtype=bool)
    ref = dark[_reference(s, REFERENCE_QUANTILE)]
    med = np.median(ref)
    sd = 1.4826 * np.median(np.abs(ref - med)) or 1.0
    return (p[:, BACKGROUND] >= p[:, CONTAMINATION]) & ((dark - med) / sd >= float(floor))


def figure_of_merit(map_score, p_particle, trust: float, veto_low: float = VETO_LOW,
                    veto_high: float = VETO_HIGH, p_contamination=None, ctrust: float = 0.0,
                    cveto_low: float = CONT_VETO_LOW, cveto_high: float = CONT_VETO_HIGH,
                    spare: float | None = SPARE_MAP, spared=None) -> np.ndarray:
    """``s * (1 - trust * veto(P(particle))) * (1 - ctrust * contamination_veto(P(contamination)))``, in [0, 1]
    (without ``p_contamination``, the first two factors alone); the particle veto is 0 where ``s >= spare``
    (:data:`SPARE_MAP`; None: nowhere) and where the boolean ``spared`` is true (:func:`dark_spared`)."""
    s = np.clip(np.asarray(map_score, dtype=np.float64).reshape(-1), 0.0, 1.0)
    v = veto(p_particle, veto_low, veto_high)
    if spare is not None:
        v = np.where(s >= float(spare), 0.0, v)
    if spared is not None:
        v = np.where(np.asarray(spared, dtype=bool).reshape(-1), 0.0, v)
    fom = s * (1.0 - float(trust) * v)
    if p_contamination is not None:
        fom = fom * (1.0 - float(ctrust) * contamination_veto(p_contamination, cveto_low, cveto_high))
    return fom


def cut(fom, threshold: float, max_particles: int = 0) -> tuple[np.ndarray, int]:
    """Indices of the figures of merit at or above ``threshold``, best first (ties keep the input order), at most
    ``max_particles`` of them (0: no cap), and how many the cap cut."""
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    max_particles = int(max_particles)
    if max_particles < 0:
        raise ValueError(f"max_particles must be >= 0 (0 = no cap), got {max_particles}")
    fom = np.asarray(fom, dtype=np.float64).reshape(-1)
    keep = np.flatnonzero(fom >= threshold)
    keep = keep[np.argsort(-fom[keep], kind="stable")]
    capped = max(0, len(keep) - max_particles) if max_particles else 0
    return (keep[:max_particles] if max_particles else keep), capped


def decide(map_score, probs, threshold: float, max_particles: int = 0, darkness=None) -> Decision:
    """Figures of merit of one micrograph's candidates and which to keep.

    Parameters
    ----------
    map_score : array_like
        ``N`` map scores in [0, 1].
    probs : array_like
        ``N x 3`` classifier probabilities (background, particle, contamination).
    threshold : float
        Lowest figure of merit kept, in [0, 1].
    max_particles : int
        At most this many, the best; 0: no cap.
    darkness : array_like, optional
        ``N`` darknesses (:func:`relion_pixer.preprocess.darkness_at`) for :data:`DARK_SPARE`; without them (or with
        it None) no candidate is spared.

    Returns
    -------
    Decision
    """
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, 3)
    trust, agreement = classifier_trust(map_score, probs[:, PARTICLE])
    ctrust = contamination_trust(map_score, probs[:, CONTAMINATION])
    spared = None if darkness is None else dark_spared(map_score, probs, darkness, DARK_SPARE)
    fom = figure_of_merit(map_score, probs[:, PARTICLE], trust, p_contamination=probs[:, CONTAMINATION], ctrust=ctrust,
                          spared=spared)
    keep, capped = cut(fom, threshold, max_particles)
    return Decision(keep, fom, trust, agreement, capped, ctrust)
