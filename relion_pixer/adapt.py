"""Self-training inside the picking job (``adapt Yes``): the networks fine-tuned on the job's own micrographs.

No labels are asked of the user. The general networks pick a sample of the job's micrographs (all of them for a
small job, :attr:`AdaptConfig.sample` spread over a larger one) and their surest calls become labels
(:func:`pseudo_labels`), at network scale as :mod:`relion_pixer.train` uses them:

- *particle*: a disc of 0.45 diameters at each of the job's picks (the defaults) whose figure of merit reaches
  both :attr:`AdaptConfig.confident_fom` and the :attr:`AdaptConfig.confident_quantile` th percentile of the
  micrograph's picks (the networks' surest, on data where they are sure of few), with the ring out to 0.9
  diameters background (``train._disc_labels``);
- *background*: pixels more than 0.9 diameters from every candidate the map offers (any local maximum scoring at
  least 0.05), where the segmenter gives background at least :attr:`AdaptConfig.background_prob` and nothing as
  dark as a confident particle lies within half a diameter (``train.far_background``, its 10th percentile), so
  that a particle the networks miss is not taught as background;
- *contamination*: pixels the segmenter calls contamination with at least :attr:`AdaptConfig.contamination_prob`,
  more than 0.6 diameters from a confident particle;
- everything else, the disc around each candidate the networks are unsure of and a half-diameter band along the
  edges, is ignored (:data:`relion_pixer.train.IGNORE`).

The networks are then fine-tuned briefly on them with a simulated replay, with train.py's own machinery
(``box_samples``, ``box_weights``, ``fit_classifier``, ``fit_segmenter``; the pseudo-labelled set weighs
:attr:`AdaptConfig.user_fraction`, the replay the rest).

Guard against self-confirmation and collapse: a share :attr:`AdaptConfig.holdout` of each micrograph's tiles (a 4 x 4
grid) is held out of training. On those tiles the adapted networks pick as the job would, and their *agreement* with
the held-out pseudo-labels is measured: ``2 tp / (2 tp + missed + false)``, ``tp`` the confident particles they pick
(within half a diameter), ``missed`` those they lose, ``false`` their picks on pseudo-background or contamination. The
general networks agree fully by construction, so a low agreement means the adapted ones drifted. They are kept only
if the agreement is at least :attr:`AdaptConfig.min_agreement` and their number of picks on the held-out tiles
neither rises by more than :attr:`AdaptConfig.max_count_change` nor falls by more than
:attr:`AdaptConfig.max_count_fall` against the general networks', and if on no micrograph of the sample their picks
rise beyond :attr:`AdaptConfig.max_micrograph_rise` (plus :attr:`AdaptConfig.micrograph_rise_slack` picks); otherwise
the job reverts to the general networks and says so.

The adapted networks are written to the job directory (:data:`MODEL_FILE`, a model file ``--model`` reads, its
``meta["adapted"]`` saying what it was adapted on) and the outcome to :data:`NOTE_FILE`; Continue reads them back
and does not adapt again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io as _stdio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from relion_pixer import BACKGROUND, CONTAMINATION, NET_DIAMETER_PX, PARTICLE

__all__ = ["AdaptConfig", "AdaptResult", "MODEL_FILE", "NOTE_FILE", "pseudo_labels", "adapt_models", "for_job",
           "pick_with"]

#: The adapted networks, in the job directory.
MODEL_FILE = "adapted_model.pt"
#: What adaptation did (adapted or reverted, its figures), in the job directory; Continue reads it.
NOTE_FILE = "pixer_adapt.json"
#: Side of the grid of tiles the hold-out is drawn from.
GRID = 4


@dataclass(frozen=True)
class AdaptConfig:
    """Settings of one adaptation (the defaults are the job's).

    Attributes
    ----------
    sample : int
        Micrographs pseudo-labelled, spread evenly over the job (all of them when it has no more).
    confident_fom : float
        Lowest figure of merit of a pick taken as a particle.
    confident_quantile : float
        A pick taken as a particle also reaches this percentile of its micrograph's picks' figures of merit.
    dark_percentile : float
        Background must lie half a diameter from anything as dark as this percentile of the confident particles.
    background_prob : float
        Lowest segmenter P(background) of a pixel taken as background (away from every candidate).
    contamination_prob : float
        Lowest segmenter P(contamination) of a pixel taken as contamination.
    min_particles : int
        Fewer confident particles in the sample than this: nothing to learn from, no adaptation.
    holdout : float
        Share of each micrograph's tiles held out of training for the agreement check.
    min_agreement : float
        Lowest agreement of the adapted networks with the held-out pseudo-labels that keeps them.
    max_count_change : float
        Largest relative rise of the number of picks on the held-out tiles that keeps them.
    max_count_fall : float
        Largest relative fall of that number that keeps them: networks that self-train on the confident picks can
        learn to drop the fainter particles the general networks found. On crowded simulated micrographs picked at
        1.25x the particles' diameter, adapting lost 0.02-0.045 F1 while the agreement stayed high and the picks
        there fell by 8-12 %. The 7 % bound was chosen by the rule in ``benchmarks/bench_adapt.py`` (session 25,
        ``--crowd_sets``), before the run that decided it: on fresh seeds it reverted those cases and changed
        nothing on the real sets.
    max_micrograph_rise, micrograph_rise_slack : float or None, int
        One micrograph at a time: the adapted networks are not kept if, on any micrograph of the sample (all its
        tiles), they pick more than ``(1 + max_micrograph_rise)`` times the general networks' picks plus
        ``micrograph_rise_slack`` (None: no such bound). Self-training can make the map see particles in the noise
        of one low-contrast micrograph while the others, and so the pooled count on the held-out tiles, stay as
        they were (on a simulated family no network saw, 39 picks against 19 on one micrograph, F1 -0.044). The
        bound, the pooled bound on a rise applied to each micrograph, was shipped by the rule in
        ``benchmarks/bench_adapt.py`` (session 26), before the run that decided it: on fresh seeds it reverted one
        case that lost 0.023 and changed no other, real sets included.
    second_pass : bool
        The pseudo-labels and the guard see the job's picks with its second pass (``PickParams.repick``, the
        job's default since session 24): the particles it adds are not taught as the background ring of their
        confident neighbours, and the held-out picks are counted as the job makes them. False (the default): one
        pass. Measured on crowded simulated micrographs (``docs/adapt.md``), it made the adapted networks better but
        left the guard's bound on a fall of picks nothing to catch, so the job's adapt is no better on average.
    cls_steps, cls_batch, cls_lr : int, int, float
        Classifier fine-tuning.
    seg_steps, seg_batch, seg_crop, seg_lr : int, int, int, float
        Segmenter fine-tuning.
    replay, replay_size : int
        Simulated micrographs in the replay, and their side at network scale.
    user_fraction : float
        Share of the pseudo-labelled data in the classifier's boxes (per class) and the segmenter's crops.
    seed : int
        Everything random (hold-out, replay, batches) follows it.
    rounds : int
        Rounds of self-training. Round ``k > 1`` takes its pseudo-labels from round ``k - 1``'s networks (on the same
        micrographs, the same tiles held out), fine-tunes the general networks on them again, and is kept only if
        its networks pass the guard (agreement with round ``k - 1``'s held-out pseudo-labels; their number of picks
        there against the general networks'); otherwise the last kept round's networks stand.
    reestimate : bool
        When the adapted networks are kept and the job estimates the particle size, measure it again with them (on
        the job's first micrographs, :func:`relion_pixer.size.estimate_diameter`) and pick at the blend of the
        diameter given and that estimate (:func:`relion_pixer.size.picking_diameter`): networks that learned the
        user's particles see their size better than the general ones (``benchmarks/tune_adapt.py --round 3`` chose it,
        session 15: networks that never saw apoferritin picked it at 1.18x its diameter, at 1.11x once adapted).
    reestimate_nearer : bool
        With :attr:`reestimate`, take the diameter measured again only where it brings the picking diameter nearer
        (in log scale) to the diameter given; otherwise the job picks at the first one. Networks fine-tuned on their
        own picks at the first estimate's scale can carry its error further (on a simulated family no network saw,
        153 A -> 175 A for a 128 A particle, F1 -0.075 against not measuring again), while a measure that moves back
        toward the user's diameter corrects the general networks' (apoferritin never seen: 142 A -> 133 A for 120 A).
        Shipped by the rule in ``benchmarks/bench_adapt.py`` (session 26), before the run that decided it: on fresh
        seeds it acted three times, F1 +0.012, +0.031 and +0.002, and changed nothing else.
    """

    sample: int = 12
    confident_fom: float = 0.3
    confident_quantile: float = 40.0
    dark_percentile: float = 10.0
    background_prob: float = 0.95
    contamination_prob: float = 0.9
    min_particles: int = 20
    holdout: float = 0.25
    min_agreement: float = 0.9
    max_count_change: float = 0.3
    max_count_fall: float = 0.07
    max_micrograph_rise: float | None = 0.3
    micrograph_rise_slack: int = 10
    second_pass: bool = False
    cls_steps: int = 100
    cls_batch: int = 32
    cls_lr: float = 3e-4
    seg_steps: int = 120
    seg_batch: int = 6
    seg_crop: int = 96
    seg_lr: float = 3e-4
    replay: int = 24
    replay_size: int = 256
    user_fraction: float = 0.5
    seed: int = 0
    rounds: int = 1
    reestimate: bool = True
    reestimate_nearer: bool = True


#: The job's settings (tests shorten them).
DEFAULTS = AdaptConfig()


@dataclass
class AdaptResult:
    """Outcome of :func:`adapt_models`.

    Attributes
    ----------
    models : relion_pixer.models.PixerModels or None
        The adapted networks (unfused, eval mode, on the CPU), None when adaptation was skipped.
    kept : bool
        Whether the adapted networks passed the guard (False: pick with the general networks).
    reason : str
        Why they were kept, rejected or not made, in words for run.out.
    figures : dict
        Pseudo-label counts, agreement, pick counts on the held-out tiles, seconds per stage.
    """

    models: object
    kept: bool
    reason: str
    figures: dict


# ------------------------------------------------------------------------------------------------ pseudo-labels
def pseudo_labels(net_image: np.ndarray, class_probs: np.ndarray, cand_xy: np.ndarray, cand_fom: np.ndarray,
                  picked: np.ndarray, cfg: AdaptConfig = DEFAULTS) -> tuple[np.ndarray, np.ndarray]:
    """Label map and confident particle centres of one micrograph from the general networks' own calls.

    Parameters
    ----------
    net_image : numpy.ndarray
        The normalised network-scale image.
    class_probs : numpy.ndarray
        ``3 x H x W`` segmenter probabilities (background, particle, contamination).
    cand_xy : numpy.ndarray
        ``N x 2`` candidate centres at network scale: every local maximum of the map the networks offer.
    cand_fom : numpy.ndarray
        ``N`` figures of merit.
    picked : numpy.ndarray
        ``N`` bool: which candidates the job picks at its settings.
    cfg : AdaptConfig

    Returns
    -------
    labels : numpy.ndarray
        uint8 ``H x W``: 0/1/2 and :data:`relion_pixer.train.IGNORE` (see the module docstring).
    particles : numpy.ndarray
        ``M x 2`` float32 confident particle centres (network scale).
    """
    from scipy.ndimage import distance_transform_edt

    from relion_pixer.preprocess import nearest_pixels
    from relion_pixer.train import IGNORE, _disc_labels, far_background

    shape = np.asarray(net_image).shape
    probs = np.asarray(class_probs, np.float32)
    if probs.shape != (3,) + tuple(shape):
        raise ValueError(f"class probabilities of shape {probs.shape} for an image of shape {shape}")
    xy = np.asarray(cand_xy, np.float64).reshape(-1, 2)
    fom = np.asarray(cand_fom, np.float64).reshape(-1)
    picked = np.asarray(picked, bool).reshape(-1)
    sure = np.zeros(len(xy), bool)
    if picked.any():
        sure = picked & (fom >= max(cfg.confident_fom, float(np.percentile(fom[picked], cfg.confident_quantile))))
    labels = _disc_labels(shape, xy[sure], NET_DIAMETER_PX)

    def distance_to(points: np.ndarray) -> np.ndarray:
        if not len(points):
            return np.full(shape, np.inf)
        free = np.ones(shape, bool)
        free[nearest_pixels(points, shape)] = False
        return distance_transform_edt(free)

    to_any = distance_to(xy)
    far = (labels == IGNORE) & (to_any > 0.9 * NET_DIAMETER_PX) & (probs[BACKGROUND] >= cfg.background_prob)
    if sure.any():
        far &= far_background(np.asarray(net_image, np.float32), xy[sure], cfg.dark_percentile, 0.9)
    else:  # nothing tells how dark a particle is here: no background beyond the rings either
        far[:] = False
    labels[far] = BACKGROUND
    contamination = (probs[CONTAMINATION] >= cfg.contamination_prob) & (distance_to(xy[sure]) > 0.6 * NET_DIAMETER_PX)
    labels[contamination] = CONTAMINATION
    unsure = (distance_to(xy[~sure]) <= 0.6 * NET_DIAMETER_PX) & (labels != PARTICLE)
    labels[unsure] = IGNORE
    edge = int(round(0.5 * NET_DIAMETER_PX))
    labels[:edge], labels[-edge:], labels[:, :edge], labels[:, -edge:] = IGNORE, IGNORE, IGNORE, IGNORE
    return labels, xy[sure].astype(np.float32)


def _held_out_tiles(shape: tuple, rng: np.random.Generator, share: float) -> np.ndarray:
    """Bool map: the tiles of a :data:`GRID` x :data:`GRID` grid held out (at least one, ``share`` of them)."""
    n = max(1, int(round(share * GRID * GRID)))
    chosen = rng.choice(GRID * GRID, n, replace=False)
    held = np.zeros(shape, bool)
    ys = np.linspace(0, shape[0], GRID + 1).astype(int)
    xs = np.linspace(0, shape[1], GRID + 1).astype(int)
    for t in chosen:
        i, j = divmod(int(t), GRID)
        held[ys[i]:ys[i + 1], xs[j]:xs[j + 1]] = True
    return held


def _inside(xy: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from relion_pixer.preprocess import nearest_pixels

    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    return mask[nearest_pixels(xy, mask.shape)] if len(xy) else np.zeros(0, bool)


def agreement(picks: Sequence[np.ndarray], labels: Sequence[np.ndarray], particles: Sequence[np.ndarray],
              held: Sequence[np.ndarray]) -> dict:
    """Agreement of picks (network scale, per micrograph) with the pseudo-labels on the held-out tiles.

    Returns ``{"agreement", "tp", "missed", "false", "picks"}`` (see the module docstring); the agreement is NaN
    without any held-out particle or pick.
    """
    from scipy.spatial import cKDTree

    from relion_pixer.preprocess import nearest_pixels

    tp = missed = false = n = 0
    for xy, lab, conf, h in zip(picks, labels, particles, held):
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        xy = xy[_inside(xy, h)]
        conf = np.asarray(conf, np.float64).reshape(-1, 2)
        conf = conf[_inside(conf, h)]
        n += len(xy)
        hit = 0
        if len(conf) and len(xy):
            hit = int(np.isfinite(cKDTree(xy).query(conf, distance_upper_bound=0.5 * NET_DIAMETER_PX)[0]).sum())
        tp += hit
        missed += len(conf) - hit
        if len(xy):
            under = lab[nearest_pixels(xy, lab.shape)]
            false += int(np.isin(under, (BACKGROUND, CONTAMINATION)).sum())
    denominator = 2 * tp + missed + false
    return {"agreement": 2 * tp / denominator if denominator else float("nan"), "tp": tp, "missed": missed,
            "false": false, "picks": n}


# ------------------------------------------------------------------------------------------------ adaptation
def _picker(second_pass: bool):
    """How adaptation picks as the job does: :func:`relion_pixer.pipeline.pick_segmented` (with
    ``PickParams.repick``, the job's second pass) or, as before session 25, one pass (``pick_from_map``)."""
    from relion_pixer.pipeline import pick_from_map, pick_segmented

    return pick_segmented if second_pass else pick_from_map


def _second_pass(cfg: AdaptConfig, params) -> bool:
    """Whether adaptation's pseudo-labels and guard see the job's second pass: :attr:`AdaptConfig.second_pass`, where
    the job makes the pass (``params.repick``)."""
    return bool(cfg.second_pass and params.repick)


def _candidates(net_image, models, factors, diameter_A: float, params, device: str, second_pass: bool = False):
    """What the general networks make of one network-scale image: every candidate the map offers (score >= 0.05,
    no relative cut; network scale), their figures of merit (the job's for those it picks: the decision's trust
    depends on the candidate set), the segmenter's class probabilities, which candidates the job picks, and the
    job's picks (network scale). With ``second_pass`` the job's picks include its second pass's, and those no
    candidate stands at join the candidates."""
    from relion_pixer.pipeline import pick_from_map
    from relion_pixer.preprocess import to_network
    from relion_pixer.segment import predict_probability

    probs = predict_probability(models.segmenter, net_image, device, all_classes=True)
    loose = dataclasses.replace(params, threshold=0.0, map_threshold=0.05, map_relative=0.0, map_odds=0.0,
                                max_particles=0)
    every = pick_from_map(net_image, probs[PARTICLE], factors, diameter_A, models, loose)
    job = _picker(second_pass)(net_image, probs[PARTICLE], factors, diameter_A, models, params)
    every_xy, job_xy = to_network(every.xy, factors), to_network(job.xy, factors)
    picked, fom = np.zeros(len(every_xy), bool), np.asarray(every.fom, np.float64).copy()
    job_fom = np.asarray(job.fom, np.float64)
    if len(job_xy) and len(every_xy):
        from scipy.spatial import cKDTree

        dist, which = cKDTree(job_xy).query(every_xy)
        picked = dist < 0.5
        fom[picked] = job_fom[which[picked]]
        if second_pass:
            alone = cKDTree(every_xy).query(job_xy)[0] >= 0.5
            every_xy = np.concatenate([every_xy, job_xy[alone]])
            fom = np.concatenate([fom, job_fom[alone]])
            picked = np.concatenate([picked, np.ones(int(alone.sum()), bool)])
    return every_xy, fom, probs.float().cpu().numpy(), picked, job_xy


def _job_picks(models, images: list, factors: list, diameter_A: float, params, device: str,
               second_pass: bool = False) -> list:
    """The picks (network scale) a job would make with ``models`` on the network-scale images (with
    ``second_pass``, its second pass included)."""
    from relion_pixer.preprocess import to_network
    from relion_pixer.segment import predict_probability

    out = []
    for net, f in zip(images, factors):
        prob = predict_probability(models.segmenter, net, device)
        out.append(to_network(_picker(second_pass)(net, prob, f, diameter_A, models, params).xy, f))
    return out


def adapt_models(micrographs: Iterable[tuple[np.ndarray, float]], diameter_A: float, general, init_path, params,
                 cfg: AdaptConfig = DEFAULTS, info: Callable[[str], None] = print, stop=None,
                 names: Sequence[str] | None = None) -> AdaptResult:
    """Fine-tune the networks on pseudo-labels from ``micrographs`` and check them on the held-out ones.

    Parameters
    ----------
    micrographs : iterable of (image, angpix)
        The sample (particles dark), read once: a generator keeps one full-size micrograph in memory at a time.
    diameter_A : float
        The diameter the job picks at (Angstrom).
    general : relion_pixer.models.PixerModels
        The general networks as the job picks with them (on ``params.device``, eval mode).
    init_path : str or Path or None
        Their model file (None: the shipped weights), loaded again unfused for training.
    params : relion_pixer.pipeline.PickParams
        The job's picking settings (``params.device`` is where everything runs).
    cfg : AdaptConfig
    info : callable
        Receives a line per stage (run.out).
    stop : callable, optional
        Called after every fine-tuning step; when it returns True, :class:`relion_pixer.relion.AbortRequested` is
        raised (RELION's Abort).
    names : sequence of str, optional
        The micrographs' names, for run.out's line on a skipped one (it may be filled as ``micrographs`` is read:
        a micrograph's name is looked up once it has been read).

    Returns
    -------
    AdaptResult
        A micrograph the job cannot pick is skipped (``figures["skipped"]``: its place in ``micrographs`` and why).
        With :attr:`AdaptConfig.rounds` > 1, the last kept round's networks; ``figures["rounds"]`` holds each later
        round's figures.
    """
    import torch

    from relion_pixer.preprocess import check_fits, prepare

    device = params.device
    rng = np.random.default_rng(cfg.seed)
    figures: dict = {"seconds": {}}
    t0 = time.perf_counter()
    images, factors, held, teacher = [], [], [], []
    for k, (image, angpix) in enumerate(micrographs):
        # a micrograph the job cannot pick (smaller than the particle, or refused at network scale: too few pixels
        # across the particle, too large once resampled, no contrast left) is skipped here as the job skips it, not
        # allowed to fail the whole job before any micrograph is picked
        try:
            check_fits(diameter_A, angpix, np.shape(image))
            net, f = prepare(image, angpix, diameter_A)
            labelled = _pseudo_labelled(net, general, f, diameter_A, params, device, cfg)
        except ValueError as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            figures.setdefault("skipped", []).append({"sample": k, "reason": why})
            name = names[k] if names is not None and k < len(names) else f"micrograph {k + 1} of the sample"
            info(f" + adapt: {name} skipped, as picking skips it: {why}")
            continue
        teacher.append(labelled)
        images.append(net)
        factors.append(f)
        held.append(_held_out_tiles(net.shape, rng, cfg.holdout))
    if not images:
        why = (f"none of the {len(figures['skipped'])} micrograph(s) of the sample can be picked"
               if figures.get("skipped") else "no readable micrograph with a pixel size to adapt on")
        return AdaptResult(None, False, why, figures)
    sample = _Sample(images, factors, held, diameter_A, params, rng, [t[2] for t in teacher], stop=stop)
    result = _fine_tune(sample, teacher, init_path, cfg, figures, t0, info, "")
    if not result.kept:
        return result
    figures["rounds"] = []
    for k in range(2, int(cfg.rounds) + 1):
        t0 = time.perf_counter()
        with torch.inference_mode():
            result.models.to(device)
            teacher = [_pseudo_labelled(net, result.models, f, diameter_A, params, device, cfg)
                       for net, f in zip(images, factors)]
            result.models.to("cpu")
        later = _fine_tune(sample, teacher, init_path, cfg, {"seconds": {}}, t0, info, f" (round {k})")
        figures["rounds"].append({"kept": later.kept, "reason": later.reason, **later.figures})
        if not later.kept:
            info(f" + adapt (round {k}): networks not kept ({later.reason}); round {k - 1}'s stand")
            break
        result = AdaptResult(later.models, True, later.reason, figures)
    return result


@dataclass
class _Sample:
    """The network-scale micrographs one adaptation learns from, what is held out of them, and its random state."""

    images: list
    factors: list
    held: list
    diameter_A: float
    params: object
    rng: np.random.Generator
    general_picks: list
    replay: object = None
    stop: object = None  # called after every training step; True stops adapting (relion.AbortRequested)


def _pseudo_labelled(net, teacher, factor, diameter_A: float, params, device: str, cfg: AdaptConfig):
    """One network-scale micrograph's pseudo-labels from the ``teacher`` networks: (labels, confident particles,
    the teacher's job picks at network scale)."""
    cand_xy, cand_fom, probs, picked, picks = _candidates(net, teacher, factor, diameter_A, params, device,
                                                          _second_pass(cfg, params))
    lab, conf = pseudo_labels(net, probs, cand_xy, cand_fom, picked, cfg)
    return lab, conf, picks


def _fine_tune(sample: _Sample, teacher: list, init_path, cfg: AdaptConfig, figures: dict, t0: float, info,
               which: str) -> AdaptResult:
    """One round: the general networks (``init_path``) fine-tuned on the ``teacher``'s pseudo-labels (a list of
    :func:`_pseudo_labelled` per micrograph) and checked against the teacher on the held-out tiles."""
    import torch

    from relion_pixer import train
    from relion_pixer.models import PixerModels, load_pretrained
    from relion_pixer.preprocess import cut_boxes

    images, held, rng, device = sample.images, sample.held, sample.rng, sample.params.device
    labels, particles, teacher_picks = (list(x) for x in zip(*teacher))
    n_conf = int(sum(len(p) for p in particles))
    counts = np.bincount(np.concatenate([lab.ravel() for lab in labels]), minlength=256)
    figures.update(micrographs=len(images), confident_particles=n_conf,
                   background_pixels=int(counts[BACKGROUND]), contamination_pixels=int(counts[CONTAMINATION]),
                   ignored_share=float(counts[train.IGNORE] / max(1, counts.sum())))
    figures["seconds"]["pseudo_labels"] = time.perf_counter() - t0
    info(f" + adapt{which}: pseudo-labels from {len(images)} micrograph(s): {n_conf} confident particles, "
         f"{counts[BACKGROUND]} background and {counts[CONTAMINATION]} contamination pixels at network scale "
         f"({figures['ignored_share']:.0%} ignored), {figures['seconds']['pseudo_labels']:.1f} s")
    if n_conf < cfg.min_particles:
        return AdaptResult(None, False, f"only {n_conf} confident particles (at least {cfg.min_particles} needed)",
                           figures)

    # ---- training sets: the held-out tiles' labels are hidden from training
    train_labels, train_particles = [], []
    for lab, conf, h in zip(labels, particles, held):
        hidden = lab.copy()
        hidden[h] = train.IGNORE
        train_labels.append(hidden)
        train_particles.append(conf[~_inside(conf, h)])
    user = train.LabelledSet(images, train_labels, train_particles, None, [f"sample{i}" for i in range(len(images))])
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    if sample.replay is None:  # made once, shared by the rounds
        t0 = time.perf_counter()
        sample.replay = train.simulated_set(cfg.replay, cfg.replay_size, cfg.seed, progress=False)
        figures["seconds"]["replay"] = time.perf_counter() - t0
        info(f" + adapt: {len(sample.replay)} simulated replay micrographs, {figures['seconds']['replay']:.1f} s")
    replay = sample.replay

    # ---- fine-tuning with train.py's machinery, its step lines kept out of run.out
    t0 = time.perf_counter()
    init = load_pretrained(init_path, fuse=False)
    classifier, segmenter = init.classifier.to(device), init.segmenter.to(device)
    boxes, classes, mine = [], [], []
    for k, data in enumerate((replay, user)):
        xyz, cls = train.box_samples(data, rng)
        boxes.append(cut_boxes(data.images, xyz, box=classifier.input_size, jitter=2.0, rng=rng))
        classes.append(cls)
        mine.append(np.full(len(cls), k == 1))
    classes_np, mine_np = np.concatenate(classes), np.concatenate(mine)
    def poll(step, loss, opt):
        if sample.stop is not None and sample.stop():
            from relion_pixer import relion

            raise relion.AbortRequested()

    with contextlib.redirect_stdout(_stdio.StringIO()):
        train.fit_classifier(classifier, np.concatenate(boxes), classes_np, cfg.cls_steps, cfg.cls_batch, cfg.cls_lr,
                             gen, torch.device(device), on_step=poll,
                             sample_weights=train.box_weights(classes_np, mine_np, cfg.user_fraction))
        train.fit_segmenter(segmenter, [(user, cfg.user_fraction), (replay, 1.0 - cfg.user_fraction)], cfg.seg_steps,
                            cfg.seg_batch, cfg.seg_crop, cfg.seg_lr, gen, torch.device(device), on_step=poll)
    classifier.eval()
    segmenter.eval()
    adapted = PixerModels(classifier, segmenter, {})
    figures["seconds"]["fine_tune"] = time.perf_counter() - t0
    info(f" + adapt{which}: networks fine-tuned ({cfg.cls_steps} classifier and {cfg.seg_steps} segmenter steps, "
         f"{int(mine_np.sum())} pseudo-labelled boxes beside {int((~mine_np).sum())} simulated), "
         f"{figures['seconds']['fine_tune']:.1f} s")

    # ---- the guard: agreement with the teacher on the held-out tiles; their number of picks against the general
    # networks' (the same as the teacher's in round 1), so that rounds cannot drift step by step
    t0 = time.perf_counter()
    with torch.inference_mode():
        adapted_picks = _job_picks(adapted, images, sample.factors, sample.diameter_A, sample.params, device,
                                   _second_pass(cfg, sample.params))
    after = agreement(adapted_picks, labels, particles, held)
    before = agreement(teacher_picks, labels, particles, held)
    general_count = agreement(sample.general_picks, labels, particles, held)["picks"]
    change = (after["picks"] - general_count) / max(1, general_count)
    per_mic = [[len(g), len(a)] for g, a in zip(sample.general_picks, adapted_picks)]
    figures.update(agreement_adapted=after, agreement_general=before, held_out_count_change=change,
                   micrograph_picks=per_mic)
    figures["seconds"]["check"] = time.perf_counter() - t0
    ok_agree = np.isfinite(after["agreement"]) and after["agreement"] >= cfg.min_agreement
    ok_count = -cfg.max_count_fall <= change <= cfg.max_count_change
    risen = [] if cfg.max_micrograph_rise is None else [
        k for k, (g, a) in enumerate(per_mic) if a > (1.0 + cfg.max_micrograph_rise) * g + cfg.micrograph_rise_slack]
    teacher_name = "general networks" if not which else "previous round's networks"
    reason = (f"agreement with the held-out pseudo-labels {after['agreement']:.3f} ({teacher_name} "
              f"{before['agreement']:.3f}; at least {cfg.min_agreement:g} needed), picks on the held-out tiles "
              f"{after['picks']} against the general networks' {general_count} ({change:+.0%}; at most "
              f"{cfg.max_count_change:.0%} more and {cfg.max_count_fall:.0%} fewer)")
    if risen:
        g, a = per_mic[risen[0]]
        reason += (f"; on {len(risen)} micrograph(s) of the sample the picks rose beyond {1 + cfg.max_micrograph_rise:g}"
                   f" times the general networks' plus {cfg.micrograph_rise_slack} (the first, the sample's micrograph "
                   f"{risen[0] + 1}: {a} picks against {g})")
    adapted.classifier.cpu()
    adapted.segmenter.cpu()
    return AdaptResult(adapted, bool(ok_agree and ok_count and not risen), reason, figures)


# ------------------------------------------------------------------------------------------------ the job
def pick_with(models):
    """A job pick function (``pick_fn(image, angpix, diameter_A, params)``) that picks with ``models``."""
    from relion_pixer.pipeline import pick_micrograph

    def pick(image, angpix, diameter_A, params):
        return pick_micrograph(image, angpix, diameter_A, models, params)

    pick.models = models
    return pick


def _sample_indices(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all of them when ``n <= k``)."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, k)})


def for_job(entries, diameter_A: float, invert: bool, init_path, general, params, job_dir: Path, info, warn,
            cfg: AdaptConfig | None = None, given_A: float | None = None, stop=None):
    """The networks a job with ``adapt Yes`` picks with: adapted ones (made now, or kept from a first run) or,
    when the guard rejects them, the general ones; and the diameter to pick at with them.

    Parameters
    ----------
    entries : sequence of relion_pixer.io.MicrographEntry
        Every micrograph of the job, in order.
    diameter_A : float
        The diameter the job picks at.
    invert : bool
        The job's ``invert``.
    init_path : str or None
        The job's ``model`` (None: the shipped weights).
    general : relion_pixer.models.PixerModels
        The networks loaded for picking, on ``params.device``.
    params : relion_pixer.pipeline.PickParams
    job_dir : Path
    info, warn : callable
        run.out and run.err lines.
    cfg : AdaptConfig, optional
        Default :data:`DEFAULTS`.
    given_A : float, optional
        The diameter the user gave, when the job estimates the particle size: with
        :attr:`AdaptConfig.reestimate`, kept adapted networks measure it again (kept in :data:`NOTE_FILE`).

    Returns
    -------
    (relion_pixer.models.PixerModels, float)
        The networks and the diameter to pick at (``diameter_A`` unless the size was measured again).
    """
    from relion_pixer import io
    from relion_pixer.models import load_pretrained, save_models

    cfg = cfg or DEFAULTS
    model_path, note_path = Path(job_dir) / MODEL_FILE, Path(job_dir) / NOTE_FILE
    try:
        note = json.loads(note_path.read_text())
    except (OSError, ValueError):
        note = None
    if isinstance(note, dict) and note.get("diameter_A") == float(diameter_A) and note.get("init") == str(init_path):
        if note.get("kept") and model_path.is_file():
            again = note.get("reestimate")
            picking_A = float(again["picking_A"]) if isinstance(again, dict) and "picking_A" in again else diameter_A
            info(f" + adapt: networks adapted in the first run, kept in {MODEL_FILE}"
                 + (f"; picking at {picking_A:.0f} A, as they measured it" if picking_A != diameter_A else ""))
            return load_pretrained(model_path, device=params.device), picking_A
        if not note.get("kept"):
            info(f" + adapt: the first run reverted to the general networks ({note.get('reason', '')}); "
                 "picking with them")
            warn(f"adapt: the earlier adaptation of this job kept the networks it started from "
                 f"({note.get('reason', '')}), and Continue keeps that choice; to adapt on micrographs added since, "
                 "run a new job with adapt Yes")
            return general, diameter_A
    if isinstance(note, dict) and "diameter_A" in note:
        info(f" + adapt: the earlier adaptation of this job was made at {float(note['diameter_A']):.0f} A from "
             f"{note.get('init', 'None')}; this run picks at {float(diameter_A):.0f} A from {init_path}: adapting again"
             + (f" (a rejected adaptation leaves the earlier {MODEL_FILE} in place)" if model_path.is_file() else ""))
    t_all = time.perf_counter()
    picked = [entries[i] for i in _sample_indices(len(entries), cfg.sample)]
    names: list[str] = []

    def sample():  # one full-size micrograph in memory at a time
        for entry, image, angpix in io.readable_micrographs(picked, invert):
            names.append(entry.name)
            yield image, angpix

    result = adapt_models(sample(), diameter_A, general, init_path, params, cfg, info, stop, names)
    seconds = time.perf_counter() - t_all
    skipped = {int(s["sample"]): s["reason"] for s in result.figures.get("skipped", [])}
    note = {"kept": result.kept, "reason": result.reason, "diameter_A": float(diameter_A), "init": str(init_path),
            "micrographs": [n for k, n in enumerate(names) if k not in skipped], "seed": cfg.seed,
            "config": dataclasses.asdict(cfg), "figures": result.figures, "seconds": seconds}
    if skipped:  # read, but not adapted on: the job cannot pick them
        note["skipped"] = [{"micrograph": names[k], "reason": why} for k, why in skipped.items() if k < len(names)]
    adapted, picking_A = None, float(diameter_A)
    if result.models is not None and result.kept:
        meta = {"adapted": {k: note[k] for k in ("diameter_A", "init", "micrographs", "seed", "reason")}}
        with io.atomic_output_path(model_path) as tmp:
            save_models(tmp, result.models.classifier, result.models.segmenter, meta)
        adapted = load_pretrained(model_path, device=params.device)
        info(f" + adapt: adapted networks kept ({result.reason}); written to {MODEL_FILE}, {seconds:.1f} s in all")
        if cfg.reestimate and given_A is not None:
            note["reestimate"] = _measure_again(entries, invert, float(given_A), adapted, params.device, info,
                                                float(diameter_A) if cfg.reestimate_nearer else None)
            picking_A = note["reestimate"].get("picking_A", picking_A)
    with io.atomic_write(note_path) as fh:
        json.dump(note, fh, indent=1, default=float)
    if result.kept:
        return adapted, picking_A
    what = "not adapted" if result.models is None else "adapted networks rejected"
    info(f" + adapt: {what}, reverting to the general networks: {result.reason} ({seconds:.1f} s in all)")
    warn(f"adapt: {what} ({result.reason}); the picks are those of the networks the job started from (not adapted)")
    return general, float(diameter_A)


def nearer_to_given(measured_A: float, first_A: float, given_A: float) -> float:
    """``measured_A`` where it lies at least as near (in log scale) to ``given_A`` as ``first_A`` does, else
    ``first_A`` (:attr:`AdaptConfig.reestimate_nearer`)."""
    far = abs(np.log(float(measured_A) / float(given_A))) > abs(np.log(float(first_A) / float(given_A)))
    return float(first_A) if far else float(measured_A)


def _measure_again(entries, invert: bool, given_A: float, models, device, info, first_A: float | None = None) -> dict:
    """The size estimate of the adapted networks on the job's first micrographs (read one at a time, as the job's own
    estimate reads them), and the diameter to pick at (a dict for :data:`NOTE_FILE`; empty when no micrograph could
    be read). With ``first_A`` (the diameter the job picked at before), the measured diameter is taken only where it
    is nearer to ``given_A`` (:func:`nearer_to_given`)."""
    from relion_pixer import size

    t0 = time.perf_counter()
    read: list[str] = []
    est = size.estimate_diameter(size.first_micrographs(entries, invert, read), given_A, models, str(device))
    if not read:
        return {}
    measured = size.picking_diameter(est)
    picking_A = measured if first_A is None else nearer_to_given(measured, first_A, given_A)
    why = "" if picking_A == measured else (f" (the diameter it gives, {measured:.0f} A, lies farther from the "
                                            f"diameter given than the first, so the first stands)")
    info(f" + adapt: particle size measured again with the adapted networks: {est.diameter_A:.0f} A, "
         f"{est.ratio:.2f}x the diameter given; picking at {picking_A:.0f} A{why} ({time.perf_counter() - t0:.1f} s)")
    return {**est.record(picking_A), "measured_picking_A": float(measured)}
