"""Labels by reprojection: masks, pasting, STAR conventions and an end-to-end run on a simulated refinement."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from relion_pixer import PARTICLE, relion
from relion_pixer.labels import (
    LABEL_COLUMN,
    NODE_TYPE,
    LabelError,
    MaskRenderer,
    main,
    paste_mask,
    read_micrograph_pixel_sizes,
    read_particles,
)
from relion_pixer.masks import MASK_FRACTION, binarise_projection
from relion_pixer.projection import project

# An asymmetric object made of Gaussian blobs: centre (x, y, z) and sigma in Angstrom, amplitude.
BLOBS = [
    ((0.0, 0.0, 0.0), 22.0, 1.0),
    ((32.0, 12.0, -6.0), 14.0, 0.9),
    ((-22.0, 28.0, 10.0), 12.0, 0.8),
    ((6.0, -34.0, 18.0), 10.0, 1.0),
    ((-18.0, -12.0, -28.0), 13.0, 0.7),
]


def blob_map(box: int, angpix: float) -> np.ndarray:
    """The blob object sampled on a ``box^3`` grid of ``angpix`` voxels, centred on voxel ``box//2``."""
    c = (np.arange(box) - box // 2) * angpix
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = np.zeros((box,) * 3, np.float64)
    for (bx, by, bz), sigma, amp in BLOBS:
        vol += amp * np.exp(-((x - bx) ** 2 + (y - by) ** 2 + (z - bz) ** 2) / (2 * sigma**2))
    return vol.astype(np.float32)


def truth_label_map(shape, vol, centres, angles) -> np.ndarray:
    """What a simulator does: project at the micrograph's pixel size, binarise, place at the true centre."""
    label = np.zeros(shape, np.uint8)
    m = vol.shape[0]
    pad = m
    canvas = np.zeros((shape[0] + 2 * pad, shape[1] + 2 * pad), bool)
    for (cx, cy), (rot, tilt, psi) in zip(centres, angles):
        ix, iy = int(round(cx)), int(round(cy))
        # sub-pixel part as a RELION origin: centre lands at M//2 - origin
        proj = project(vol, rot, tilt, psi, shifts=[[ix - cx, iy - cy]], out_size=m)[0]
        mask = binarise_projection(proj)
        r0, c0 = iy - m // 2 + pad, ix - m // 2 + pad
        canvas[r0 : r0 + m, c0 : c0 + m] |= mask
    label[canvas[pad:-pad, pad:-pad]] = PARTICLE
    return label


def iou(a, b) -> float:
    a, b = a > 0, b > 0
    return float((a & b).sum() / max(1, (a | b).sum()))


def write_mrc(path, data, angpix):
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.asarray(data))
        mrc.voxel_size = angpix


# ------------------------------------------------------------------------------------------------------------
# pasting and masks


def test_paste_mask_clips_at_edges_and_unions():
    label = np.zeros((10, 12), np.uint8)
    mask = np.ones((4, 6), bool)
    mask[0, 0] = False
    paste_mask(label, mask, -3, -2)  # top-left corner half outside
    assert label[:2, :3].all() and label.sum() == 2 * 3
    paste_mask(label, mask, 9, 8)  # bottom-right, mostly outside
    assert label[8:, 9:].sum() == (2 * 3 - 1)  # mask[0, 0] lands at (8, 9) and stays background
    assert label[8, 9] == 0
    paste_mask(label, mask, 20, 20)  # entirely outside: nothing, no error
    paste_mask(label, mask, -10, 0)
    before = label.copy()
    paste_mask(label, np.zeros((3, 3), bool), 0, 0)  # union: an empty mask removes nothing
    np.testing.assert_array_equal(label, before)
    assert set(np.unique(label)) <= {0, PARTICLE}


def test_output_paths_follow_relion_and_never_collide():
    from relion_pixer.labels import _output_stems

    stems = _output_stems(["MotionCorr/job002/Movies/a.mrc", "Micrographs/b.mrc", "c.mrc", "/abs/../d.mrc",
                           "MotionCorr/job003/Movies/e.mrc", "Other/job009/Movies/e.mrc", "data/set1/mics/f.mrc"])
    assert stems["MotionCorr/job002/Movies/a.mrc"] == Path("Movies/a")
    assert stems["data/set1/mics/f.mrc"] == Path("data/set1/mics/f")  # no jobNNN: the whole path, as RELION
    assert stems["Micrographs/b.mrc"] == Path("Micrographs/b")
    assert stems["c.mrc"] == Path("c")
    assert not stems["/abs/../d.mrc"].is_absolute() and ".." not in stems["/abs/../d.mrc"].parts
    # same short name from two jobs: keep the whole paths apart
    assert stems["MotionCorr/job003/Movies/e.mrc"] == Path("MotionCorr/job003/Movies/e")
    assert stems["Other/job009/Movies/e.mrc"] == Path("Other/job009/Movies/e")


def test_renderer_mask_is_binarise_projection_at_the_micrograph_scale():
    vol = blob_map(40, 4.0)
    r = MaskRenderer(vol, 4.0, 4.0, max_box=64)
    assert r.box == 40 and r.scale == pytest.approx(1.0)
    angles = (30.0, 60.0, 100.0)
    (mask, x0, y0), = list(r.masks(*angles, [[100.0, 50.0]]))
    expected = binarise_projection(project(vol, *angles)[0])
    k = r.mask_box
    assert mask.shape == (k, k)
    # the mask box is centred on the particle: the projection's centre pixel 20 sits at (100, 50)
    off = 100 - x0 - 20
    assert off == 50 - y0 - 20 >= 0
    got = mask[off : off + 40, off : off + 40]
    assert np.abs(got.astype(int) - expected.astype(int)).sum() <= 2
    assert not mask[:off].any() and not mask[off + 40 :].any()
    # the threshold is a fraction of the maximum: larger fraction, smaller mask, nested
    small = next(MaskRenderer(vol, 4.0, 4.0, fraction=0.5).masks(*angles, [[100.0, 50.0]]))[0]
    assert small.sum() < 0.8 * mask.sum() and not (small & ~mask).any()
    assert MASK_FRACTION == r.fraction


def test_renderer_subpixel_centre_and_downsampling():
    # micrograph pixels twice the map's voxels: the map is cropped to the micrograph scale (no finer)
    fine = blob_map(80, 2.0)
    coarse = blob_map(40, 4.0)
    r = MaskRenderer(fine, 2.0, 4.0, max_box=64)
    assert r.box == 40 and r.work_angpix == pytest.approx(4.0)
    centre = np.array([[60.3, 70.6]])
    label = r.render((140, 130), 10.0, 80.0, 250.0, centre)
    truth = truth_label_map((140, 130), coarse, centre, [(10.0, 80.0, 250.0)])
    assert iou(label, truth) > 0.9
    # the real-space projector gives the same masks
    real = MaskRenderer(fine, 2.0, 4.0, max_box=64, method="real").render((140, 130), 10.0, 80.0, 250.0, centre)
    assert iou(real, truth) > 0.9 and iou(real, label) > 0.95
    # a working box smaller than the micrograph scale: coarser projection, upsampled, still close
    r16 = MaskRenderer(fine, 2.0, 4.0, max_box=20)
    assert r16.box == 20 and r16.scale == pytest.approx(0.5)
    assert iou(r16.render((140, 130), 10.0, 80.0, 250.0, centre), truth) > 0.85
    # moving the centre by whole pixels moves the mask by as much
    moved = r.render((140, 130), 10.0, 80.0, 250.0, centre + [[5, -3]])
    np.testing.assert_array_equal(np.roll(label, (-3, 5), axis=(0, 1))[10:-10, 10:-10], moved[10:-10, 10:-10])


def test_renderer_overlaps_are_unions_and_edges_are_clipped():
    vol = blob_map(40, 4.0)
    r = MaskRenderer(vol, 4.0, 4.0)
    shape = (90, 100)
    a = r.render(shape, 0.0, 30.0, 0.0, [[40.0, 45.0]])
    b = r.render(shape, 90.0, 60.0, 10.0, [[55.0, 50.0]])
    both = r.render(shape, [0.0, 90.0], [30.0, 60.0], [0.0, 10.0], [[40.0, 45.0], [55.0, 50.0]])
    assert (a & b).any()  # they do overlap
    np.testing.assert_array_equal(both, a | b)
    assert both.dtype == np.uint8 and set(np.unique(both)) == {0, PARTICLE}
    # a particle centred on the left edge: exactly the in-micrograph part of the same mask further in
    edge = r.render(shape, 0.0, 30.0, 0.0, [[0.0, 45.0]])
    inside = r.render((90, 200), 0.0, 30.0, 0.0, [[50.0, 45.0]])
    np.testing.assert_array_equal(edge, inside[:, 50:150])
    assert 0 < edge.sum() < inside.sum()
    # entirely outside: nothing
    assert r.render(shape, 0.0, 30.0, 0.0, [[-60.0, 45.0]]).sum() == 0


# ------------------------------------------------------------------------------------------------------------
# STAR conventions


def _star(path, blocks: dict):
    starfile.write(blocks, path, overwrite=True)
    return path


def test_origins_in_pixels_30_and_angstrom_31_agree(tmp_path):
    common = {
        "rlnMicrographName": ["mics/a.mrc", "mics/b.mrc"],
        "rlnCoordinateX": [100.0, 200.0],
        "rlnCoordinateY": [150.0, 50.0],
        "rlnAngleRot": [10.0, 20.0],
        "rlnAngleTilt": [30.0, 40.0],
        "rlnAnglePsi": [50.0, 60.0],
    }
    # RELION 3.0: origins in pixels of 2 A particle images (detector 5 um at 25000x)
    p30 = _star(tmp_path / "p30.star", {"images": pd.DataFrame({**common, "rlnOriginX": [3.0, -2.5],
                                                                 "rlnOriginY": [-1.0, 4.0],
                                                                 "rlnDetectorPixelSize": [5.0, 5.0],
                                                                 "rlnMagnification": [25000.0, 25000.0]})})
    # RELION 3.1: origins in Angstrom; optics group pixel size 2 A
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnImagePixelSize": [2.0],
                           "rlnMicrographPixelSize": [1.0]})
    p31 = _star(tmp_path / "p31.star", {"optics": optics,
                                        "particles": pd.DataFrame({**common, "rlnOpticsGroup": [1, 1],
                                                                   "rlnOriginXAngst": [6.0, -5.0],
                                                                   "rlnOriginYAngst": [-2.0, 8.0]})})
    # 3.1 header but origins in pixels (as relion_project's _shifted files): the optics pixel size converts them
    p31px = _star(tmp_path / "p31px.star", {"optics": optics,
                                            "particles": pd.DataFrame({**common, "rlnOpticsGroup": [1, 1],
                                                                       "rlnOriginX": [3.0, -2.5],
                                                                       "rlnOriginY": [-1.0, 4.0]})})
    a, b, c = read_particles(p30), read_particles(p31), read_particles(p31px)
    for df in (a, b, c):
        np.testing.assert_allclose(df["origin_x_A"], [6.0, -5.0])
        np.testing.assert_allclose(df["origin_y_A"], [-2.0, 8.0])
        np.testing.assert_allclose(df[["rot", "tilt", "psi"]].to_numpy(), [[10, 30, 50], [20, 40, 60]])
    assert a["mic_angpix_optics"].isna().all()
    np.testing.assert_allclose(b["mic_angpix_optics"], [1.0, 1.0])
    # pixels with no way to know their size: a clear error, unless --particle_angpix
    no_size = _star(tmp_path / "p30b.star", {"images": pd.DataFrame({**common, "rlnOriginX": [3.0, -2.5],
                                                                      "rlnOriginY": [-1.0, 4.0]})})
    with pytest.raises(LabelError, match="particle_angpix"):
        read_particles(no_size)
    np.testing.assert_allclose(read_particles(no_size, particle_angpix=2.0)["origin_x_A"], [6.0, -5.0])


def test_particle_centres_truncate_coordinates_like_relion_extract():
    from relion_pixer.labels import particle_centres

    df = pd.DataFrame({"x": [100.9, 7.2], "y": [50.99, 3.0], "origin_x_A": [0.0, 6.0], "origin_y_A": [0.0, -3.0]})
    cx, cy = particle_centres(df, 1.5)
    # RELION windows the particle around pixel (long) coordinate; the origin (A) then moves the centre by -origin
    np.testing.assert_allclose(cx, [100.0, 7.0 - 4.0])
    np.testing.assert_allclose(cy, [50.0, 3.0 + 2.0])


def test_read_particles_errors_name_the_file_and_columns(tmp_path):
    df = pd.DataFrame({"rlnMicrographName": ["a.mrc"], "rlnCoordinateX": [1.0], "rlnCoordinateY": [2.0],
                       "rlnAnglePsi": [5.0]})
    p = _star(tmp_path / "class2d.star", {"particles": df})
    with pytest.raises(LabelError, match=r"class2d\.star.*_rlnAngleRot.*_rlnAngleTilt.*3D refinement"):
        read_particles(p)
    with pytest.raises(LabelError, match="file not found"):
        read_particles(tmp_path / "nope.star")


def test_read_particles_reads_names_as_the_picking_job_does(tmp_path):
    """Micrograph names RELION reads (a '#' inside, a quote inside, one named like a block) are read whole, as the
    picking job reads them (io.read_star); a value that is not a number is named as such."""
    p = tmp_path / "run_data.star"
    p.write_text(
        "\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n1 2.0\n\n"
        "data_particles\n\nloop_\n_rlnMicrographName #1\n_rlnCoordinateX #2\n_rlnCoordinateY #3\n"
        "_rlnAngleRot #4\n_rlnAngleTilt #5\n_rlnAnglePsi #6\n_rlnOpticsGroup #7\n"
        "mics/grid#2_0001.mrc 100 150 10 20 30 1\n"
        "mics/it's_bob's.mrc 200 50 10 20 30 1\n"
        "data_0003.mrc 300 60 10 20 30 1\n\n"
    )
    df = read_particles(p)
    assert df["micrograph"].tolist() == ["mics/grid#2_0001.mrc", "mics/it's_bob's.mrc", "data_0003.mrc"]
    np.testing.assert_allclose(df["x"], [100, 200, 300])
    bad = tmp_path / "bad.star"
    bad.write_text(p.read_text().replace("200 50", "two 50"))
    with pytest.raises(LabelError, match=r"bad\.star: 1 particle\(s\) with non-numeric"):
        read_particles(bad)


@pytest.mark.shared
def test_read_real_relion_particle_files(shared_data):
    other = shared_data / "relion" / "other"
    six = read_particles(other / "relion31.6opticsgroups.star")
    raw = starfile.read(other / "relion31.6opticsgroups.star")
    np.testing.assert_allclose(six["origin_x_A"], raw["particles"]["rlnOriginXAngst"])
    # micrograph pixel size per optics group (group 6 has 1.035 A micrographs)
    g6 = (raw["particles"]["rlnOpticsGroup"] == 6).to_numpy()
    np.testing.assert_allclose(six["mic_angpix_optics"][g6], 1.035)
    assert set(np.round(six["mic_angpix_optics"][~g6], 3)) <= {1.24, 1.25}
    for name in ("relion31.star", "relion5.star"):
        df = read_particles(other / name)
        assert len(df) > 0 and np.isfinite(df[["origin_x_A", "rot"]].to_numpy()).all()
    # RELION 2: origins in pixels of 3.7333 um / 38023x = 0.982 A particle images
    r2 = read_particles(other / "empiar10025_particles_relion2.star")
    raw2 = starfile.read(other / "empiar10025_particles_relion2.star")
    np.testing.assert_allclose(r2["origin_x_A"], raw2["rlnOriginX"] * 3.733333e4 / 38023.0, rtol=1e-6)
    # and the micrograph pixel size of that data set, 2.5 um / 38023x, from its CTF STAR
    sizes = read_micrograph_pixel_sizes(other / "empiar10025_ctf_params.star")
    assert set(r2["micrograph"]) <= set(sizes)
    assert sizes[r2["micrograph"].iloc[0]] == pytest.approx(2.5e4 / 38023.0)
    tut = read_micrograph_pixel_sizes(shared_data / "relion" / "tutorial_metadata" / "micrographs_ctf.star")
    assert set(tut.values()) == {0.885}
    refined = read_particles(shared_data / "relion" / "tutorial_metadata" / "run_it025_data.star")
    assert set(refined["micrograph"]) <= set(tut)


# ------------------------------------------------------------------------------------------------------------
# end to end on a simulated refinement


def _simulated_refinement(tmp_path, rng, style: str):
    """Two micrographs with particles at known angles/centres; returns (args, truths, label names)."""
    mic_apix = 4.0
    shape = (260, 300)
    truth_vol = blob_map(44, mic_apix)
    rows, truths, names = [], {}, []
    for k in range(2):
        name = f"MotionCorr/job002/Movies/mic{k}.mrc"
        names.append(name)
        n = 9
        centres = rng.uniform([-10, -10], [shape[1] + 10, shape[0] + 10], size=(n, 2))  # some at/over the edges
        centres[0] = [2.0, 120.4]  # half outside on the left
        centres[1] = [centres[2, 0] + 14.0, centres[2, 1] - 9.0]  # overlapping its neighbour
        angles = np.column_stack([rng.uniform(-180, 180, n), np.degrees(np.arccos(rng.uniform(-1, 1, n))),
                                  rng.uniform(-180, 180, n)])
        truths[name] = truth_label_map(shape, truth_vol, centres, angles)
        # picked coordinates near the particle (fractional, as pickers write them); RELION extracts around pixel
        # (long) coordinate and the refined origin (px) makes up the difference: centre = trunc(coordinate) - origin
        coords = np.round(centres) + rng.integers(-6, 7, size=centres.shape) + rng.uniform(0, 0.95, centres.shape)
        coords = np.abs(coords)  # non-negative, as RELION's
        origin_px = np.trunc(coords) - centres
        for (x, y), (ox, oy), (r, t, p) in zip(coords, origin_px, angles):
            rows.append(dict(rlnMicrographName=name, rlnCoordinateX=x, rlnCoordinateY=y, rlnAngleRot=r,
                             rlnAngleTilt=t, rlnAnglePsi=p, ox=ox, oy=oy))
        # micrograph files: header pixel size deliberately wrong where another source must win
        write_mrc(tmp_path / name, rng.normal(size=shape).astype(np.float32), mic_apix if style == "31" else 1.0)
    df = pd.DataFrame(rows)
    args = []
    if style == "31":
        # RELION 3.1+: origins in A, refinement map at the micrographs' pixel size; pixel size from the MRC header
        df["rlnOriginXAngst"] = df.pop("ox") * mic_apix
        df["rlnOriginYAngst"] = df.pop("oy") * mic_apix
        df["rlnOpticsGroup"] = 1
        optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                               "rlnImagePixelSize": [mic_apix], "rlnImageSize": [64]})
        _star(tmp_path / "run_data.star", {"optics": optics, "particles": df})
        write_mrc(tmp_path / "run_class001.mrc", blob_map(48, mic_apix), mic_apix)
    else:
        # RELION 3.0: particles extracted at 2 A (origins in those pixels), map at 2 A; micrograph pixel size
        # from a 3.1-style micrographs STAR (--in_mics)
        part_apix = 2.0
        df["rlnOriginX"] = df.pop("ox") * mic_apix / part_apix
        df["rlnOriginY"] = df.pop("oy") * mic_apix / part_apix
        df["rlnDetectorPixelSize"] = 5.0
        df["rlnMagnification"] = 5.0e4 / part_apix
        _star(tmp_path / "run_data.star", {"images": df})
        write_mrc(tmp_path / "run_class001.mrc", blob_map(96, part_apix), part_apix)
        mics = pd.DataFrame({"rlnMicrographName": names, "rlnOpticsGroup": [1, 1]})
        optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                               "rlnMicrographPixelSize": [mic_apix]})
        _star(tmp_path / "micrographs.star", {"optics": optics, "micrographs": mics})
        args = ["--in_mics", "micrographs.star"]
    return args, truths


@pytest.mark.parametrize("style", ["31", "30"])
def test_end_to_end_labels_match_simulated_label_maps(tmp_path, rng, monkeypatch, capsys, style):
    monkeypatch.chdir(tmp_path)
    extra, truths = _simulated_refinement(tmp_path, rng, style)
    out = "External/job012/"
    rc = main(["--in_parts", "run_data.star", "--in_3dref", "run_class001.mrc", "--o", out, *extra,
               "--j", "1", "--pipeline_control", out, "--some_relion_param", "7"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "ignoring unknown argument: --some_relion_param 7" in err
    job = tmp_path / out
    assert (job / "RELION_JOB_EXIT_SUCCESS").exists() and not (job / "RELION_JOB_EXIT_FAILURE").exists()
    nodes = starfile.read(job / "RELION_OUTPUT_NODES.star", always_dict=True)["output_nodes"]
    assert nodes["rlnPipeLineNodeName"].tolist() == ["External/job012/labels.star"]
    assert nodes["rlnPipeLineNodeTypeLabel"].tolist() == [NODE_TYPE]

    blocks = starfile.read(job / "labels.star", always_dict=True)
    table = blocks["coordinate_files"]
    assert sorted(table["rlnMicrographName"]) == sorted(truths)
    assert blocks["pixer_labels"]["pixerParticleDiameterAngst"] == pytest.approx(110, rel=0.3)
    for _, row in table.iterrows():
        assert row[LABEL_COLUMN] == f"External/job012/Movies/{Path(row['rlnMicrographName']).stem}_labels.mrc"
        with mrcfile.open(row[LABEL_COLUMN]) as mrc:
            label = np.asarray(mrc.data).astype(np.uint8)
            assert mrc.voxel_size.x == pytest.approx(4.0)
        truth = truths[row["rlnMicrographName"]]
        assert label.shape == truth.shape and set(np.unique(label)) == {0, PARTICLE}
        # the brief's bar is 0.8; the exact conventions reach ~0.99 here, while ignoring RELION's truncation of
        # fractional coordinates (a sub-pixel error) already drops to ~0.91, so hold the tighter bar too
        assert iou(label, truth) >= 0.8, iou(label, truth)
        assert iou(label, truth) >= 0.97, iou(label, truth)
        assert row["rlnMicrographPixelSize"] == pytest.approx(4.0) and row["pixerNrParticles"] == 9
        coords = starfile.read(row["rlnMicrographCoordinates"])
        assert list(coords.columns[:2]) == ["rlnCoordinateX", "rlnCoordinateY"] and len(coords) == 9
    assert not list(job.rglob("*tmp*"))  # atomic writes leave no temporaries


def test_label_set_reads_back_at_network_scale(tmp_path, rng, monkeypatch):
    from relion_pixer import NET_DIAMETER_PX
    from relion_pixer.labels import read_label_set
    from relion_pixer.train import labelled_from_star

    monkeypatch.chdir(tmp_path)
    extra, truths = _simulated_refinement(tmp_path, rng, "31")
    assert main(["--in_parts", "run_data.star", "--in_3dref", "run_class001.mrc", "--o", "External/job012/"]) == 0
    star = "External/job012/labels.star"
    diameter = starfile.read(star, always_dict=True)["pixer_labels"]["pixerParticleDiameterAngst"]
    data = labelled_from_star(star)  # the trainer's entry point (--from-labels)
    assert len(data) == 2 and sorted(data.names) == ["mic0", "mic1"]
    factor = NET_DIAMETER_PX * 4.0 / diameter
    for img, lab, xy in zip(data.images, data.labels, data.coords):
        assert img.shape == lab.shape == tuple(int(round(n * factor)) for n in (260, 300))
        assert lab.dtype == np.uint8 and set(np.unique(lab)) == {0, PARTICLE}
        assert xy.shape == (9, 2)
        inside = (xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] < lab.shape[1] - 0.5) & (xy[:, 1] < lab.shape[0] - 0.5)
        centres = np.round(xy[inside]).astype(int)
        assert lab[centres[:, 1], centres[:, 0]].mean() > 0.8  # particle centres fall on particle pixels
        # the particle fraction is kept by the resampling
        assert abs(lab.mean() - np.mean([t.mean() for t in truths.values()])) < 0.02
    # from outside the project, and with far background ignored
    monkeypatch.chdir(tmp_path / "External")
    far = read_label_set(tmp_path / star, background_within=1.0, diameter_angstrom=diameter)
    assert 255 in np.unique(far.labels[0]) and (far.labels[0] == PARTICLE).sum() == (data.labels[0] == PARTICLE).sum()
    with pytest.raises(LabelError, match="coordinate_files"):
        read_label_set(tmp_path / "run_data.star")


def test_relion_job_conventions(tmp_path, rng, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    extra, truths = _simulated_refinement(tmp_path, rng, "31")
    base = ["--in_parts", "run_data.star", "--in_3dref", "run_class001.mrc"]
    # RELION passes an empty parameter as a bare --label, and users may type dashes into the label field
    assert main([*base, "--o", "External/job004/", "--lowpass", "----max_box", "48", "--relion_version", "4",
                 "--j", "1"]) == 0
    nodes_text = (tmp_path / "External/job004/RELION_OUTPUT_NODES.star").read_text()
    assert "# version 30001" in nodes_text and NODE_TYPE in nodes_text  # RELION 4 writes 30001 STAR files
    assert "# version 30001" in (tmp_path / "External/job004/labels.star").read_text()
    general = starfile.read("External/job004/labels.star", always_dict=True)["pixer_labels"]
    assert general["pixerLowpassAngst"] == 0.0
    # a RELION 3.1 project (integer node types, no generic one): the labels, but no output node
    (tmp_path / "default_pipeline.star").write_text(
        "\n# version 30001\n\ndata_pipeline_nodes\n\nloop_\n_rlnPipeLineNodeName #1\n_rlnPipeLineNodeType #2\n"
        "Import/job001/movies.star 0\n")
    assert main([*base, "--o", "External/job005/"]) == 0
    assert (tmp_path / "External/job005/labels.star").exists()
    assert not (tmp_path / "External/job005/RELION_OUTPUT_NODES.star").exists()
    assert (tmp_path / "External/job005/RELION_JOB_EXIT_SUCCESS").exists()
    assert main(["--help"]) == 0 and "--in_parts" in capsys.readouterr().out


def test_end_to_end_wrong_origin_unit_would_fail(tmp_path, rng, monkeypatch):
    # the IoU criterion above is sensitive to the origin conventions: reading the 3.0 pixel origins with the wrong
    # particle pixel size (as if they were micrograph pixels) visibly breaks the labels
    monkeypatch.chdir(tmp_path)
    extra, truths = _simulated_refinement(tmp_path, rng, "30")
    assert main(["--in_parts", "run_data.star", "--in_3dref", "run_class001.mrc", "--o", "out/", *extra,
                 "--particle_angpix", "4.0"]) == 0
    table = starfile.read("out/labels.star", always_dict=True)["coordinate_files"]
    ious = [iou(mrcfile.read(r[LABEL_COLUMN]), truths[r["rlnMicrographName"]]) for _, r in table.iterrows()]
    assert max(ious) < 0.8


def test_job_failures_write_the_failure_marker(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_mrc(tmp_path / "map.mrc", np.zeros((8, 8, 9), np.float32), 2.0)
    df = pd.DataFrame({"rlnMicrographName": ["m.mrc"], "rlnCoordinateX": [1.0], "rlnCoordinateY": [2.0],
                       "rlnAngleRot": [0.0], "rlnAngleTilt": [0.0], "rlnAnglePsi": [0.0]})
    _star(tmp_path / "parts.star", {"particles": df})
    assert main(["--in_parts", "parts.star", "--in_3dref", "map.mrc", "--o", "job/"]) == 1
    err = capsys.readouterr().err
    assert "map.mrc" in err and "not cubic" in err
    assert (tmp_path / "job" / "RELION_JOB_EXIT_FAILURE").exists()
    assert not (tmp_path / "job" / "RELION_JOB_EXIT_SUCCESS").exists()
    # micrograph absent from --in_mics
    write_mrc(tmp_path / "map.mrc", blob_map(16, 8.0), 8.0)
    write_mrc(tmp_path / "m.mrc", np.zeros((32, 32), np.float32), 8.0)
    _star(tmp_path / "mics.star", {"micrographs": pd.DataFrame({"rlnMicrographName": ["other.mrc"]})})
    assert main(["--in_parts", "parts.star", "--in_3dref", "map.mrc", "--o", "job/", "--in_mics", "mics.star"]) == 1
    assert "unknown micrograph 'm.mrc'" in capsys.readouterr().err
    # a micrograph file that is missing
    (tmp_path / "m.mrc").unlink()
    assert main(["--in_parts", "parts.star", "--in_3dref", "map.mrc", "--o", "job/"]) == 1
    assert "m.mrc: micrograph not found" in capsys.readouterr().err
    # the top-level command routes any argv with --in_parts here (RELION's External job calls it without subcommand)
    from relion_pixer.cli import main as cli_main

    assert cli_main(["--o", "job3/", "--in_parts", "parts.star", "--in_3dref", "map.mrc", "--j", "2"]) == 1
    assert "m.mrc: micrograph not found" in capsys.readouterr().err
    assert (tmp_path / "job3" / "RELION_JOB_EXIT_FAILURE").exists()
    # a missing required option still leaves the failure marker
    assert main(["--in_parts", "parts.star", "--o", "job2/"]) == 1
    assert "missing --in_3dref" in capsys.readouterr().err
    assert (tmp_path / "job2" / "RELION_JOB_EXIT_FAILURE").exists()
    # a parameter that is not a number
    assert main(["--in_parts", "parts.star", "--in_3dref", "map.mrc", "--o", "job2/", "--lowpass", "fine"]) == 1
    assert "--lowpass: expected a number, got 'fine'" in capsys.readouterr().err
    # and then a good run replaces the failure marker by the success one
    write_mrc(tmp_path / "m.mrc", np.zeros((32, 32), np.float32), 8.0)
    assert main(["--in_parts", "parts.star", "--in_3dref", "map.mrc", "--o", "job/"]) == 0
    assert (tmp_path / "job" / "RELION_JOB_EXIT_SUCCESS").exists()
    assert not (tmp_path / "job" / "RELION_JOB_EXIT_FAILURE").exists()


def test_labels_agree_with_the_simulators_label_maps(tmp_path, rng, monkeypatch):
    """The simulator's own rendering of particle labels (pseudo-atomic model, splatted projection, shared
    binarise_projection) against labels reprojected from a 3D map of the same model."""
    import scipy.ndimage

    from relion_pixer.projection import euler_matrix
    from relion_pixer.simulate.shapes import make_shape, project_model

    monkeypatch.chdir(tmp_path)
    model = make_shape(np.random.default_rng(7), "ribosome", diameter=240.0, n_points=3000)
    mic_apix, shape = 5.0, (280, 320)
    # the simulator's label map: a point q of the model lands at (R q)[:2]; RELION's matrix A does the same
    n = 7
    centres = rng.uniform([20, 20], [shape[1] - 20, shape[0] - 20], size=(n, 2))
    centres[0] = [3.3, 140.6]  # half outside
    centres[1] = centres[2] + [30.0, 12.0]  # overlapping
    angles = np.column_stack([rng.uniform(-180, 180, n), np.degrees(np.arccos(rng.uniform(-1, 1, n))),
                              rng.uniform(-180, 180, n)])
    # (as the simulator's particle placement: project_model with the centroid at the sub-pixel centre, binarised,
    # pasted with its top-left at floor(centre) - half, clipped)
    truth = np.zeros(shape, np.uint8)
    for (x, y), a in zip(centres, angles):
        patch, half = project_model(model, euler_matrix(*a), mic_apix, (x - np.floor(x), y - np.floor(y)))
        paste_mask(truth, binarise_projection(patch), int(np.floor(x)) - half, int(np.floor(y)) - half)
    # the "refined map": the same model as a density (points splatted trilinearly, blurred by the point size)
    vox, box = 2.5, 112
    g = model.xyz / vox + box // 2  # (x, y, z) voxel coordinates
    vol = np.zeros((box,) * 3, np.float64)
    i0 = np.floor(g).astype(int)
    f = g - i0
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = model.weight * np.abs(1 - dx - f[:, 0]) * np.abs(1 - dy - f[:, 1]) * np.abs(1 - dz - f[:, 2])
                np.add.at(vol, (i0[:, 2] + dz, i0[:, 1] + dy, i0[:, 0] + dx), w)
    vol = scipy.ndimage.gaussian_filter(vol, model.blob_sigma / vox).astype(np.float32)
    write_mrc(tmp_path / "run_class001.mrc", vol, vox)
    write_mrc(tmp_path / "Micrographs" / "sim.mrc", rng.normal(size=shape).astype(np.float32), mic_apix)
    coords = np.trunc(centres) + rng.integers(-5, 6, size=centres.shape)
    origin_a = (np.trunc(coords) - centres) * mic_apix
    df = pd.DataFrame({"rlnMicrographName": "Micrographs/sim.mrc", "rlnCoordinateX": coords[:, 0],
                       "rlnCoordinateY": coords[:, 1], "rlnAngleRot": angles[:, 0], "rlnAngleTilt": angles[:, 1],
                       "rlnAnglePsi": angles[:, 2], "rlnOriginXAngst": origin_a[:, 0],
                       "rlnOriginYAngst": origin_a[:, 1], "rlnOpticsGroup": 1})
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnImagePixelSize": [vox], "rlnMicrographPixelSize": [mic_apix]})
    _star(tmp_path / "run_data.star", {"optics": optics, "particles": df})
    assert main(["--in_parts", "run_data.star", "--in_3dref", "run_class001.mrc", "--o", "job/"]) == 0
    label = mrcfile.read(tmp_path / "job" / "Micrographs" / "sim_labels.mrc").astype(np.uint8)
    assert iou(label, truth) >= 0.8
    # the diameter written for fine-tuning is the simulator's definition of the particle's diameter
    diameter = starfile.read("job/labels.star", always_dict=True)["pixer_labels"]["pixerParticleDiameterAngst"]
    assert diameter == pytest.approx(model.diameter, rel=0.08)
    # and the transposed convention (angles of the inverse rotation) would not do
    bad = MaskRenderer(vol, vox, mic_apix).render(shape, -angles[:, 2], -angles[:, 1], -angles[:, 0], centres)
    assert iou(bad, truth) < iou(label, truth) - 0.15


@pytest.mark.parametrize("args, message", [
    (["--fine_tune", "Yes"], "unknown parameter '--fine_tune': did you mean finetune?"),
    (["--finetune", "maybe"], "--finetune takes Yes or No, not 'maybe'"),
])
def test_labels_job_stops_on_a_misspelt_parameter(tmp_path, monkeypatch, capsys, args, message):
    """The labels External job: a misspelt parameter (which would leave its default in force) or a Yes/No parameter
    with another value stops the job with the reason and the failure marker, before any work."""
    monkeypatch.chdir(tmp_path)
    out = "External/job041/"
    rc = main(["--in_parts", "run_data.star", "--in_3dref", "run_class001.mrc", "--o", out, *args])
    assert rc == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"ERROR: relion_pixer labels: {message} (relion_pixer labels --help lists the parameters)"]
    assert (tmp_path / out / relion.EXIT_FAILURE).exists()


@pytest.mark.parametrize("args, message", [
    (["--mask_fraction", "1.5"], "--mask_fraction must be between 0 and 1, got 1.5"),
    (["--max_box", "0"], "--max_box must be at least 16, got 0"),
    (["--lowpass", "-5"], "--lowpass must be 0 (none) or positive, got -5"),
    (["--angpix", "0"], "--angpix must be positive, got 0"),
])
def test_labels_job_refuses_values_out_of_range_before_any_work(tmp_path, monkeypatch, capsys, args, message):
    """A value out of range stops the job naming the parameter (a mask fraction of 1.5 had been blamed on the map, a
    working box of 0 silently made 8 with masks 2.5x too large), before the refinement's files are read."""
    monkeypatch.chdir(tmp_path)
    out = "External/job041/"
    assert main(["--in_parts", "missing.star", "--in_3dref", "missing.mrc", "--o", out, *args]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"ERROR: relion_pixer labels: {message}"]
    assert (tmp_path / out / relion.EXIT_FAILURE).exists()
    (tmp_path / "afile").write_text("")
    assert main(["--in_parts", "missing.star", "--in_3dref", "missing.mrc", "--o", "afile"]) == 1
    assert "--o afile: a file is there" in capsys.readouterr().err
