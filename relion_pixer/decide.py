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
(it is unsure of most of the map's surest candidates), it cannot veto and ``fom = s``. The figure of merit stays in
[0, 1] and is never above the map score. ``threshold`` is the lowest figure of merit kept.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from relion_pixer import PARTICLE

__all__ = ["Decision", "classifier_trust", "veto", "figure_of_merit", "cut", "decide"]

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
    """

    keep: np.ndarray
    fom: np.ndarray
    trust: float
    agreement: float
    capped: int


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
    ref = s >= np.percentile(s, quantile)
    if ref.sum() < MIN_REFERENCE:
        ref = np.ones(len(s), dtype=bool)
    agreement = float(np.mean(p[ref] >= agree_p))
    trust = float(np.clip((agreement - low) / (high - low), 0.0, 1.0))
    return trust, agreement


def veto(p_particle, low: float = VETO_LOW, high: float = VETO_HIGH) -> np.ndarray:
    """How far the classifier vetoes a candidate: 1 below ``low``, 0 above ``high`` (:data:`VETO_LOW`,
    :data:`VETO_HIGH`), linear between."""
    p = np.asarray(p_particle, dtype=np.float64).reshape(-1)
    return np.clip((high - p) / (high - low), 0.0, 1.0)


def figure_of_merit(map_score, p_particle, trust: float, veto_low: float = VETO_LOW,
                    veto_high: float = VETO_HIGH) -> np.ndarray:
    """``s * (1 - trust * veto(P(particle)))``, in [0, 1]."""
    s = np.clip(np.asarray(map_score, dtype=np.float64).reshape(-1), 0.0, 1.0)
    return s * (1.0 - float(trust) * veto(p_particle, veto_low, veto_high))


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


def decide(map_score, probs, threshold: float, max_particles: int = 0) -> Decision:
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

    Returns
    -------
    Decision
    """
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, 3)
    trust, agreement = classifier_trust(map_score, probs[:, PARTICLE])
    fom = figure_of_merit(map_score, probs[:, PARTICLE], trust)
    keep, capped = cut(fom, threshold, max_particles)
    return Decision(keep, fom, trust, agreement, capped)
