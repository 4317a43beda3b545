"""Tests of relion_pixer.io: STAR reading/writing in RELION's layout, MRC reading, atomic writes."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from relion_pixer import io
from relion_pixer.io import MicrographError, StarError

RELION = "relion"  # sub-directory of ../shared/data


# ------------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------------


def write_mrc(path: Path, data: np.ndarray, angpix: float | None = 1.5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), mrcfile.new(path, overwrite=True) as m:
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile's header statistics of deliberately bad data
        m.set_data(data)
        if angpix is not None:
            m.voxel_size = angpix
    return path


STAR31 = """
# version 30001

data_optics

loop_ 
_rlnOpticsGroupName #1 
_rlnOpticsGroup #2 
_rlnMicrographOriginalPixelSize #3 
_rlnVoltage #4 
_rlnMicrographPixelSize #5 
opticsGroup1            1     0.500000   300.000000     1.000000 
opticsGroup2            2     0.800000   300.000000     1.600000 
opticsGroup3            3     1.100000   300.000000     0.000000 
 

# version 30001

data_micrographs

loop_ 
_rlnMicrographName #1 
_rlnOpticsGroup #2 
_rlnDefocusU #3 
MotionCorr/job002/Movies/a.mrc            1 10000.000000 
MotionCorr/job002/Movies/b.mrc            2 12000.000000 
"Micrographs/with space.mrc"              3 13000.000000 
0001.mrc                                  1 13000.000000 
 
"""

STAR30 = """
data_

loop_
_rlnMicrographName #1
_rlnDefocusU #2
_rlnDetectorPixelSize #3
_rlnMagnification #4
Micrographs/m1.mrc 10000.0 5.0 50000.0
Micrographs/m2.mrc 11000.0 5.0 50000.0
"""


# ------------------------------------------------------------------------------------------------------------------
# micrograph STAR files
# ------------------------------------------------------------------------------------------------------------------


def test_read_star_keeps_names_as_strings(tmp_path):
    star = tmp_path / "mics.star"
    star.write_text(STAR31)
    blocks = io.read_star(star)
    assert set(blocks) == {"optics", "micrographs"}
    names = list(blocks["micrographs"]["rlnMicrographName"])
    assert names[2] == "Micrographs/with space.mrc"
    assert names[3] == "0001.mrc"  # not turned into the number 1
    assert io.read_star_version(star) == 30001


def test_read_star_reads_values_as_relion_does(tmp_path):
    """RELION reads a loop's rows up to a blank line, so names that start like a block, a loop or a label are rows;
    a quote is a quote only at the start of a value; a value starting with # starts a comment; a byte-order mark
    is dropped. A file whose next block follows a one-column loop without a blank line still reads as two blocks."""
    star = tmp_path / "mics.star"
    star.write_bytes(b"\xef\xbb\xbf# version 30001\n\ndata_micrographs\n\nloop_\n_rlnMicrographName #1\n"
                     b"_rlnMicrographPixelSize #2\nM/a.mrc 2.5\ndata_0001.mrc 2.5\nloop_0002.mrc 2.5\n_0003.mrc 2.5\n"
                     b"M/it's_bob's.mrc 2.5\n\"M/with space.mrc\" 2.5 # a comment\n"
                     b"\"M/say \"hi\a\" .mrc\" 2.5\n\n"
                     b"data_list\nloop_\n_rlnMicrographName\nx.mrc\ndata_next\nloop_\n_rlnMicrographName\ny.mrc\n")
    blocks = io.read_star(star)
    assert list(blocks) == ["micrographs", "list", "next"]
    assert list(blocks["micrographs"]["rlnMicrographName"]) == [
        "M/a.mrc", "data_0001.mrc", "loop_0002.mrc", "_0003.mrc", "M/it's_bob's.mrc", "M/with space.mrc",
        'M/say "hi" .mrc']
    assert list(blocks["list"]["rlnMicrographName"]) == ["x.mrc"]
    assert io.read_star_version(star) == 30001
    # what the writer escapes, the reader reads back
    names = ['M/say "hi" .mrc', "'quoted.mrc", "it's.mrc", "a b.mrc"]
    out = tmp_path / "list.star"
    io.write_coordinate_files_star(out, names, [f"c{i}.star" for i in range(4)])
    assert list(io.read_star(out)["coordinate_files"]["rlnMicrographName"]) == names


def test_read_micrographs_star_relion31(tmp_path):
    star = tmp_path / "mics.star"
    star.write_text(STAR31)
    entries = io.read_micrographs_star(star, project_dir=tmp_path)
    assert [e.name for e in entries] == [
        "MotionCorr/job002/Movies/a.mrc",
        "MotionCorr/job002/Movies/b.mrc",
        "Micrographs/with space.mrc",
        "0001.mrc",
    ]
    assert [e.angpix for e in entries] == [1.0, 1.6, 1.1, 1.0]
    assert [e.optics_group for e in entries] == [1, 2, 3, 1]
    assert entries[2].angpix_source == "rlnMicrographOriginalPixelSize"  # group 3 lacks the binned pixel size
    assert entries[0].angpix_source == "rlnMicrographPixelSize"
    assert entries[0].path == tmp_path / "MotionCorr/job002/Movies/a.mrc"


def test_read_micrographs_star_relion30(tmp_path):
    star = tmp_path / "mics30.star"
    star.write_text(STAR30)
    entries = io.read_micrographs_star(star, project_dir=tmp_path)
    assert [e.name for e in entries] == ["Micrographs/m1.mrc", "Micrographs/m2.mrc"]
    assert all(e.optics_group is None for e in entries)
    assert entries[0].angpix == pytest.approx(1.0)  # 10000 * 5 um / 50000
    assert io.read_star_version(star) is None


def test_user_angpix_overrides_and_missing_pixel_size(tmp_path):
    star = tmp_path / "names.star"
    star.write_text("data_\nloop_\n_rlnMicrographName\nx.mrc\ny.mrc\n")
    entries = io.read_micrographs_star(star, project_dir=tmp_path)
    assert [e.angpix for e in entries] == [None, None]
    assert {e.angpix_source for e in entries} == {"none"}
    entries = io.read_micrographs_star(star, project_dir=tmp_path, angpix=1.06)
    assert [e.angpix for e in entries] == [1.06, 1.06]
    assert entries[0].angpix_source == "user"
    with pytest.raises(ValueError, match="positive"):
        io.read_micrographs_star(star, angpix=-1)


def test_header_fallback(tmp_path, rng):
    star = tmp_path / "names.star"
    star.write_text("data_\nloop_\n_rlnMicrographName\nx.mrc\nmissing.mrc\n")
    write_mrc(tmp_path / "x.mrc", rng.normal(size=(40, 40)).astype(np.float32), angpix=1.34)
    entries = io.read_micrographs_star(star, project_dir=tmp_path, header_fallback=True)
    assert entries[0].angpix == pytest.approx(1.34) and entries[0].angpix_source == "mrc_header"
    assert entries[1].angpix is None and entries[1].angpix_source == "none"
    assert io.read_micrographs_star(star, project_dir=tmp_path)[0].angpix is None  # only when asked


def test_paths_resolve_against_project_then_star_dir(tmp_path):
    (tmp_path / "sub").mkdir()
    star = tmp_path / "sub" / "mics.star"
    star.write_text("data_\nloop_\n_rlnMicrographName\nbeside.mrc\n/abs/elsewhere.mrc\n")
    (tmp_path / "sub" / "beside.mrc").write_bytes(b"")
    entries = io.read_micrographs_star(star, project_dir=tmp_path)
    assert entries[0].path == tmp_path / "sub" / "beside.mrc"
    assert entries[1].path == Path("/abs/elsewhere.mrc")
    # a RELION STAR file read from outside its project: names are relative to the project root, two levels up
    proj = tmp_path / "proj"
    (proj / "CtfFind/job005").mkdir(parents=True)
    (proj / "MotionCorr/job002").mkdir(parents=True)
    (proj / "MotionCorr/job002/m.mrc").write_bytes(b"")
    star = proj / "CtfFind/job005/micrographs_ctf.star"
    star.write_text("data_\nloop_\n_rlnMicrographName\nMotionCorr/job002/m.mrc\nMotionCorr/job002/gone.mrc\n")
    entries = io.read_micrographs_star(star, project_dir=tmp_path / "elsewhere")
    assert entries[0].path == proj / "MotionCorr/job002/m.mrc"
    assert entries[1].path == tmp_path / "elsewhere/MotionCorr/job002/gone.mrc"  # missing: reported where expected


def test_bad_micrograph_stars(tmp_path):
    missing = tmp_path / "nope.star"
    with pytest.raises(StarError, match="nope.star.*does not exist"):
        io.read_micrographs_star(missing)
    empty = tmp_path / "empty.star"
    empty.write_text("")
    assert io.read_micrographs_star(empty) == []  # RELION writes an empty table as a 0-byte file
    coords = tmp_path / "coords.star"
    coords.write_text("data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n1 2\n")
    with pytest.raises(StarError, match="coords.star.*_rlnMicrographName"):
        io.read_micrographs_star(coords)
    parts = tmp_path / "parts.star"
    parts.write_text("data_particles\nloop_\n_rlnImageName\n_rlnMicrographName\n1@a.mrcs a.mrc\n")
    with pytest.raises(StarError, match="particle STAR"):
        io.read_micrographs_star(parts)
    badgroup = tmp_path / "badgroup.star"
    badgroup.write_text(STAR31.replace("MotionCorr/job002/Movies/b.mrc            2", "MotionCorr/job002/Movies/b.mrc            7"))
    with pytest.raises(StarError, match="badgroup.star.*optics group 7"):
        io.read_micrographs_star(badgroup)
    named = tmp_path / "namedgroup.star"
    named.write_text(STAR31.replace("opticsGroup2            2", "opticsGroup2            two"))
    with pytest.raises(StarError, match="namedgroup.star: data_optics has a non-integer _rlnOpticsGroup 'two'"):
        io.read_micrographs_star(named)
    short = tmp_path / "short.star"
    short.write_text("data_\nloop_\n_rlnMicrographName\n_rlnOpticsGroup\nx.mrc\n")
    with pytest.raises(StarError, match="short.star: line 5"):
        io.read_micrographs_star(short)


def test_optics_groups_match_as_numbers_as_relion_reads_them(tmp_path):
    """A group written "01" in data_optics and "1" among the micrographs (or the other way) is the same group."""
    star = tmp_path / "padded.star"
    star.write_text(STAR31.replace("opticsGroup1            1 ", "opticsGroup1           01 ")
                    .replace("Movies/b.mrc            2", "Movies/b.mrc           02"))
    entries = io.read_micrographs_star(star, project_dir=tmp_path)
    assert [e.optics_group for e in entries] == [1, 2, 3, 1]
    assert [e.angpix for e in entries] == [1.0, 1.6, 1.1, 1.0]


def _shared_micrograph_stars(root: Path) -> list[Path]:
    out = []
    for f in sorted((root / RELION).rglob("*.star")):
        if f.stat().st_size == 0:
            continue  # .Nodes/ placeholders
        text = f.read_text(errors="replace")
        if "data_micrographs" in text or ("_rlnMicrographName" in text and "_rlnImageName" not in text
                                          and "data_coordinate_files" not in text and "_rlnCoordinateX" not in text):
            out.append(f)
    return out


def test_every_shared_micrograph_star(shared_data):
    stars = _shared_micrograph_stars(shared_data)
    assert len(stars) >= 8
    for star in stars:
        entries = io.read_micrographs_star(star, project_dir=shared_data / RELION / "relion5_tutorial_project")
        blocks = io.read_star(star)
        assert entries, star
        if "micrographs" in blocks:
            # every RELION 3.1+ micrograph STAR here is the beta-galactosidase tutorial at 0.885 A/px
            assert {e.angpix for e in entries} == {0.885}, star
            assert {e.angpix_source for e in entries} == {"rlnMicrographPixelSize"}
            assert all(e.optics_group == 1 for e in entries)
            assert [e.name for e in entries] == list(blocks["micrographs"]["rlnMicrographName"])
            assert all(e.name.startswith("MotionCorr/job002/Movies/") for e in entries)
        elif {"rlnDetectorPixelSize", "rlnMagnification"} <= set(next(iter(blocks.values())).columns):
            df = next(iter(blocks.values()))
            expected = 10000 * float(df["rlnDetectorPixelSize"][0]) / float(df["rlnMagnification"][0])
            assert entries[0].angpix == pytest.approx(expected)
    ctf = shared_data / RELION / "relion5_tutorial_project/CtfFind/job005/micrographs_ctf.star"
    assert io.read_star_version(ctf) == 50001
    assert io.read_star_version(shared_data / RELION / "tutorial_metadata/micrographs_ctf.star") == 30001


# ------------------------------------------------------------------------------------------------------------------
# STAR writing in RELION's layout
# ------------------------------------------------------------------------------------------------------------------


def test_number_formatting_matches_relion_snprintf():
    f = io._format_value
    assert f(1614.217657) == " 1614.217657"
    assert f(0.0) == "    0.000000"
    assert f(-2.5) == "    -2.50000"  # %12.5f for negatives
    assert f(0.0005) == "5.000000e-04"
    assert f(-0.0005) == "-5.00000e-04"
    assert f(123456.5) == "1.234565e+05"
    assert f(100000.0) == "100000.00000"  # 13 characters cut to 12, as snprintf(buffer, 13, ...) does
    assert f(0) == "           0"
    assert f(-999) == "        -999"
    assert f("a b") == '"a b"'
    assert f("") == '""'


def test_coordinate_star_layout(tmp_path):
    out = tmp_path / "mic_autopick.star"
    xy = np.array([[1614.217657, 112.882354], [5.5, 7.25]])
    io.write_coordinates_star(out, xy, np.array([0.163126, 0.5]), version=50001)
    expected = (
        "\n# version 50001\n\ndata_\n\nloop_ \n"
        "_rlnCoordinateX #1 \n_rlnCoordinateY #2 \n_rlnAutopickFigureOfMerit #3 \n"
        "_rlnClassNumber #4 \n_rlnAnglePsi #5 \n"
        " 1614.217657   112.882354     0.163126            0     0.000000 \n"
        "    5.500000     7.250000     0.500000            0     0.000000 \n"
        " \n"
    )
    assert out.read_text() == expected
    io.write_coordinates_star(out, xy, np.array([0.163126, 0.5]), version=30001)
    assert out.read_text() == expected.replace("50001", "30001")
    io.write_coordinates_star(out, xy, np.array([0.163126, 0.5]), version=None)
    assert out.read_text() == expected.replace("\n# version 50001\n", "")
    df = io.read_coordinates_star(out)
    assert list(df.columns) == ["rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit", "rlnClassNumber",
                                "rlnAnglePsi"]
    np.testing.assert_allclose(df[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(), xy)
    assert df["rlnClassNumber"].dtype.kind == "i"


def test_empty_coordinate_file_is_empty_like_relion(tmp_path):
    out = tmp_path / "none_autopick.star"
    io.write_coordinates_star(out, np.zeros((0, 2)), np.zeros(0))
    assert out.exists() and out.stat().st_size == 0
    df = io.read_coordinates_star(out)
    assert len(df) == 0 and list(df.columns[:2]) == ["rlnCoordinateX", "rlnCoordinateY"]


def test_coordinate_files_star_layout(tmp_path):
    out = tmp_path / "autopick.star"
    io.write_coordinate_files_star(out, ["MotionCorr/job002/Movies/a.mrc"], ["External/job012/Movies/a_autopick.star"])
    assert out.read_text() == (
        "\n# version 50001\n\ndata_coordinate_files\n\nloop_ \n"
        "_rlnMicrographName #1 \n_rlnMicrographCoordinates #2 \n"
        "MotionCorr/job002/Movies/a.mrc External/job012/Movies/a_autopick.star \n"
        " \n"
    )
    blocks = io.read_star(out)
    assert list(blocks["coordinate_files"]["rlnMicrographName"]) == ["MotionCorr/job002/Movies/a.mrc"]
    with pytest.raises(ValueError, match="1 micrographs but 0"):
        io.write_coordinate_files_star(out, ["a.mrc"], [])


def test_short_names_are_padded_to_ten(tmp_path):
    text = io.format_star_table("x", [("rlnMicrographName", ["a.mrc"]), ("rlnOpticsGroup", [1])], version=None)
    assert text.endswith("     a.mrc            1 \n \n")


def test_rewrite_relion_autopick_files_byte_for_byte(shared_data, tmp_path):
    job = shared_data / RELION / "relion5_tutorial_project/AutoPick/job008"
    files = sorted((job / "Movies").glob("*_autopick.star"))
    assert len(files) == 10
    for f in files:
        df = io.read_coordinates_star(f)
        out = tmp_path / f.name
        io.write_coordinates_star(
            out, df[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(), df["rlnAutopickFigureOfMerit"].to_numpy(),
            version=io.read_star_version(f), class_number=df["rlnClassNumber"].to_numpy(),
            psi=df["rlnAnglePsi"].to_numpy(),
        )
        assert out.read_bytes() == f.read_bytes(), f.name
    lst = io.read_star(job / "autopick.star")["coordinate_files"]
    out = tmp_path / "autopick.star"
    io.write_coordinate_files_star(out, list(lst["rlnMicrographName"]), list(lst["rlnMicrographCoordinates"]))
    assert out.read_bytes() == (job / "autopick.star").read_bytes()
    # RELION 4 era (version 30001) tutorial files
    meta = shared_data / RELION / "tutorial_metadata"
    f = meta / "20170629_00049_frameImage_autopick.star"
    df = io.read_coordinates_star(f)
    out = tmp_path / f.name
    io.write_coordinates_star(out, df[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(),
                              df["rlnAutopickFigureOfMerit"].to_numpy(), version=30001)
    assert out.read_bytes() == f.read_bytes()
    lst = io.read_star(meta / "autopick.star")["coordinate_files"]
    io.write_coordinate_files_star(out, list(lst["rlnMicrographName"]), list(lst["rlnMicrographCoordinates"]),
                                   version=30001)
    assert out.read_bytes() == (meta / "autopick.star").read_bytes()


def test_read_relion_manualpick_file(shared_data):
    f = next((shared_data / RELION / "relion5_tutorial_project/ManualPick/job006/Movies").glob("*_manualpick.star"))
    df = io.read_coordinates_star(f)
    assert len(df) > 0
    assert df["rlnCoordinateX"].dtype.kind == "f"
    assert (df["rlnAutopickFigureOfMerit"] == -999).all()


# ------------------------------------------------------------------------------------------------------------------
# atomic writes
# ------------------------------------------------------------------------------------------------------------------


def test_atomic_write_leaves_nothing_when_writer_raises(tmp_path):
    target = tmp_path / "x_autopick.star"
    with pytest.raises(RuntimeError):
        with io.atomic_write(target) as fh:
            fh.write("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    target.write_text("old complete content")
    with pytest.raises(RuntimeError):
        with io.atomic_write(target) as fh:
            fh.write("new half")
            raise RuntimeError("killed")
    assert target.read_text() == "old complete content"
    assert [p.name for p in tmp_path.iterdir()] == ["x_autopick.star"]


def test_atomic_write_replaces_and_keeps_umask_permissions(tmp_path):
    target = tmp_path / "a.star"
    old = os.umask(0o022)
    try:
        with io.atomic_write(target) as fh:
            fh.write("1")
        with io.atomic_write(target, "wb") as fh:
            fh.write(b"2")
    finally:
        os.umask(old)
    assert target.read_text() == "2"
    assert (target.stat().st_mode & 0o777) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.star"]


def test_atomic_output_path(tmp_path):
    target = tmp_path / "map.mrc"
    with io.atomic_output_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.name.endswith(io.TMP_SUFFIX)
        with mrcfile.new(tmp) as m:
            m.set_data(np.ones((4, 4), np.float32))
    assert target.exists()
    with pytest.raises(ValueError):
        with io.atomic_output_path(tmp_path / "other.mrc") as tmp:
            tmp.write_bytes(b"partial")
            raise ValueError("fail")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.mrc"]


def test_coordinate_writer_is_atomic_on_bad_input(tmp_path):
    target = tmp_path / "c_autopick.star"
    with pytest.raises(ValueError, match="non-finite"):
        io.write_coordinates_star(target, np.array([[np.nan, 1.0]]), np.array([0.5]))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------------------------
# MRC reading
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8, np.int16, np.uint16, np.uint8])
def test_read_micrograph_modes(tmp_path, rng, dtype):
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        data = rng.integers(max(info.min, -100), min(info.max, 200), size=(40, 56)).astype(dtype)
    else:
        data = rng.normal(size=(40, 56)).astype(dtype)
    f = write_mrc(tmp_path / "m.mrc", data, angpix=1.25)
    image, angpix = io.read_micrograph(f)
    assert image.dtype == np.float32 and image.shape == (40, 56)
    np.testing.assert_array_equal(image, data.astype(np.float32))
    assert angpix == pytest.approx(1.25)


def test_unsigned_bytes_in_mode_0(tmp_path, rng):
    """8-bit exports often store unsigned bytes in mode 0; the header's dmax > 127 says so."""
    data = rng.integers(0, 256, size=(40, 40)).astype(np.uint8)
    f = tmp_path / "u8.mrc"
    with mrcfile.new(f) as m:
        m.set_data(data.view(np.int8))
        m.header.dmin, m.header.dmax = 0, 255
    image, _ = io.read_micrograph(f)
    np.testing.assert_array_equal(image, data.astype(np.float32))


def test_unsigned_bytes_marked_by_imod(tmp_path, rng):
    """IMOD marks unsigned bytes in mode 0 by its stamp (header bytes 152-155) with bit 0 of its flags (156-159)
    clear; the data are then read as unsigned even where dmax does not say so. With the bit set they are signed."""
    import struct

    data = rng.integers(0, 256, size=(40, 40)).astype(np.uint8)
    for signed in (False, True):
        f = tmp_path / f"imod{int(signed)}.mrc"
        with mrcfile.new(f, overwrite=True) as m:
            m.set_data(data.view(np.int8))
            m.header.dmin, m.header.dmax = 0, -1  # dmax not set
        raw = bytearray(f.read_bytes())
        raw[152:160] = struct.pack("<ii", 1146047817, int(signed))
        f.write_bytes(bytes(raw))
        image, _ = io.read_micrograph(f)
        expected = data.view(np.int8) if signed else data
        np.testing.assert_array_equal(image, expected.astype(np.float32))


def test_unsigned_bytes_without_any_mark_in_the_header(tmp_path):
    """Mode 0 with no IMOD stamp and dmin / dmax not set (dmax < dmin): an 8-bit export of a micrograph (grey levels
    around 128) read as signed bytes wraps into noise; the reading with the smoother image is taken, so unsigned data
    read as unsigned and signed data (levels around 0) stay signed."""
    import scipy.ndimage

    field = scipy.ndimage.gaussian_filter(np.random.default_rng(5).normal(size=(96, 96)), 2.0)
    field = field / field.std()
    for name, data in (("unsigned", np.clip(128 + 40 * field, 0, 255).astype(np.uint8).view(np.int8)),
                       ("signed", np.clip(40 * field, -128, 127).astype(np.int8))):
        f = tmp_path / f"{name}.mrc"
        with mrcfile.new(f) as m:
            m.set_data(data)
            m.header.dmin, m.header.dmax = 0, -1  # not set
        image, _ = io.read_micrograph(f)
        want = data.view(np.uint8) if name == "unsigned" else data
        np.testing.assert_array_equal(image, want.astype(np.float32))


@pytest.mark.parametrize("head, why", [(b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"\x1f\x8b\x08\x00", "gzip")])
def test_a_micrograph_in_another_format_is_named(tmp_path, head, why):
    f = tmp_path / "mic.mrc"
    f.write_bytes(head + bytes(2048))
    with pytest.raises(MicrographError, match=f"mic.mrc.*{why}"):
        io.read_micrograph(f)


def test_single_section_stack_and_non_square(tmp_path, rng):
    data = rng.normal(size=(1, 48, 100)).astype(np.float32)
    f = write_mrc(tmp_path / "stack.mrcs", data, angpix=None)
    image, angpix = io.read_micrograph(f)
    assert image.shape == (48, 100)
    assert angpix is None  # header pixel size 0 means unknown


def test_header_angpix(tmp_path, rng):
    f = write_mrc(tmp_path / "m.mrc", rng.normal(size=(40, 40)).astype(np.float32), angpix=0.885)
    assert io.read_header_angpix(f) == pytest.approx(0.885)


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing", "does not exist"),
        ("junk", "too small to be an MRC file"),
        ("notmrc", "not a readable MRC file"),
        ("truncated", "truncated"),
        ("constant", "constant"),
        ("nan", "NaN or infinite"),
        ("inf", "NaN or infinite"),
        ("stack", "3 sections"),
        ("tiny", "too small"),
        ("complex", "complex"),
        ("directory", "not a regular file"),
    ],
)
def test_bad_micrographs_name_the_file(tmp_path, rng, case, match):
    f = tmp_path / f"{case}.mrc"
    good = rng.normal(size=(64, 64)).astype(np.float32)
    if case == "junk":
        f.write_bytes(b"hello")
    elif case == "notmrc":
        f.write_bytes(b"hello world " * 400)
    elif case == "truncated":
        write_mrc(f, good)
        f.write_bytes(f.read_bytes()[:-1000])
    elif case == "constant":
        write_mrc(f, np.full((64, 64), 3.0, np.float32))
    elif case in ("nan", "inf"):
        good[3, 4] = np.nan if case == "nan" else np.inf
        write_mrc(f, good)
    elif case == "stack":
        write_mrc(f, rng.normal(size=(3, 64, 64)).astype(np.float32))
    elif case == "tiny":
        write_mrc(f, rng.normal(size=(64, 10)).astype(np.float32))
    elif case == "complex":
        write_mrc(f, (good + 1j * good).astype(np.complex64))
    elif case == "directory":
        f.mkdir()
    with pytest.raises(MicrographError, match=match) as info:
        io.read_micrograph(f)
    assert str(f) in str(info.value)
    assert info.value.path == str(f)
    assert isinstance(info.value, ValueError)


def test_permissive_only_for_a_bad_map_id(tmp_path, rng):
    """A header whose MAP ID is missing (some old writers) is read with a warning when the data are intact."""
    data = rng.normal(size=(64, 64)).astype(np.float32)
    f = write_mrc(tmp_path / "old.mrc", data)
    raw = bytearray(f.read_bytes())
    raw[208:212] = b"\0\0\0\0"  # the 'MAP ' string
    f.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="old.mrc.*permissively"):
        image, _ = io.read_micrograph(f)
    np.testing.assert_array_equal(image, data)
