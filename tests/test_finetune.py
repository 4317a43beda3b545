"""Fine-tuning from reprojection labels, end to end: a simulated refinement of one particle type -> ``labels`` ->
``train --from-labels`` -> a model file that ``pick`` uses. Plus the pieces it rests on: the simulator's particle
orientations as RELION Euler angles, and the refined map of a simulated particle."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_simulated_refinement_follows_relion_conventions(tmp_path):
    from relion_pixer.labels import particle_centres, read_micrograph_pixel_sizes, read_particles

    ref = simulate_refinement(tmp_path, 2, seed=2, family="ring", diameter_A=200.0, angpix=4.0, shape=(200, 220),
                              n_points=1000, density=0.4, keep_fraction=0.6, pick_error_px=4, map_angpix=5.0,
                              keep_sims=True)
    parts = read_particles(tmp_path / ref.particles_star)
    total = sum(len(s.coords) for s in ref.sims)
    assert len(parts) == ref.n_particles and 0 < ref.n_particles < total  # some "lost in classification"
    assert read_micrograph_pixel_sizes(tmp_path / ref.micrographs_star) == {n: 4.0 for n in ref.micrographs}
    with mrcfile.open(tmp_path / ref.map_mrc) as mrc:
        assert mrc.voxel_size.x == pytest.approx(5.0) and mrc.data.shape[0] == mrc.data.shape[2]
    optics = starfile.read(tmp_path / ref.particles_star, always_dict=True)["optics"]
    assert optics["rlnImagePixelSize"].iloc[0] == pytest.approx(5.0)
    for name, sim in zip(ref.micrographs, ref.sims):
        group = parts[parts["micrograph"] == name]
        assert (group["x"] == np.round(group["x"])).all()  # picked coordinates: whole pixels, a few px off
        # RELION's centre (trunc(coordinate) - origin) is exactly a true particle centre, with its true pose
        cx, cy = particle_centres(group, 4.0)
        d = np.hypot(cx[:, None] - sim.coords[None, :, 0], cy[:, None] - sim.coords[None, :, 1])
        j = d.argmin(axis=1)
        assert d.min(axis=1).max() < 1e-6 and len(set(j)) == len(j)
        assert np.abs(np.hypot(group["x"] - sim.coords[j, 0], group["y"] - sim.coords[j, 1])).max() <= 4 * 2**0.5
        np.testing.assert_allclose(euler_matrix(group["rot"], group["tilt"], group["psi"]), sim.rotations[j],
                                   atol=1e-9)


# ------------------------------------------------------------------------------------------------------------
# end to end: refinement -> labels -> train --from-labels -> pick --model


@pytest.fixture
def init_model(tmp_path):
    """A freshly initialised model file (stands in for the shipped weights)."""
    from relion_pixer.models import build_classifier, build_segmenter, save_models

    torch.manual_seed(0)
    classifier = build_classifier()
    path = tmp_path / "init.pt"
    save_models(path, classifier, build_segmenter(classifier), {"note": "test"})
    return path


def test_finetune_from_reprojection_labels_end_to_end(tmp_path, monkeypatch, capsys, init_model):
    from relion_pixer.cli import main as cli
    from relion_pixer.io import read_coordinates_star
    from relion_pixer.models import load_pretrained
    from relion_pixer.pipeline import PickParams, pick_micrograph

    torch.set_num_threads(1)
    project = tmp_path / "project"
    ref = simulate_refinement(project, 2, seed=5, family="elongated", diameter_A=240.0, angpix=5.0,
                              shape=(240, 256), snr=0.05, n_points=1500, density=0.3, keep_sims=True)
    assert ref.n_particles == sum(len(s.coords) for s in ref.sims) > 4
    monkeypatch.chdir(project)

    # labels by reprojection agree with the simulator's own label maps
    assert cli(["labels", "--in_parts", ref.particles_star, "--in_3dref", ref.map_mrc,
                "--in_mics", ref.micrographs_star, "--o", "External/job002/"]) == 0
    table = starfile.read("External/job002/labels.star", always_dict=True)["coordinate_files"]
    assert len(table) == 2
    for (_, row), sim in zip(table.iterrows(), ref.sims):
        assert iou(mrcfile.read(row["pixerLabelName"]) == PARTICLE, sim.labels == PARTICLE) >= 0.8

    # fine-tuning from the labels, starting from the given model, with progress lines (loss, time left)
    capsys.readouterr()
    rc = cli(["train", "--from-labels", "External/job002/labels.star", "--init", str(init_model), "--out", "run",
              "--model_out", "run/finetuned.pt", "--cls_steps", "4", "--seg_steps", "3", "--sim_train", "2",
              "--sim_valid", "1", "--threads", "1"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "data: 2 simulated, 0 real, 2 user micrographs" in out
    assert "classifier step 4/4 loss" in out and "segmenter step 3/3 loss" in out
    assert len([line for line in out.splitlines() if " loss " in line and "min left" in line]) == 4 + 3
    config = json.loads((project / "run" / "config.json").read_text())
    assert config["from_labels"] == "External/job002/labels.star" and config["init"] == str(init_model)
    assert config["cls_lr"] == 5e-4 and config["seg_lr"] == 5e-4  # the fine-tuning defaults

    # the model file: readable, it moved away from the initial weights, and it picks
    tuned = load_pretrained(project / "run" / "finetuned.pt", fuse=False)
    start = load_pretrained(init_model, fuse=False)
    assert tuned.meta["config"]["from_labels"] == "External/job002/labels.star"
    for net in ("classifier", "segmenter"):
        a, b = getattr(start, net).state_dict(), getattr(tuned, net).state_dict()
        assert a.keys() == b.keys()
        assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point()), net
    models = load_pretrained(project / "run" / "finetuned.pt")
    res = pick_micrograph(ref.sims[0].image, 5.0, 240.0, models, PickParams(threshold=0.0))
    assert res.xy.ndim == 2 and res.xy.shape[1] == 2 and len(res.fom) == len(res.xy)
    assert res.prob_map is not None and np.isfinite(res.prob_map).all()

    # and the picking job takes it
    rc = cli(["--in_mics", "micrographs.star", "--o", "External/job003/", "--particle_diameter", "240",
              "--model", "run/finetuned.pt", "--threshold", "0", "--j", "1", "--estimate_size", "No",
              "--check_spacing", "No"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert (project / "External/job003/RELION_JOB_EXIT_SUCCESS").exists()
    picks = starfile.read("External/job003/autopick.star", always_dict=True)["coordinate_files"]
    assert len(picks) == 2
    coords = read_coordinates_star(picks["rlnMicrographCoordinates"].iloc[0])
    np.testing.assert_allclose(np.sort(coords["rlnCoordinateX"].to_numpy()), np.sort(res.xy[:, 0]), atol=0.01)


def test_finetune_errors_are_clear_and_early(tmp_path, monkeypatch, capsys, init_model):
    from relion_pixer.labels import main as labels_main
    from relion_pixer.train import main as train_main

    monkeypatch.chdir(tmp_path)
    # a labels file that is not one: a one-line error naming the file, before any simulation
    (tmp_path / "bogus.star").write_text("data_particles\nloop_\n_rlnCoordinateX #1\n1.0\n")
    assert train_main(["--from-labels", "bogus.star", "--init", str(init_model), "--out", "run"]) == 1
    out, err = capsys.readouterr()
    assert "bogus.star" in err and "coordinate_files" in err and "Traceback" not in err
    assert "simulated" not in out
    # no initial model: found out before simulating the replay data
    ref = simulate_refinement(tmp_path / "p", 1, seed=1, diameter_A=200.0, angpix=5.0, shape=(128, 128),
                              n_points=800)
    monkeypatch.chdir(tmp_path / "p")
    assert labels_main(["--in_parts", ref.particles_star, "--in_3dref", ref.map_mrc, "--o", "lab/"]) == 0
    capsys.readouterr()
    assert train_main(["--from-labels", "lab/labels.star", "--init", "missing.pt", "--out", "run"]) == 1
    out, err = capsys.readouterr()
    assert "missing.pt" in err and "simulated" not in out
    # output paths that cannot take the model: said before any training, in one line
    (tmp_path / "p" / "afile").write_text("")
    for extra, said in ((["--out", "afile"], "the run folder afile is a file"),
                        (["--out", "run", "--model_out", "nodir/m.pt"], "the folder nodir does not exist"),
                        (["--out", "run", "--model_out", "lab"], "the model file lab is a folder")):
        assert train_main(["--from-labels", "lab/labels.star", "--init", str(init_model), *extra]) == 1
        out, err = capsys.readouterr()
        assert said in err and "Traceback" not in err and "simulated" not in out, err
    # a rerun with a mistyped --init fails without costing the earlier run's checkpoint
    args = ["--from-labels", "lab/labels.star", "--init", str(init_model), "--out", "run", "--cls_steps", "2",
            "--seg_steps", "1", "--sim_train", "1", "--sim_valid", "1"]
    assert train_main(args) == 0
    run = tmp_path / "p" / "run"
    kept = {f.name: f.read_bytes() for f in (run / "checkpoint.pt", run / "inputs.json", run / "sim_train.pt")}
    capsys.readouterr()
    assert train_main([*args[:3], "missing.pt", *args[4:]]) == 1
    out, err = capsys.readouterr()
    assert "missing.pt" in err and "afresh" not in out
    assert {name: (run / name).read_bytes() for name in kept} == kept


def test_labels_pair_with_their_own_projects_micrographs_and_names_resolve_through_in_mics(tmp_path, monkeypatch,
                                                                                             capsys):
    """RELION's micrograph names recur across projects: labels read from another project's job are paired with that
    project's micrographs, not the current directory's of the same name. And particles that name their micrographs
    otherwise than the micrographs STAR (another job's prefix) find them through it."""
    import relion_pixer.io as pixer_io
    from relion_pixer.labels import main as labels_main
    from relion_pixer.labels import read_label_set

    made = {p: simulate_refinement(tmp_path / p, 1, seed=s, diameter_A=200.0, angpix=5.0, shape=(128, 128),
                                   n_points=800) for p, s in (("a", 1), ("b", 2))}
    assert made["a"].micrographs == made["b"].micrographs  # the same names in both projects
    monkeypatch.chdir(tmp_path / "b")
    b = made["b"]
    assert labels_main(["--in_parts", b.particles_star, "--in_3dref", b.map_mrc, "--o", "lab/"]) == 0
    read, original = [], pixer_io.read_micrograph
    monkeypatch.setattr(pixer_io, "read_micrograph", lambda p, *a, **k: read.append(Path(p).resolve()) or
                        original(p, *a, **k))
    monkeypatch.chdir(tmp_path / "a")
    assert len(read_label_set(tmp_path / "b" / "lab" / "labels.star")) == 1
    assert read == [(tmp_path / "b" / made["b"].micrographs[0]).resolve()]

    monkeypatch.chdir(tmp_path / "b")
    blocks = starfile.read(b.particles_star, always_dict=True)
    parts = blocks["particles"]
    parts["rlnMicrographName"] = "MotionCorr/job009/" + parts["rlnMicrographName"].astype(str)
    starfile.write(blocks, "renamed.star", overwrite=True)
    capsys.readouterr()
    assert labels_main(["--in_parts", "renamed.star", "--in_3dref", b.map_mrc, "--in_mics", b.micrographs_star,
                        "--o", "lab2/"]) == 0, capsys.readouterr().err
    table = starfile.read("lab2/labels.star", always_dict=True)["coordinate_files"]
    assert list(table["rlnMicrographName"]) == list(made["b"].micrographs)


def test_box_weights_give_the_users_boxes_their_share():
    from relion_pixer.train import box_weights

    classes = np.array([0] * 90 + [1] * 100 + [2] * 10 + [0] * 10 + [1] * 5)
    user = np.array([False] * 200 + [True] * 15)
    w = box_weights(classes, user, 0.7)
    assert w.sum() == pytest.approx(1.0)
    for c in (0, 1, 2):
        assert w[classes == c].sum() == pytest.approx(1 / 3)  # classes balanced
    assert w[(classes == 1) & user].sum() == pytest.approx(0.7 / 3)  # 5 user particles weigh as much as 70 %
    assert w[(classes == 0) & user].sum() == pytest.approx(0.7 / 3)
    # without user boxes: plain class balance
    w0 = box_weights(classes, np.zeros_like(user), 0.7)
    np.testing.assert_allclose(w0[classes == 2], 1 / 3 / 10)


def test_labels_job_can_finetune_in_one_go(tmp_path, monkeypatch, capsys, init_model):
    """RELION External job with --in_parts/--in_3dref and `finetune Yes`: labels, then a model file for picking."""
    from relion_pixer.cli import main as cli
    from relion_pixer.labels import FINETUNED_MODEL, MODEL_NODE_TYPE, NODE_TYPE
    from relion_pixer.models import load_pretrained

    torch.set_num_threads(1)
    project = tmp_path / "project"
    ref = simulate_refinement(project, 1, seed=2, diameter_A=200.0, angpix=5.0, shape=(160, 160), n_points=800)
    monkeypatch.chdir(project)
    # as RELION calls it: bare flag for a "Yes" given without a value, its own --j and --pipeline_control last
    rc = cli(["--o", "External/job004/", "--in_parts", ref.particles_star, "--in_3dref", ref.map_mrc,
              "--finetune", "--init", str(init_model), "--cls_steps", "2", "--seg_steps", "2", "--sim_train", "1",
              "--j", "1", "--pipeline_control", "External/job004/"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    job = project / "External" / "job004"
    assert (job / "RELION_JOB_EXIT_SUCCESS").exists()
    assert "classifier step 2/2" in out and "segmenter step 2/2" in out
    nodes = starfile.read(job / "RELION_OUTPUT_NODES.star")
    assert list(nodes["rlnPipeLineNodeName"]) == ["External/job004/labels.star", f"External/job004/{FINETUNED_MODEL}"]
    assert list(nodes["rlnPipeLineNodeTypeLabel"]) == [NODE_TYPE, MODEL_NODE_TYPE]
    tuned = load_pretrained(job / FINETUNED_MODEL, fuse=False)
    assert tuned.meta["config"]["from_labels"] == "External/job004/labels.star"
    assert tuned.meta["config"]["init"] == str(init_model)

    # a missing initial model: the job fails with the file named, and declares no output node, a rerun of the job
    # that succeeded above no more than a new one (its earlier nodes file named a model this run did not make)
    for job_dir in ("External/job005/", "External/job004/"):
        rc = cli(["--o", job_dir, "--in_parts", ref.particles_star, "--in_3dref", ref.map_mrc,
                  "--finetune", "Yes", "--init", "missing.pt", "--sim_train", "1"])
        out, err = capsys.readouterr()
        assert rc == 1 and "missing.pt" in err and "Traceback" not in err
        assert (project / job_dir / "RELION_JOB_EXIT_FAILURE").exists()
        assert not (project / job_dir / "RELION_OUTPUT_NODES.star").exists()


def test_the_finetune_job_stops_on_relions_abort_and_continues(tmp_path, monkeypatch, capsys, init_model):
    """RELION's Abort (RELION_JOB_ABORT_NOW) during the fine-tuning: the job stops after the step it is in, says so,
    leaves RELION_JOB_EXIT_ABORTED and no model; run again, it resumes and finishes."""
    from relion_pixer import train as train_mod
    from relion_pixer.cli import main as cli
    from relion_pixer.labels import FINETUNED_MODEL

    torch.set_num_threads(1)
    project = tmp_path / "project"
    ref = simulate_refinement(project, 1, seed=2, diameter_A=200.0, angpix=5.0, shape=(160, 160), n_points=800)
    monkeypatch.chdir(project)
    args = ["--o", "External/job004/", "--in_parts", ref.particles_star, "--in_3dref", ref.map_mrc, "--finetune",
            "Yes", "--init", str(init_model), "--cls_steps", "2", "--seg_steps", "3", "--sim_train", "1", "--j", "1",
            "--pipeline_control", "External/job004/"]
    job = project / "External" / "job004"
    fit = train_mod.fit_segmenter

    def abort_at_the_first_step(*a, on_step=None, **k):
        def then_abort(step, loss, opt):
            if step == 1:
                (job / "RELION_JOB_ABORT_NOW").touch()  # the GUI's Abort button
            on_step(step, loss, opt)

        return fit(*a, on_step=then_abort, **k)

    monkeypatch.setattr(train_mod, "fit_segmenter", abort_at_the_first_step)
    rc = cli(args)
    out, err = capsys.readouterr()
    assert rc == 2, err
    assert "stopped by RELION_JOB_ABORT_NOW" in err and "Traceback" not in err
    assert (job / "RELION_JOB_EXIT_ABORTED").exists() and not (job / "RELION_JOB_EXIT_SUCCESS").exists()
    assert not (job / FINETUNED_MODEL).exists()
    monkeypatch.setattr(train_mod, "fit_segmenter", fit)
    (job / "RELION_JOB_ABORT_NOW").unlink()  # RELION removes it before it runs the job again
    assert cli(args) == 0
    out, _ = capsys.readouterr()
    assert "resuming at segmenter step 1" in out and (job / FINETUNED_MODEL).exists()


def test_labels_name_what_is_wrong_with_a_refinements_files(tmp_path, monkeypatch, capsys):
    """Particles lying wholly off their micrograph are left out with a warning (all of them: an error); a map
    with the particles' box but another pixel size in its header draws a warning; an empty map is an error; a
    damaged label map is named when it is read back."""
    import mrcfile
    import starfile

    from relion_pixer.labels import LabelError, main as labels_main, read_label_set

    ref = simulate_refinement(tmp_path / "p", 2, seed=1, diameter_A=200.0, angpix=5.0, shape=(128, 128), n_points=800)
    monkeypatch.chdir(tmp_path / "p")
    star = starfile.read(ref.particles_star, always_dict=True)
    parts = star["particles"]
    n = len(parts)
    first = parts["rlnMicrographName"] == parts["rlnMicrographName"].iloc[0]
    off = int(first.sum())
    shifted = dict(star, particles=parts.assign(rlnCoordinateX=parts["rlnCoordinateX"] + 1000.0 * first))
    starfile.write(shifted, "half_off.star")
    assert labels_main(["--in_parts", "half_off.star", "--in_3dref", ref.map_mrc, "--o", "lab1/"]) == 0
    out, err = capsys.readouterr()
    assert 0 < off < n and f"WARNING: {off} of {n} particles in half_off.star lie wholly off their micrograph" in err, err
    assert f"{n - off} particles" in out
    starfile.write(dict(star, particles=parts.assign(rlnCoordinateX=parts["rlnCoordinateX"] * 3 + 400)), "off.star")
    assert labels_main(["--in_parts", "off.star", "--in_3dref", ref.map_mrc, "--o", "lab2/"]) == 1
    assert "off.star: no particle lies on its micrograph" in capsys.readouterr().err

    volume = mrcfile.read(ref.map_mrc)
    with mrcfile.new("wrong_apix.mrc") as m:
        m.set_data(volume)
        m.voxel_size = 2.5  # the particles are at 5 A/px in the same box
    assert labels_main(["--in_parts", ref.particles_star, "--in_3dref", "wrong_apix.mrc", "--o", "lab3/"]) == 0
    assert "wrong_apix.mrc has the particles' box" in capsys.readouterr().err
    with mrcfile.new("empty.mrc") as m:
        m.set_data(np.zeros_like(volume))
        m.voxel_size = 5.0
    assert labels_main(["--in_parts", ref.particles_star, "--in_3dref", "empty.mrc", "--o", "lab4/"]) == 1
    assert "empty.mrc: the map's projections give empty masks" in capsys.readouterr().err

    assert labels_main(["--in_parts", ref.particles_star, "--in_3dref", ref.map_mrc, "--o", "lab5/"]) == 0
    capsys.readouterr()
    from pathlib import Path

    damaged = sorted(Path("lab5").rglob("*_labels.mrc"))[0]
    damaged.write_bytes(damaged.read_bytes()[:500])
    with pytest.raises(LabelError, match=f"{damaged.name}: cannot read the label map"):
        read_label_set("lab5/labels.star")
