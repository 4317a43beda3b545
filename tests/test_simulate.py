"""Tests of the micrograph simulator (small and fast: the whole file runs in well under a minute)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

from relion_pixer import BACKGROUND, CONTAMINATION, PARTICLE
from relion_pixer.simulate import ALL_FAMILIES, SHAPE_FAMILIES, random_config, simulate_micrograph


def _sim(seed=0, **kw):
    kw.setdefault("shape", (192, 192))
    kw.setdefault("particle_diameter_px", 24)
    return simulate_micrograph(np.random.default_rng(seed), **kw)


def test_shapes_and_dtypes():
    m = _sim(shape=(160, 200), n_ice=1)
    assert m.image.shape == m.clean.shape == m.labels.shape == m.instances.shape == (160, 200)
    assert m.image.dtype == np.float32 and m.clean.dtype == np.float32
    assert m.labels.dtype == np.uint8 and m.instances.dtype == np.int32
    assert m.coords.ndim == 2 and m.coords.shape[1] == 2 and len(m.coords) == len(m.diameters_px) > 0
    assert set(np.unique(m.labels)) <= {BACKGROUND, PARTICLE, CONTAMINATION}
    assert np.all(np.isfinite(m.image)) and np.all(np.isfinite(m.clean))
    assert m.meta["n_particles"] == len(m.coords)
    assert m.meta["snr_db"] == pytest.approx(10 * np.log10(m.meta["snr"]))


def test_reproducible_by_seed():
    a, b, c = _sim(3, n_ice=1, n_aggregates=1), _sim(3, n_ice=1, n_aggregates=1), _sim(4, n_ice=1, n_aggregates=1)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.coords, b.coords)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_centres_labelled_particle_and_instances(family):
    m = _sim(1, families=family, density=0.3, min_separation=0.8)
    xy = np.rint(m.coords).astype(int)
    assert len(xy) > 0
    assert np.all(m.labels[xy[:, 1], xy[:, 0]] == PARTICLE)
    # instance map: non-zero exactly on particle pixels, ids within range
    assert np.array_equal(m.instances > 0, m.labels == PARTICLE)
    assert m.instances.max() <= len(m.coords)
    # the particle diameter is what was asked, within the size jitter
    assert np.median(m.diameters_px) == pytest.approx(24, rel=0.1)
    # overlaps: the most recently placed particle wins, so the id at a centre is its own or a later one
    ids = m.instances[xy[:, 1], xy[:, 0]]
    assert np.all(ids >= np.arange(1, len(xy) + 1)) and ids[-1] == len(xy)


def test_mask_extent_matches_diameter():
    m = _sim(3, shape=(256, 256), families="globular", particle_diameter_px=30, density=0.1, size_jitter=0.0)
    widths = []
    for i in range(1, len(m.coords) + 1):
        ys, xs = np.nonzero(m.instances == i)
        if len(xs) and xs.min() > 0 and ys.min() > 0 and xs.max() < 255 and ys.max() < 255:
            widths.append(max(np.ptp(xs), np.ptp(ys)) + 1)
    widths = np.asarray(widths)
    assert len(widths) >= 5
    # one view of the mask is at most the diameter (longest extent over views), and not much less for blobs
    assert widths.max() <= 30 * 1.1
    assert np.median(widths) >= 30 * 0.7


def test_particles_are_dark():
    m = _sim(2, shape=(256, 256), snr=100.0, defocus_um=2.0)
    part = m.clean[m.labels == PARTICLE].mean()
    bg = m.clean[m.labels == BACKGROUND].mean()
    assert part < bg - 0.5 * m.clean[m.labels == BACKGROUND].std()


@pytest.mark.parametrize("snr", [0.01, 0.1, 1.0])
def test_snr_close_to_requested(snr):
    # flat ice, no contamination: the noise-free background is flat, so the particles' signal can be measured
    # independently of the simulator's own bookkeeping as clean - background level
    m = _sim(5, shape=(256, 256), snr=snr, ice_gradient=0.0, quantise_8bit=False, density=0.3)
    p = m.labels == PARTICLE
    far = m.labels == BACKGROUND
    signal = m.clean[p] - np.median(m.clean[far])
    noise = (m.image - m.clean)[p]
    measured = np.mean(signal.astype(np.float64) ** 2) / np.var(noise.astype(np.float64))
    assert measured == pytest.approx(snr, rel=0.25)
    assert m.meta["snr_measured"] == pytest.approx(snr, rel=0.15)


def test_empty_micrograph():
    m = _sim(6, empty=True, snr=0.05)
    assert len(m.coords) == 0 and len(m.diameters_px) == 0
    assert not np.any(m.labels == PARTICLE) and not np.any(m.instances)
    assert m.image.std() > 0


def test_contamination_labelled_2():
    m = _sim(7, shape=(256, 256), n_ice=3, n_aggregates=1, carbon_edge=True, carbon_fraction=(0.2, 0.3))
    cont = m.labels == CONTAMINATION
    assert cont.mean() > 0.15
    # contamination is dense: darker than the plain ice in the noise-free image
    assert m.clean[cont].mean() < m.clean[m.labels == BACKGROUND].mean()
    xy = np.rint(m.coords).astype(int)
    assert not np.any(cont[xy[:, 1], xy[:, 0]])


def test_carbon_hole():
    m = _sim(4, shape=(200, 200), carbon_hole=True)
    assert m.meta["carbon"]["kind"] == "hole"
    # carbon all around: the corners are label 2, the centre of the hole is not
    assert all(m.labels[r, c] == CONTAMINATION for r, c in [(0, 0), (0, 199), (199, 0), (199, 199)])
    assert m.labels[100, 100] != CONTAMINATION
    assert 0.3 < m.meta["carbon"]["fraction"] < 0.9


def test_quantised_export_like_real():
    m = _sim(8, quantise_8bit=True, export_mean=90.0, export_sd=7.0)
    assert np.array_equal(m.image, np.rint(m.image)) and m.image.min() >= 0 and m.image.max() <= 255
    assert m.image.mean() == pytest.approx(90.0, abs=1.0) and m.image.std() == pytest.approx(7.0, rel=0.1)


def test_random_config_drives_simulator():
    rng = np.random.default_rng(9)
    for _ in range(4):
        cfg = random_config(rng, shape=(128, 128), particle_diameter_px=32)
        assert cfg["particle_diameter_px"] == 32
        m = simulate_micrograph(rng, **cfg)
        assert m.image.shape == (128, 128)
    assert random_config(np.random.default_rng(1)) == random_config(np.random.default_rng(1))
    assert random_config(np.random.default_rng(1), snr=0.3)["snr"] == 0.3


def test_bad_options_raise():
    with pytest.raises(ValueError, match="unknown shape family"):
        _sim(families="banana")
    with pytest.raises(TypeError):
        _sim(no_such_option=1)


# ------------------------------------------------------------------------------------------ models and files


def test_procedural_shapes_span_sizes_and_elongation():
    from relion_pixer.simulate import make_shape

    rng = np.random.default_rng(0)
    sizes, aspects = [], []
    for fam in SHAPE_FAMILIES:
        m = make_shape(rng, fam, n_points=1500)
        sizes.append(m.diameter)
        ev = np.sort(np.linalg.eigvalsh(np.cov(m.xyz.T.astype(np.float64))))
        aspects.append(np.sqrt(ev[-1] / ev[0]))
        assert abs(m.xyz.mean(axis=0)).max() < 1.0  # centred
    assert min(sizes) < 400 and max(sizes) > 400
    assert max(aspects) > 3.0 and min(aspects) < 1.6
    assert make_shape(rng, "cage", diameter=700.0).diameter == pytest.approx(700.0)


def _one_projection(family, seed, diameter):
    """A model of ``family`` drawn from ``seed``, ``diameter`` A across, projected at 2 A/px in a random direction:
    (projected thickness, its centre pixel, the model)."""
    from scipy.spatial.transform import Rotation

    from relion_pixer.simulate import make_shape
    from relion_pixer.simulate.shapes import project_model

    rng = np.random.default_rng(seed)
    m = make_shape(rng, family, diameter=diameter)
    img, half = project_model(m, Rotation.random(rng=rng).as_matrix(), 2.0)
    return img, half, m


def test_smooth_family_is_featureless_and_outside_the_default_mix():
    from scipy.ndimage import gaussian_filter

    assert "smooth" in ALL_FAMILIES and "smooth" not in SHAPE_FAMILIES

    def texture(fam, seed):
        # fine structure (a 3 px high-pass) inside the central third of one projection, relative to its level
        img, half, m = _one_projection(fam, seed, 200.0)
        c = img[half - 15 : half + 16, half - 15 : half + 16]
        return (c - gaussian_filter(c, 3)).std() / c.mean(), m

    smooth = [texture("smooth", s) for s in range(4)]
    lumpy = [texture("globular", s)[0] for s in range(4)]
    assert max(t for t, _ in smooth) < 0.5 * min(lumpy)
    assert all(m.diameter == pytest.approx(200.0) and m.family == "smooth" for _, m in smooth)
    with pytest.raises(ValueError, match="unknown shape family 'blob'.*smooth"):
        _one_projection("blob", 0, 200.0)
    with pytest.raises(ValueError, match="unknown shape family 'blob'"):
        random_config(np.random.default_rng(0), families=("blob",), particle_diameter_px=32.0)


@pytest.mark.shared
def test_atomic_models_from_shared_data(shared_data):
    from relion_pixer.simulate import load_atomic_model, make_shape

    pdb = shared_data / "pdb"
    m = load_atomic_model(pdb / "adk_open.pdb")  # plain PDB
    assert len(m.xyz) > 1000 and 50 < m.diameter < 120 and m.family == "atomic:adk_open.pdb"
    m2 = load_atomic_model(pdb / "3KPR.cif.gz", max_points=2000)  # gzipped mmCIF, subsampled
    assert len(m2.xyz) == 2000
    assert m2.weight.sum() == pytest.approx(load_atomic_model(pdb / "3KPR.cif.gz").weight.sum(), rel=1e-5)
    ring = make_shape(np.random.default_rng(0), "ring", diameter=400.0, subunit=m2)  # assembly of copies
    assert ring.family == "ring:atomic:3KPR.cif.gz" and ring.diameter == pytest.approx(400.0)
    sim = simulate_micrograph(
        np.random.default_rng(0), shape=(128, 128), particle_diameter_px=24, families=(), model_files=[pdb / "adk_open.pdb"]
    )
    assert sim.meta["families"] == ["atomic:adk_open.pdb"] and len(sim.coords) > 0
    xy = np.rint(sim.coords).astype(int)
    assert np.mean(sim.labels[xy[:, 1], xy[:, 0]] == PARTICLE) > 0.9


def test_broken_model_file_names_file(tmp_path):
    from relion_pixer.simulate import ModelFileError, load_atomic_model

    bad = tmp_path / "broken_model.cif"
    bad.write_text('data_x\nloop_\n_atom_site.id\n"unterminated\n')
    with pytest.raises(ModelFileError, match="broken_model.cif.*cannot parse"):
        load_atomic_model(bad)
    empty = tmp_path / "no_atoms.pdb"
    empty.write_text("HEADER    NOTHING\nEND\n")
    with pytest.raises(ModelFileError, match="no_atoms.pdb.*no atoms"):
        load_atomic_model(empty)
    with pytest.raises(ModelFileError, match="missing.pdb.*no such file"):
        load_atomic_model(tmp_path / "missing.pdb")


def test_project_writer_reads_back(tmp_path):
    import json

    import mrcfile
    import starfile

    from relion_pixer.simulate import simulate_project

    out = simulate_project(tmp_path / "proj", 2, seed=5, shape=(160, 160), angpix=5.36, diameter_A=200.0, contamination=1.0)
    star = starfile.read(out / "micrographs.star")
    optics, mics = star["optics"], star["micrographs"]
    for col in ("rlnOpticsGroup", "rlnOpticsGroupName", "rlnMicrographPixelSize", "rlnVoltage",
                "rlnSphericalAberration", "rlnAmplitudeContrast"):
        assert col in optics.columns
    assert optics["rlnMicrographPixelSize"].iloc[0] == pytest.approx(5.36)
    for col in ("rlnMicrographName", "rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"):
        assert col in mics.columns
    assert len(mics) == 2
    truth = json.loads((out / "truth.json").read_text())
    assert truth["settings"]["seed"] == 5 and len(truth["micrographs"]) == 2
    for i, row in mics.iterrows():
        with mrcfile.open(out / row["rlnMicrographName"]) as mrc:
            img = mrc.data
            assert img.shape == (160, 160) and float(mrc.voxel_size.x) == pytest.approx(5.36, abs=1e-3)
        name = Path(row["rlnMicrographName"]).stem
        with mrcfile.open(out / "Labels" / f"{name}_labels.mrc") as mrc:
            labels = mrc.data.astype(np.uint8)
        coords = starfile.read(out / "Coordinates" / f"{name}.star")
        xy = np.rint(coords[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()).astype(int)
        assert len(xy) == truth["micrographs"][i]["n_particles"] > 0
        assert np.all(labels[xy[:, 1], xy[:, 0]] == PARTICLE)
        assert truth["micrographs"][i]["particle_diameter_A"] == pytest.approx(200.0, rel=0.01)
        assert row["rlnDefocusU"] == pytest.approx(truth["micrographs"][i]["defocus_u"])
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporary files


def test_project_is_reproducible(tmp_path):
    from relion_pixer.simulate import simulate_project

    import mrcfile

    a = simulate_project(tmp_path / "a", 1, seed=11, shape=(96, 96))
    b = simulate_project(tmp_path / "b", 1, seed=11, shape=(96, 96))
    with mrcfile.open(a / "Micrographs/mic_0000.mrc") as ma, mrcfile.open(b / "Micrographs/mic_0000.mrc") as mb:
        np.testing.assert_array_equal(ma.data, mb.data)


def test_cli_tiny(tmp_path, capsys):
    import json

    import starfile

    from relion_pixer.cli import main as top_main
    from relion_pixer.simulate.cli import main

    out = tmp_path / "cli"
    assert main(["--n", "2", "--out", str(out), "--size", "96", "--seed", "2", "--snr", "0.05", "0.2",
                 "--diameter", "150", "--family", "globular", "--quiet"]) == 0
    assert len(starfile.read(out / "micrographs.star")["micrographs"]) == 2
    assert (out / "Coordinates" / "mic_0001.star").is_file()
    assert top_main(["simulate", "--n", "1", "--out", str(tmp_path / "cli2"), "--size", "64", "--quiet"]) == 0
    assert main(["--n", "1", "--out", str(tmp_path / "dose"), "--size", "128", "--dose", "40", "--diameter", "150",
                 "--contamination", "0", "--carbon", "0", "--quiet"]) == 0
    rec = json.loads((tmp_path / "dose" / "truth.json").read_text())["micrographs"][0]
    assert rec["dose"] == 40.0 and rec["snr"] > 0 and rec["snr_requested"] is None
    assert main(["--n", "1", "--out", str(tmp_path / "x"), "--model", str(tmp_path / "nope.pdb"), "--quiet"]) == 1
    assert "nope.pdb" in capsys.readouterr().err


@pytest.mark.parametrize("args, said", [
    (["--seed", "-1"], "--seed: must be >= 0"),
    (["--contamination", "-1"], "--contamination: must be >= 0"),
    (["--density", "-0.5"], "--density: must be >= 0"),
    (["--carbon", "1.5"], "--carbon: must be between 0 and 1"),
    (["--angpix", "0.01", "--diameter", "200"], "wider than the 64 x 64 px micrograph"),
    (["--float", "--float16", "--dose", "100", "--angpix", "30", "--diameter", "600", "--size", "512"],
     "do not fit in float16"),
])
def test_cli_bad_parameters_are_one_line_errors_without_a_project(tmp_path, capsys, args, said):
    """Bad values stop with one line naming the option (they had raised tracebacks, or written a project with no
    particles, or micrographs full of inf), and no micrograph is written."""
    from relion_pixer.simulate.cli import main

    out = tmp_path / "x"
    with pytest.raises(SystemExit) if args[0] in ("--seed", "--contamination", "--density", "--carbon") \
            else contextlib.nullcontext():
        assert main(["--n", "1", "--out", str(out), "--size", "64", "--quiet", *args]) == 1
    assert said in capsys.readouterr().err
    assert not list(out.rglob("*.mrc"))


def test_cli_output_that_is_a_file_or_an_earlier_project(tmp_path, capsys):
    from relion_pixer.simulate.cli import main

    (tmp_path / "afile").write_text("")
    assert main(["--n", "1", "--out", str(tmp_path / "afile"), "--size", "64", "--quiet"]) == 1
    assert "cannot write" in capsys.readouterr().err
    assert main(["--n", "2", "--out", str(tmp_path / "p"), "--size", "64", "--quiet"]) == 0
    assert "already holds" not in capsys.readouterr().err
    assert main(["--n", "1", "--out", str(tmp_path / "p"), "--size", "64", "--quiet"]) == 0
    assert "already holds a simulated project" in capsys.readouterr().err


def test_phase_plate_moves_contrast_to_low_frequencies():
    """A Volta phase plate (90 degrees) turns the CTF's sine into a cosine: at low defocus the particles' contrast
    moves to low spatial frequencies (dark blobs instead of fringed outlines)."""

    def low_share(phase_shift):
        m = _sim(7, shape=(256, 256), particle_diameter_px=32, snr=1.0, defocus_um=0.7, phase_shift=phase_shift,
                 ice_gradient=0.0, quantise_8bit=False, density=0.2, structural_noise=0.2)
        assert m.meta["phase_shift"] == phase_shift
        clean = m.clean.astype(np.float64) - m.clean.mean()
        power = np.abs(np.fft.fft2(clean)) ** 2
        f = np.hypot(*np.meshgrid(np.fft.fftfreq(256), np.fft.fftfreq(256)))
        return power[(f > 0) & (f < 1 / 32)].sum() / power[f > 0].sum()

    assert low_share(90.0) > low_share(0.0) + 0.1


@pytest.mark.parametrize("quantise", [False, True])
def test_particle_signal_is_the_particles_part_of_clean(quantise):
    kw = dict(shape=(256, 256), snr=0.1, ice_gradient=0.0, density=0.3, quantise_8bit=quantise)
    plain = _sim(9, **kw)
    m = _sim(9, keep_particle_signal=True, **kw)
    # asking for the signal changes nothing else
    np.testing.assert_array_equal(plain.image, m.image)
    np.testing.assert_array_equal(plain.clean, m.clean)
    assert plain.particle_signal is None and m.particle_signal.shape == m.image.shape
    # on flat ice without contamination, clean = background level + particle signal
    far = m.labels == BACKGROUND
    level = np.median(m.clean[far])
    p = m.labels == PARTICLE
    np.testing.assert_allclose(m.clean[p], level + m.particle_signal[p], atol=0.02 * np.abs(m.particle_signal[p]).max())
    # and it is the signal the SNR is defined with
    snr = np.mean(m.particle_signal[p].astype(np.float64) ** 2) / np.var((m.image - m.clean)[p].astype(np.float64))
    assert snr == pytest.approx(m.meta["snr_measured"], rel=0.15 if quantise else 1e-4)


def test_shell_family_is_hollow_in_projection_and_outside_the_default_mix():
    """Thin-walled shells project as a ring round a light centre; the default mix's cages are nearly filled."""
    from scipy.ndimage import gaussian_filter

    assert "shell" in ALL_FAMILIES and "shell" not in SHAPE_FAMILIES

    def hollowness(fam, seed):
        # projected thickness at the centre over its largest value (1: filled), at 50 px across, blurred by 1 px
        img, half, m = _one_projection(fam, seed, 100.0)
        img = gaussian_filter(img, 1.0)
        return img[half - 1 : half + 2, half - 1 : half + 2].mean() / img.max(), m

    shells = [hollowness("shell", s) for s in range(8)]
    cages = [hollowness("cage", s)[0] for s in range(8)]
    assert max(h for h, _ in shells) < 0.7
    assert np.mean([h for h, _ in shells]) < np.mean(cages) - 0.1
    assert all(m.diameter == pytest.approx(100.0) and m.family == "shell" for _, m in shells)
