"""The shipped weights: present, small, safe to load, and they find particles."""

from pathlib import Path

import numpy as np
import pytest
import torch

from relion_pixer import PARTICLE
from relion_pixer.models import DEFAULT_WEIGHTS, load_pretrained
from relion_pixer.pipeline import PickParams, pick_from_map, pick_micrograph, segment_micrograph
from relion_pixer.preprocess import prepare
from relion_pixer.segment import predict_probability
from relion_pixer.simulate import random_config, simulate_micrograph
from relion_pixer.evaluate import pooled_precision_recall_f1
from relion_pixer.preprocess import nearest_resample

WEIGHTS = Path(__file__).resolve().parents[1] / "relion_pixer" / "weights"


def test_weights_are_shipped_small_and_load_with_weights_only():
    total = sum(p.stat().st_size for p in WEIGHTS.iterdir() if p.is_file())
    assert total <= 20 * 1024**2
    payload = torch.load(WEIGHTS / DEFAULT_WEIGHTS, weights_only=True)
    assert payload["format"] == "relion_pixer/1"
    assert (WEIGHTS / "MODEL_CARD.md").is_file()
    models = load_pretrained()
    assert models.segmenter.rates == (2, 4, 6, 8)
    assert "validation" in models.meta


@pytest.fixture(scope="module")
def simulated():
    rng = np.random.default_rng(4242)  # not a training seed
    cfg = random_config(
        rng, snr=0.3, angpix=2.5, particle_diameter_px=64.0, families="globular", empty=False,
        n_ice=1, carbon_edge=False, density=0.15,
    )
    sim = simulate_micrograph(rng, shape=(512, 512), **cfg)
    return sim, float(cfg["angpix"]) * 64.0


def test_probability_map_separates_particles_from_background(simulated):
    sim, diameter = simulated
    models = load_pretrained()
    net, _ = prepare(sim.image, 2.5, diameter)
    prob = predict_probability(models.segmenter, net).numpy()
    labels = nearest_resample(sim.labels, net.shape)
    on, off = prob[labels == PARTICLE].mean(), prob[labels == 0].mean()
    assert on > off + 0.3, (on, off)
    pred, truth = prob >= 0.5, labels == PARTICLE
    assert (pred & truth).sum() / (pred | truth).sum() > 0.4


def test_picks_match_the_simulated_particles(simulated):
    sim, diameter = simulated
    models = load_pretrained()
    res = pick_micrograph(sim.image, 2.5, diameter, models, PickParams())
    assert np.all(np.diff(res.fom) <= 0) and np.all((res.fom >= PickParams.threshold) & (res.fom <= 1))
    scores = pooled_precision_recall_f1([res.xy], [sim.coords], radius=32.0)
    assert scores.f1 >= 0.7, scores


@pytest.fixture(scope="module")
def wide():
    rng = np.random.default_rng(4343)  # not a training seed
    cfg = random_config(rng, snr=0.3, angpix=2.5, particle_diameter_px=64.0, families="globular", empty=False,
                        n_ice=0, carbon_edge=False, density=0.2)
    return simulate_micrograph(rng, shape=(640, 1280), **cfg), 2.5 * 64.0


@pytest.mark.parametrize("fill", ["zero", "mean"])
def test_a_blank_band_over_part_of_a_micrograph_leaves_the_rest_picked_as_before(wide, fill):
    """A flat band over 40 % of the micrograph (a blank border, a masked area) once made the rest look so contrasted
    to the normalisation that the map went dark (no picks at all); the particles a diameter or more from the band
    are found as without it, and nothing is picked inside it."""
    sim, diameter = wide
    models = load_pretrained()
    band = 512  # columns
    image = np.array(sim.image, dtype=np.float32)
    image[:, :band] = 0.0 if fill == "zero" else float(image.mean())
    away = band + 64

    def found(xy):
        return pooled_precision_recall_f1([xy[xy[:, 0] >= away]], [sim.coords[sim.coords[:, 0] >= away]], radius=32.0)

    res = pick_micrograph(image, 2.5, diameter, models, PickParams())
    with_band, without = found(res.xy), found(pick_micrograph(sim.image, 2.5, diameter, models, PickParams()).xy)
    assert without.n_true >= 20 and with_band.recall >= without.recall - 0.05, (with_band, without)
    assert with_band.precision >= without.precision - 0.05, (with_band, without)
    assert not np.any(res.xy[:, 0] < band - 32)


def test_map_threshold_decides_which_candidates_reach_the_classifier(simulated):
    sim, diameter = simulated
    models = load_pretrained()
    counts = []
    for map_threshold in (0.05, 0.5, 0.95, 1.0):
        params = PickParams(threshold=0.0, map_threshold=map_threshold, map_relative=0.0, map_odds=0.0)
        res = pick_micrograph(sim.image, 2.5, diameter, models, params)
        counts.append(len(res.xy))
    assert counts[0] >= counts[1] >= counts[2] >= counts[3] == 0
    assert counts[0] > counts[2]


def test_map_relative_drops_candidates_faint_for_their_micrograph(simulated):
    sim, diameter = simulated
    models = load_pretrained()
    n = [len(pick_micrograph(sim.image, 2.5, diameter, models, PickParams(threshold=0.0, map_threshold=0.05,
                                                                         map_relative=r, map_odds=0.0)).xy)
         for r in (0.0, 0.5, 1.0)]
    assert n[0] >= n[1] >= n[2] > 0 and n[0] > n[2]


def test_map_odds_drops_candidates_half_as_confident_as_their_micrograph(simulated):
    sim, diameter = simulated
    models = load_pretrained()
    net_image, prob, factors = segment_micrograph(sim.image, 2.5, diameter, models)
    n = [len(pick_from_map(net_image, prob, factors, diameter, models,
                           PickParams(threshold=0.0, map_threshold=0.05, map_relative=0.0, map_odds=o)).xy)
         for o in (0.0, 0.05, 0.5, 1.0)]
    assert n[0] >= n[1] >= n[2] >= n[3] > 0 and n[0] > n[3]


@pytest.mark.parametrize("seed", [4244, 4245])
def test_clearly_visible_particles_are_all_found(seed):
    """High SNR (denoised-looking data, dense dark particles): the picker must not lose what anyone can see."""
    rng = np.random.default_rng(seed)  # not a training seed
    cfg = random_config(
        rng, snr=10.0, angpix=2.5, particle_diameter_px=64.0, families="globular", empty=False,
        n_ice=1, carbon_edge=False, density=0.3,
    )
    sim = simulate_micrograph(rng, shape=(768, 768), **cfg)
    inside = np.all((sim.coords >= 32) & (sim.coords <= 768 - 1 - 32), axis=1)
    res = pick_micrograph(sim.image, 2.5, 2.5 * 64.0, load_pretrained(), PickParams())
    scores = pooled_precision_recall_f1([res.xy], [sim.coords[inside]], radius=32.0)
    assert scores.recall >= 0.8 and scores.precision >= 0.8, scores


@pytest.mark.parametrize("phase_plate", [False, True])
def test_featureless_particles_imaged_through_the_microscope_are_found(phase_plate):
    """Uniform-density balls and shells (the simulator's "smooth" family, never trained on) look like ice blobs
    without texture; imaged through the CTF, or in focus with a phase plate (no fringes), they must still be found."""
    rng = np.random.default_rng(4246 + phase_plate)  # not a training seed
    extra = {"phase_shift": 90.0, "defocus_um": 0.02} if phase_plate else {}
    cfg = random_config(
        rng, snr=1.0, angpix=2.5, particle_diameter_px=64.0, families="smooth", empty=False,
        n_ice=0, carbon_edge=False, carbon_hole=False, density=0.2, **extra,
    )
    sim = simulate_micrograph(rng, shape=(768, 768), **cfg)
    inside = np.all((sim.coords >= 32) & (sim.coords <= 768 - 1 - 32), axis=1)
    res = pick_micrograph(sim.image, 2.5, 2.5 * 64.0, load_pretrained(), PickParams())
    scores = pooled_precision_recall_f1([res.xy], [sim.coords[inside]], radius=32.0)
    assert inside.sum() >= 10 and scores.recall >= 0.8, scores


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_picks_hold_at_each_cpu_precision(simulated, precision):
    """bfloat16 inference (fast where the CPU has AMX tiles; emulated, slow, elsewhere) picks the same particles as
    float32 within a few, and its probabilities stay float32 in [0, 1]."""
    from relion_pixer import models as models_mod

    sim, diameter = simulated
    models = load_pretrained()
    with models_mod.using_cpu_precision("float32"):
        ref = pick_micrograph(sim.image, 2.5, diameter, models, PickParams())
    with models_mod.using_cpu_precision(precision):
        net, _ = prepare(sim.image, 2.5, diameter)
        prob = predict_probability(models.segmenter, net)
        res = pick_micrograph(sim.image, 2.5, diameter, models, PickParams())
    assert prob.dtype == torch.float32 and float(prob.min()) >= 0.0 and float(prob.max()) <= 1.0
    scores = pooled_precision_recall_f1([res.xy], [ref.xy], radius=3.2)  # a tenth of a diameter
    assert scores.f1 >= (1.0 if precision == "float32" else 0.95), scores
    assert res.fom.dtype == ref.fom.dtype
