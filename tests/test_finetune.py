"""Fine-tuning from reprojection labels, end to end: a simulated refinement of one particle type -> ``labels`` ->
``train --from-labels`` -> a model file that ``pick`` uses. Plus the pieces it rests on: the simulator's particle
orientations as RELION Euler angles, and the refined map of a simulated particle."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
import starfile
import torch
from scipy.spatial.transform import Rotation

from relion_pixer import PARTICLE
from relion_pixer.masks import binarise_projection
from relion_pixer.projection import euler_angles, euler_matrix, project
from relion_pixer.simulate import make_shape, simulate_micrograph
from relion_pixer.simulate.refinement import model_map, simulate_refinement
from relion_pixer.simulate.shapes import project_model


def iou(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float((a & b).sum() / max(1, (a | b).sum()))


# ------------------------------------------------------------------------------------------------------------
# orientations and maps


def test_euler_angles_invert_euler_matrix(rng):
    mats = Rotation.random(500, rng=rng).as_matrix()
    ang = euler_angles(mats)
    assert ang.shape == (500, 3)
    np.testing.assert_allclose(euler_matrix(ang[:, 0], ang[:, 1], ang[:, 2]), mats, atol=1e-12)
    assert (ang[:, 1] >= 0).all() and (ang[:, 1] <= 180).all()
    assert (np.abs(ang[:, [0, 2]]) <= 180).all()
    # known angles come back (tilt strictly between 0 and 180)
    np.testing.assert_allclose(euler_angles(euler_matrix(-40.0, 70.0, 120.0)), [-40.0, 70.0, 120.0], atol=1e-9)
    # gimbal lock: tilt 0 or 180, the in-plane angle all in psi, and still the same matrix
    for tilt in (0.0, 180.0):
        a = euler_angles(euler_matrix(30.0, tilt, 50.0))
        assert a[0] == 0.0 and a[1] == tilt
        np.testing.assert_allclose(euler_matrix(*a), euler_matrix(30.0, tilt, 50.0), atol=1e-12)
    with pytest.raises(ValueError, match="3, 3"):
        euler_angles(np.eye(4))


def test_simulator_records_each_particles_pose(rng):
    model = make_shape(np.random.default_rng(3), "elongated", diameter=200.0, n_points=1500)
    sim = simulate_micrograph(rng, shape=(160, 180), angpix=4.0, snr=0.1, models=[model], size_jitter=0.1, density=0.3)
    n = len(sim.coords)
    assert n >= 3
    assert sim.rotations.shape == (n, 3, 3) and sim.scales.shape == (n,) and sim.species.shape == (n,)
    np.testing.assert_allclose(sim.rotations @ sim.rotations.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (n, 3, 3)),
                               atol=1e-9)
    assert (sim.species == 0).all()
    np.testing.assert_allclose(sim.diameters_px, model.diameter * sim.scales / 4.0)
    # re-rendering each particle from its recorded pose gives the simulator's own instance masks
    for i, ((x, y), rot, scale) in enumerate(zip(sim.coords, sim.rotations, sim.scales)):
        patch, half = project_model(model, rot, 4.0, (x - np.floor(x), y - np.floor(y)), scale)
        mask = np.zeros(sim.labels.shape, bool)
        r0, c0 = int(np.floor(y)) - half, int(np.floor(x)) - half
        rs, cs = max(r0, 0), max(c0, 0)
        sub = binarise_projection(patch)[rs - r0 : rs - r0 + mask.shape[0] - rs, cs - c0 : cs - c0 + mask.shape[1] - cs]
        mask[rs : rs + sub.shape[0], cs : cs + sub.shape[1]] = sub
        visible = sim.instances == i + 1  # later particles may cover part of it
        assert visible.any() and not (visible & ~mask).any()


def test_model_map_projects_like_the_simulator():
    model = make_shape(np.random.default_rng(11), "ring", diameter=220.0, n_points=2000)
    vol = model_map(model, 4.0)
    assert vol.ndim == 3 and len(set(vol.shape)) == 1 and vol.shape[0] % 2 == 0 and vol.dtype == np.float32
    # the projected thickness is conserved: sum of the map * voxel volume = the model's protein volume
    assert vol.sum() * 4.0**3 == pytest.approx(float(model.weight.sum()), rel=1e-3)
    m = vol.shape[0]
    for angles in [(0.0, 0.0, 0.0), (30.0, 75.0, -120.0), (200.0, 140.0, 10.0)]:
        mine = binarise_projection(project(vol, *angles, out_size=m)[0])
        patch, half = project_model(model, euler_matrix(*angles), 4.0)
        sim = np.zeros((m, m), bool)
        c = m // 2
        lo = max(0, half - c)
        sim[c - half + lo : c + half + 1 - lo, c - half + lo : c + half + 1 - lo] = binarise_projection(patch)[lo : 2 * half + 1 - lo, lo : 2 * half + 1 - lo]
        assert iou(mine, sim) > 0.9, angles
    with pytest.raises(ValueError, match="too small"):
        model_map(model, 4.0, box=20)
