"""Tests of the RELION External job contract (relion_pixer.job, relion_pixer.relion, relion_pixer.pipeline).

Most tests inject a cheap picking function, so that every output / abort / continue / error path runs without the
networks; the end-to-end tests at the bottom run the real chain through ``external_job.py``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import io as _stdio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from relion_pixer import io, job, parallel, preprocess, relion
from relion_pixer import size as size_module
from relion_pixer.pipeline import PickParams, PickResult

REPO = Path(__file__).resolve().parents[1]
RELION5 = "relion/relion5_tutorial_project"
LABEL5 = "MicrographCoordsGroup.star.relion.autopick"
LABEL4 = "MicrographsCoords.star.relion.autopick"
IN_MICS = "CtfFind/job005/micrographs_ctf.star"


# ------------------------------------------------------------------------------------------------------------------
# project fixtures
# ------------------------------------------------------------------------------------------------------------------

PIPELINE5 = """
# version 50001

data_pipeline_general

_rlnPipeLineJobCounter                      13
 

# version 50001

data_pipeline_processes

loop_ 
_rlnPipeLineProcessName #1 
_rlnPipeLineProcessAlias #2 
_rlnPipeLineProcessTypeLabel #3 
_rlnPipeLineProcessStatusLabel #4 
CtfFind/job005/       None relion.ctffind.ctffind4  Succeeded 
External/job012/       None relion.external    Running 
 
"""

PIPELINE4 = PIPELINE5.replace("50001", "30001")

PIPELINE31 = """
# version 30001

data_pipeline_general

_rlnPipeLineJobCounter                      13
 

# version 30001

data_pipeline_processes

loop_ 
_rlnPipeLineProcessName #1 
_rlnPipeLineProcessAlias #2 
_rlnPipeLineProcessType #3 
_rlnPipeLineProcessStatus #4 
CtfFind/job005/       None            2            2 
External/job012/       None           99            0 
 

# version 30001

data_pipeline_nodes

loop_ 
_rlnPipeLineNodeName #1 
_rlnPipeLineNodeType #2 
CtfFind/job005/micrographs_ctf.star            1 
 
"""


def write_mrc(path: Path, data: np.ndarray, angpix: float | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), mrcfile.new(path, overwrite=True) as m:
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile's header statistics of deliberately bad data
        m.set_data(data)
        if angpix is not None:
            m.voxel_size = angpix


def write_micrographs(project: Path, star: str, size: int = 512, seed: int = 0, angpix: float | None = None) -> list:
    """Random micrographs at the paths a micrograph STAR names; returns its entries."""
    rng = np.random.default_rng(seed)
    entries = io.read_micrographs_star(project / star, project_dir=project)
    for e in entries:
        write_mrc(e.path, rng.normal(size=(size, size)).astype(np.float32), angpix)
    return entries


def made_micrographs_star(path: Path, names: list[str], angpix=(1.5,), groups=None, version: int = 50001) -> None:
    """A RELION 3.1+ micrograph STAR file written with our own STAR writer."""
    groups = groups or [1] * len(names)
    optics = io.format_star_table(
        "optics",
        [("rlnOpticsGroupName", [f"opticsGroup{i + 1}" for i in range(len(angpix))]),
         ("rlnOpticsGroup", list(range(1, len(angpix) + 1))),
         ("rlnMicrographOriginalPixelSize", [float(a) for a in angpix]),
         ("rlnVoltage", [300.0] * len(angpix)),
         ("rlnMicrographPixelSize", [float(a) for a in angpix])],
        version,
    )
    mics = io.format_star_table(
        "micrographs",
        [("rlnMicrographName", names), ("rlnOpticsGroup", [int(g) for g in groups]),
         ("rlnDefocusU", [15000.0] * len(names))],
        version,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(optics + mics)


def made_project(root: Path, n: int = 4, size: int = 256, pipeline: str = PIPELINE5) -> Path:
    """A small RELION 5 project made by this test suite: pipeline, micrograph STAR, micrographs."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "default_pipeline.star").write_text(pipeline)
    names = [f"MotionCorr/job002/Movies/mic_{i:03d}.mrc" for i in range(n)]
    made_micrographs_star(root / IN_MICS, names, angpix=(1.5,))
    write_micrographs(root, IN_MICS, size=size)
    return root


def shared_project(shared_data: Path, root: Path, size: int = 512) -> Path:
    """The STAR skeleton of RELION's own tutorial project, with synthetic micrographs where it names them."""
    shutil.copytree(shared_data / RELION5, root, ignore=lambda d, names: [n for n in names if n.endswith(".pdf")])
    for p in root.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    os.chmod(root, 0o755)
    write_micrographs(root, IN_MICS, size=size)
    return root


@pytest.fixture(params=["made", "shared"])
def project(request, tmp_path, monkeypatch):
    """A RELION project directory, cwd set to it (RELION runs jobs from there)."""
    if request.param == "shared":
        shared = request.getfixturevalue("shared_data")
        root = shared_project(shared, tmp_path / "proj")
    else:
        root = made_project(tmp_path / "proj")
    monkeypatch.chdir(root)
    return root


class FakePicker:
    """Cheap stand-in for the networks: four picks per micrograph, figure of merit descending."""

    def __init__(self, per_call=None):
        self.calls: list[tuple[tuple[int, int], float, float]] = []
        self.per_call = per_call

    def __call__(self, image, angpix, diameter_A, params):
        assert isinstance(params, PickParams)
        self.calls.append((image.shape, angpix, diameter_A))
        if self.per_call is not None:
            self.per_call(len(self.calls))
        h, w = image.shape
        xy = np.array([[w * 0.25, h * 0.25], [w * 0.75, h * 0.25], [w * 0.25, h * 0.75], [w * 0.75, h * 0.75]])
        fom = np.array([0.95, 0.9, 0.8, 0.65])
        factors = (0.25, 0.25)
        prob = np.zeros((int(h * 0.25), int(w * 0.25)), np.float32)
        return PickResult(xy=xy, fom=fom, prob_map=prob, factors=factors, net_image=None)


def run(argv: str | list[str], pick_fn=None) -> tuple[int, str, str]:
    """Run the job in-process as RELION would (argument string split on whitespace, unquoted)."""
    args = argv.split() if isinstance(argv, str) else list(argv)
    out, err = _stdio.StringIO(), _stdio.StringIO()
    try:
        opts = job.parse_args(args)
    except job.UsageError as exc:
        return 1, "", str(exc)
    rc = job.run_job(opts, pick_fn=pick_fn or FakePicker(), out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


RELION_CMD = f"--o External/job012/ --in_mics {IN_MICS} --particle_diameter 150 --j 1"


def check_relion_outputs(project: Path, job_dir: str = "External/job012/", label: str = LABEL5, version: int = 50001,
                         empty: bool | None = False, extra_nodes: tuple = ()):
    """The outputs RELION 4/5 reads, against the contract; returns the coordinate-file list. ``extra_nodes``:
    ``(file in the job directory, node type label)`` of output nodes beside the coordinates."""
    jd = project / job_dir
    entries = io.read_micrographs_star(project / IN_MICS, project_dir=project)
    lst = io.read_star(jd / "autopick.star")["coordinate_files"]
    assert list(lst.columns) == ["rlnMicrographName", "rlnMicrographCoordinates"]
    names = list(lst["rlnMicrographName"])
    assert names == [e.name for e in entries]  # exactly as in the input STAR, in input order
    for name, coords in zip(names, lst["rlnMicrographCoordinates"]):
        post = name.split("/", 2)[2]  # after Type/jobNNN/
        assert coords == job_dir + post[: post.rfind(".")] + "_autopick.star"
        text = (project / coords).read_text()
        if empty or (empty is None and text == ""):
            assert text == ""  # no picks: a 0-byte file, as RELION writes an empty table
            continue
        assert text.startswith(f"\n# version {version}\n\ndata_\n\nloop_ \n_rlnCoordinateX #1 \n_rlnCoordinateY #2 \n"
                               "_rlnAutopickFigureOfMerit #3 \n_rlnClassNumber #4 \n_rlnAnglePsi #5 \n")
        assert text.endswith(" \n \n")
    nodes = io.read_star(jd / relion.OUTPUT_NODES)["output_nodes"]
    assert list(nodes["rlnPipeLineNodeName"]) == [job_dir + "autopick.star"] + [job_dir + n for n, _ in extra_nodes]
    assert list(nodes["rlnPipeLineNodeTypeLabel"]) == [label] + [t for _, t in extra_nodes]
    assert (jd / relion.EXIT_SUCCESS).exists() and (jd / relion.EXIT_SUCCESS).stat().st_size == 0
    assert not (jd / relion.EXIT_FAILURE).exists() and not (jd / relion.EXIT_ABORTED).exists()
    # written in this order: coordinate files, autopick.star, RELION_OUTPUT_NODES.star, exit marker
    t_coords = max((project / c).stat().st_mtime_ns for c in lst["rlnMicrographCoordinates"])
    t_list = (jd / "autopick.star").stat().st_mtime_ns
    t_nodes = (jd / relion.OUTPUT_NODES).stat().st_mtime_ns
    t_exit = (jd / relion.EXIT_SUCCESS).stat().st_mtime_ns
    assert t_coords <= t_list <= t_nodes <= t_exit
    assert not list(jd.rglob(f"*{io.TMP_SUFFIX}"))
    return lst


# ------------------------------------------------------------------------------------------------------------------
# the External job in a RELION project
# ------------------------------------------------------------------------------------------------------------------


def test_the_summary_says_how_many_candidates_the_classifier_dropped(project):
    """run.out counts what the map alone would have kept and the classifier's vetoes dropped, over the job."""
    fake = FakePicker()

    def vetoing(image, angpix, diameter_A, params):
        return dataclasses.replace(fake(image, angpix, diameter_A, params), vetoed=1)

    rc, out, err = run(RELION_CMD, vetoing)
    assert rc == 0, err
    n = len(fake.calls)
    assert f" The classifier dropped {n} candidates the map alone would have kept ({100 * n / (5 * n):.1f} %)" in out
    assert "threshold 0 keeps them" in out


def test_external_job_outputs(project):
    picker = FakePicker()
    rc, out, err = run(RELION_CMD, picker)
    assert rc == 0, err
    lst = check_relion_outputs(project)
    assert len(picker.calls) == len(lst)
    angpix = 0.885 if (project / "AutoPick").exists() else 1.5
    assert {c[1] for c in picker.calls} == {angpix}
    assert {c[2] for c in picker.calls} == {150.0}
    # one progress line per micrograph, then the summary
    assert len(re.findall(r"^ \[\s*\d+/\d+\] MotionCorr/job002/Movies/\S+\.mrc: 4 particles, [\d.]+ s$", out, re.M)) == len(lst)
    assert f"Total number of particles from {len(lst)} of {len(lst)} micrographs is {4 * len(lst)}" in out
    assert "micrographs per minute" in out
    assert "The classifier dropped" not in out  # the fake picker's classifier drops nothing
    df = io.read_coordinates_star(project / lst["rlnMicrographCoordinates"][0])
    w = picker.calls[0][0][1]
    np.testing.assert_allclose(df["rlnCoordinateX"], [w / 4, 3 * w / 4, w / 4, 3 * w / 4])
    np.testing.assert_allclose(df["rlnAutopickFigureOfMerit"], [0.95, 0.9, 0.8, 0.65])
    assert err == ""


def test_outputs_match_relions_own_autopick_job(shared_data, tmp_path, monkeypatch):
    """Layout, names, columns and node label against what RELION 5's AutoPick job wrote in the same project."""
    root = shared_project(shared_data, tmp_path / "proj")
    monkeypatch.chdir(root)
    rc, _, err = run(RELION_CMD)
    assert rc == 0, err
    ref_dir = shared_data / RELION5 / "AutoPick/job008"
    ref = io.read_star(ref_dir / "autopick.star")["coordinate_files"]
    ours = io.read_star(root / "External/job012/autopick.star")["coordinate_files"]
    mine = dict(zip(ours["rlnMicrographName"], ours["rlnMicrographCoordinates"]))
    for name, coords in zip(ref["rlnMicrographName"], ref["rlnMicrographCoordinates"]):
        assert mine[name] == coords.replace("AutoPick/job008/", "External/job012/")
    # the list file's header is RELION's, byte for byte
    ref_text = (ref_dir / "autopick.star").read_text()
    our_text = (root / "External/job012/autopick.star").read_text()
    header = ref_text[: ref_text.index("MotionCorr/")]
    assert our_text.startswith(header)
    # per-micrograph files: same header bytes, same row width and column layout, same closing line
    ref_file = ref_dir / "Movies/20170629_00021_frameImage_autopick.star"
    our_file = root / "External/job012/Movies/20170629_00021_frameImage_autopick.star"
    ref_lines = ref_file.read_text().split("\n")
    our_lines = our_file.read_text().split("\n")
    assert our_lines[:11] == ref_lines[:11]
    assert our_lines[-2:] == ref_lines[-2:] == [" ", ""]
    row = re.compile(r"^( {0,11}-?\d+\.\d{5,6} ){3}( {0,11}\d+ )( {0,11}-?\d+\.\d{5,6} )$")
    assert all(row.match(line) for line in ref_lines[11:-2])
    assert all(row.match(line) and len(line) == len(ref_lines[11]) for line in our_lines[11:-2])
    # node label: what RELION 5 itself recorded for AutoPick/job008/autopick.star
    pipeline = io.read_star(ref_dir / "default_pipeline.star")["pipeline_nodes"]
    relion_label = pipeline.set_index("rlnPipeLineNodeName").loc["AutoPick/job008/autopick.star",
                                                                  "rlnPipeLineNodeTypeLabel"]
    nodes = io.read_star(root / "External/job012/RELION_OUTPUT_NODES.star")["output_nodes"]
    assert list(nodes["rlnPipeLineNodeTypeLabel"]) == [relion_label]
    # RELION_OUTPUT_NODES.star in the layout of the one RELION's Select job wrote
    ref_nodes = (shared_data / RELION5 / "Select/job007/RELION_OUTPUT_NODES.star").read_text()
    our_nodes = (root / "External/job012/RELION_OUTPUT_NODES.star").read_text()
    assert our_nodes.startswith(ref_nodes[: ref_nodes.index("Select/")])
    assert our_nodes == ref_nodes[: ref_nodes.index("Select/")] + f"External/job012/autopick.star {relion_label} \n \n"


def test_empty_micrograph_picks_give_an_empty_file_listed(project):
    def none(image, angpix, d, params):
        return PickResult(np.zeros((0, 2)), np.zeros(0), None, (1.0, 1.0))

    rc, out, err = run(RELION_CMD, none)
    assert rc == 0, err
    lst = check_relion_outputs(project, empty=True)  # 0-byte coordinate files, RELION's own way, still listed
    assert len(lst) == len(io.read_micrographs_star(project / IN_MICS))
    assert "0 particles" in out


# ------------------------------------------------------------------------------------------------------------------
# RELION versions
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pipeline, override, version, label",
    [
        (PIPELINE5, None, 5, LABEL5),
        (PIPELINE4, None, 4, LABEL4),
        (PIPELINE31, None, 3, None),
        (None, None, 5, LABEL5),  # standalone: no pipeline, RELION 5 files
        (PIPELINE5, "4", 4, LABEL4),
        (PIPELINE4, "5.0", 5, LABEL5),
        (PIPELINE5, "3.1", 3, None),
    ],
)
def test_node_labels_per_relion_version(tmp_path, monkeypatch, pipeline, override, version, label):
    root = made_project(tmp_path / "p", n=2, pipeline=pipeline or PIPELINE5)
    if pipeline is None:
        (root / "default_pipeline.star").unlink()
    monkeypatch.chdir(root)
    assert relion.detect_relion_version(root) == (None if pipeline is None else
                                                  {PIPELINE5: 5, PIPELINE4: 4, PIPELINE31: 3}[pipeline])
    cmd = RELION_CMD + (f" --relion_version {override}" if override else "")
    rc, _, err = run(cmd)
    assert rc == 0, err
    jd = root / "External/job012"
    star_version = 50001 if version == 5 else 30001
    nodes = io.read_star(jd / relion.OUTPUT_NODES)["output_nodes"]
    assert io.read_star_version(jd / relion.OUTPUT_NODES) == star_version
    if version == 3:
        # RELION 3.1: integer node type 2 (NODE_MIC_COORDS) for coords_suffix_pixer.star naming the input STAR file;
        # extraction then reads <dir>/<micrograph path after jobNNN/ without extension>_pixer.star
        assert list(nodes.columns) == ["rlnPipeLineNodeName", "rlnPipeLineNodeType"]
        assert list(nodes["rlnPipeLineNodeName"]) == ["External/job012/coords_suffix_pixer.star"]
        assert list(nodes["rlnPipeLineNodeType"]) == ["2"]
        assert (jd / "coords_suffix_pixer.star").read_text() == IN_MICS + "\n"
        coords = sorted(p.name for p in (jd / "Movies").iterdir())
        assert coords == ["mic_000_pixer.star", "mic_001_pixer.star"]
    else:
        assert list(nodes["rlnPipeLineNodeTypeLabel"]) == [label]
        check_relion_outputs(root, label=label, version=star_version)


def test_detect_relion_version_from_real_pipelines(shared_data):
    assert relion.detect_relion_version(shared_data / RELION5) == 5
    assert relion.detect_relion_version(shared_data / "relion/tutorial_metadata") == 4
    assert relion.detect_relion_version(shared_data / "relion/other") is None


def test_parse_relion_version():
    assert [relion.parse_relion_version(v) for v in ("5", "5.0", "4", "4.0.1", "3.1", "3", "RELION 5")] == [5, 5, 4, 4, 3, 3, 5]
    for bad in ("3.0", "2", "six", ""):
        with pytest.raises(ValueError):
            relion.parse_relion_version(bad)


# ------------------------------------------------------------------------------------------------------------------
# abort, continue, kill
# ------------------------------------------------------------------------------------------------------------------


def test_abort_between_micrographs(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=5)
    monkeypatch.chdir(root)
    jd = root / "External/job012"

    def touch_abort(k):
        if k == 2:
            (jd / relion.ABORT_NOW).touch()  # what RELION's GUI does for "Abort"

    rc, out, _ = run(RELION_CMD, FakePicker(per_call=touch_abort))
    assert rc == 2
    assert (jd / relion.EXIT_ABORTED).exists()
    assert not (jd / relion.EXIT_SUCCESS).exists() and not (jd / relion.EXIT_FAILURE).exists()
    assert not (jd / relion.ABORT_NOW).exists()  # honoured, so that a rerun is not aborted at once
    assert sorted(p.name for p in (jd / "Movies").iterdir()) == ["mic_000_autopick.star", "mic_001_autopick.star"]
    lst = io.read_star(jd / "autopick.star")["coordinate_files"]
    assert len(lst) == 2  # the finished work stays usable
    assert "RELION_JOB_ABORT_NOW found" in out
    # continuing picks the rest
    picker = FakePicker()
    rc, out, err = run(RELION_CMD, picker)
    assert rc == 0, err
    assert len(picker.calls) == 3
    assert not (jd / relion.EXIT_ABORTED).exists()  # stale markers cleared, like RELION's own programs do
    check_relion_outputs(root)


def test_a_separate_pipeline_control_directory_takes_the_markers_and_the_abort(tmp_path, monkeypatch):
    """RELION passes ``--pipeline_control`` (the job directory); where it names another directory, the exit markers
    go there and RELION_JOB_ABORT_NOW is looked for there, as RELION's own programs do."""
    root = made_project(tmp_path / "p", n=3)
    monkeypatch.chdir(root)
    jd, ctl = root / "External/job012", root / "control"
    rc, _, err = run(RELION_CMD + " --pipeline_control control/")
    assert rc == 0, err
    assert (ctl / relion.EXIT_SUCCESS).exists() and not (jd / relion.EXIT_SUCCESS).exists()
    assert len(io.read_star(jd / "autopick.star")["coordinate_files"]) == 3  # the outputs stay in --o

    def touch_abort(k):
        if k == 1:
            (ctl / relion.ABORT_NOW).touch()

    shutil.rmtree(jd)
    rc, _, _ = run(RELION_CMD + " --pipeline_control control/", FakePicker(per_call=touch_abort))
    assert rc == 2
    assert (ctl / relion.EXIT_ABORTED).exists() and not (ctl / relion.EXIT_SUCCESS).exists()
    assert not (ctl / relion.ABORT_NOW).exists()
    assert not (jd / relion.EXIT_ABORTED).exists()
    # a bad command line: the failure marker where RELION watches
    rc, _, _ = run(f"--o External/job012/ --in_mics {IN_MICS} --j 1 --pipeline_control control/")
    assert rc == 1
    assert job.main(f"--o External/job012/ --in_mics {IN_MICS} --pipeline_control control/".split()) == 1
    assert (ctl / relion.EXIT_FAILURE).exists() and not (jd / relion.EXIT_FAILURE).exists()


def test_relion31_output_warns_where_its_extract_looks_outside_the_job_for_parent_names(tmp_path, monkeypatch):
    """RELION 3.1's Extract looks for ``job dir + name + _pixer.star``; for a name with '..' that lies outside the job
    directory, where the job does not write: run.err says so (RELION 4/5 read autopick.star's paths: no warning)."""
    root = tmp_path / "p"
    (root / "proj").mkdir(parents=True)
    made_micrographs_star(root / "proj" / "mics.star", ["../data/grid1/b.mrc", "MotionCorr/job002/Movies/a.mrc"])
    write_micrographs(root / "proj", "mics.star", size=256)
    monkeypatch.chdir(root / "proj")
    cmd = "--o External/job003/ --in_mics mics.star --particle_diameter 150 --j 1"
    rc, _, err = run(cmd + " --relion_version 3.1")
    assert rc == 0, err
    assert (root / "proj/External/job003/data/grid1/b_pixer.star").exists()
    assert "1 micrograph name(s) go up a directory" in err and "External/job003/../data/grid1/b_pixer.star" in err
    shutil.rmtree(root / "proj/External")
    rc, _, err = run(cmd + " --relion_version 5")
    assert rc == 0 and "go up a directory" not in err


def test_continue_after_kill_picks_only_unfinished(project):
    jd = project / "External/job012"
    entries = io.read_micrographs_star(project / IN_MICS, project_dir=project)
    # state left by a killed run: two finished coordinate files, a temp file, a stale failure marker
    done = [relion.coordinate_file_name("External/job012/", e.name) for e in entries[:2]]
    for c in done:
        (project / c).parent.mkdir(parents=True, exist_ok=True)
        io.write_coordinates_star(project / c, np.array([[1.0, 2.0]]), np.array([0.7]))
    before = [(project / c).read_bytes() for c in done]
    stale_tmp = project / f"External/job012/Movies/.x_autopick.star.0000{io.TMP_SUFFIX}"
    stale_tmp.write_text("half")
    (jd / relion.EXIT_FAILURE).touch()
    picker = FakePicker()
    rc, out, err = run(RELION_CMD, picker)
    assert rc == 0, err
    assert len(picker.calls) == len(entries) - 2
    assert [(project / c).read_bytes() for c in done] == before
    assert not stale_tmp.exists()
    assert f"{len(entries) - 2} to pick, 2 already picked (continuing)" in out
    check_relion_outputs(project)


def test_a_rerun_that_keeps_earlier_picks_says_which_settings_picked_them(tmp_path, monkeypatch):
    """Rerunning into a finished job's directory with another threshold picks nothing again, and says so with the
    settings that differ; the same settings say nothing; with micrographs left, it says it picks those with its own."""
    root = made_project(tmp_path / "p", n=3)
    monkeypatch.chdir(root)
    assert run(RELION_CMD)[0] == 0
    picker = FakePicker()
    rc, out, err = run(RELION_CMD + " --threshold 0.5 --crowded No", picker)
    assert rc == 0 and not picker.calls
    assert ("an earlier run of this job picked 3 micrograph(s) with other settings (threshold 0.1 -> 0.5, crowded Yes "
            "-> No); their coordinate files are kept, and nothing is picked again") in err
    rc, out, err = run(RELION_CMD)
    assert rc == 0 and "other settings" not in err
    rc, out, err = run(RELION_CMD + " --particle_diameter 180")  # later on the line: RELION's last value wins
    assert "particle_diameter 150 -> 180" in err
    first = next((root / "External/job012").rglob("*_autopick.star"))
    first.unlink()
    picker = FakePicker()
    rc, out, err = run(RELION_CMD + " --threshold 0.5", picker)
    assert rc == 0 and len(picker.calls) == 1
    assert ("an earlier run of this job picked 2 micrograph(s) with other settings (threshold 0.1 -> 0.5); their "
            "coordinate files are kept, and this run picks the other 1 with these") in err
    # the input switched to another micrograph STAR (other images of the same names): said, not picked again
    shutil.copy(root / IN_MICS, root / "other_mics.star")
    rc, out, err = run(RELION_CMD.replace(IN_MICS, "other_mics.star") + " --threshold 0.5")
    assert rc == 0 and f"with other settings (in_mics {IN_MICS} -> other_mics.star)" in err


def test_continue_names_each_earlier_runs_micrographs_with_that_runs_settings(tmp_path, monkeypatch):
    """Three runs into one job: all three micrographs at the defaults, one picked again at threshold 0.3, then a
    Continue at the defaults. Only that one was picked otherwise; the record of each run is kept."""
    root = made_project(tmp_path / "p", n=3)
    monkeypatch.chdir(root)
    assert run(RELION_CMD)[0] == 0
    job_dir = root / "External/job012"
    sorted(job_dir.rglob("*_autopick.star"))[1].unlink()
    rc, _, err = run(RELION_CMD + " --threshold 0.3")
    assert rc == 0 and "picked 2 micrograph(s) with other settings (threshold 0.1 -> 0.3)" in err
    rc, _, err = run(RELION_CMD + " --continue")
    assert rc == 0
    assert ("an earlier run of this job picked 1 micrograph(s) with other settings (threshold 0.3 -> 0.1); their "
            "coordinate files are kept, and nothing is picked again") in err
    record = json.loads((job_dir / "pixer_picking.json").read_text())
    assert [len(r["micrographs"]) for r in record["runs"]] == [2, 1]
    assert [r["settings"]["threshold"] for r in record["runs"]] == [0.1, 0.3]
    rc, _, err = run(RELION_CMD + " --threshold 0.5")  # both earlier runs differ: each is named with its count
    assert ("earlier runs of this job picked 2 micrograph(s) with other settings (threshold 0.1 -> 0.5) and 1 "
            "micrograph(s) with other settings (threshold 0.3 -> 0.5)") in err
    # a file written before runs were kept: every kept micrograph is its run's
    (job_dir / "pixer_picking.json").write_text(json.dumps({k: v for k, v in record.items() if k != "runs"}))
    rc, _, err = run(RELION_CMD)
    assert "an earlier run of this job picked 3 micrograph(s) with other settings (threshold 0.3 -> 0.1)" in err


def test_kept_micrographs_go_to_the_last_run_that_lists_them_or_else_the_last_run():
    rec = {"given_A": 150.0, "picking_A": 150.0, "networks": None, "settings": {}}
    runs = [dict(rec, micrographs=["a", "b"]), dict(rec, picking_A=140.0, micrographs=["b", "c"])]
    groups = job._picked_by({**rec, "runs": runs}, ["a", "b", "c", "d"])
    assert [(g[0]["picking_A"], g[1]) for g in groups] == [(150.0, ["a"]), (140.0, ["b", "c", "d"])]
    (legacy, names), = job._picked_by({**rec, "runs": None}, ["a", "b"])
    assert names == ["a", "b"] and legacy["micrographs"] == [] and "runs" not in legacy


def test_on_the_fly_new_micrographs_appended(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=3)
    monkeypatch.chdir(root)
    names = [e.name for e in io.read_micrographs_star(root / IN_MICS, project_dir=root)]
    made_micrographs_star(root / IN_MICS, names[:2])
    assert run(RELION_CMD)[0] == 0
    made_micrographs_star(root / IN_MICS, names)  # RELION's schedule appended a new micrograph
    picker = FakePicker()
    rc, _, err = run(RELION_CMD, picker)
    assert rc == 0, err
    assert len(picker.calls) == 1
    lst = check_relion_outputs(root)
    assert len(lst) == 3
    # nothing new: still a success, nothing picked
    picker = FakePicker()
    rc, out, _ = run(RELION_CMD, picker)
    assert rc == 0 and picker.calls == []
    assert "0 to pick, 3 already picked" in out


DRIVER = """
import sys, time
sys.path.insert(0, {repo!r})
import numpy as np
from relion_pixer import job
from relion_pixer.pipeline import PickResult

def slow(image, angpix, d, params):
    time.sleep(0.4)
    xy = np.tile(np.array([[10.0, 20.0]]), (2000, 1))  # big enough that a write takes a moment
    return PickResult(xy, np.linspace(1, 0.6, 2000), None, (1.0, 1.0))

sys.exit(job.run_job(job.parse_args(sys.argv[1:]), pick_fn=slow))
"""


def test_killed_job_leaves_no_partial_file_and_continues(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=6, size=128)
    monkeypatch.chdir(root)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(repo=str(REPO)))
    proc = subprocess.Popen([sys.executable, str(driver)] + RELION_CMD.split(), cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    movies = root / "External/job012/Movies"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(movies.glob("*_autopick.star")) if movies.exists() else []) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(movies.glob("*_autopick.star"))
    assert 2 <= len(finished) < 6
    for f in finished:  # every coordinate file that exists is complete
        assert len(io.read_coordinates_star(f)) == 2000
        assert f.read_text().endswith(" \n \n")
    assert not (root / "External/job012" / relion.EXIT_SUCCESS).exists()
    picker = FakePicker()
    rc, _, err = run(RELION_CMD, picker)
    assert rc == 0, err
    assert len(picker.calls) == 6 - len(finished)
    check_relion_outputs(root)


def test_sigterm_marks_the_job_aborted(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=6, size=128)
    monkeypatch.chdir(root)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(repo=str(REPO)))
    proc = subprocess.Popen([sys.executable, str(driver)] + RELION_CMD.split(), cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    movies = root / "External/job012/Movies"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(movies.glob("*_autopick.star")) if movies.exists() else []) < 1:
        time.sleep(0.02)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "stopped by SIGTERM" in err
    jd = root / "External/job012"
    assert (jd / relion.EXIT_ABORTED).exists() and not (jd / relion.EXIT_SUCCESS).exists()
    assert not list(jd.rglob(f"*{io.TMP_SUFFIX}"))
    finished = list(movies.glob("*_autopick.star"))
    for f in finished:
        assert len(io.read_coordinates_star(f)) == 2000
    # the finished work is listed and the node written, as after RELION_JOB_ABORT_NOW
    assert len(io.read_star(jd / "autopick.star")["coordinate_files"]) == len(finished) >= 1
    assert (jd / "RELION_OUTPUT_NODES.star").exists()


def test_ctrl_c_lists_the_finished_micrographs(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=5)
    monkeypatch.chdir(root)
    jd = root / "External/job012"

    def interrupt(k):
        if k == 3:
            raise KeyboardInterrupt

    rc, _, err = run(RELION_CMD, FakePicker(per_call=interrupt))
    assert rc == 2 and "stopped by SIGINT" in err
    assert (jd / relion.EXIT_ABORTED).exists()
    assert len(io.read_star(jd / "autopick.star")["coordinate_files"]) == 2
    assert (jd / "RELION_OUTPUT_NODES.star").exists()


# ------------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------------


def test_one_bad_micrograph_is_skipped_and_listed(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=5)
    monkeypatch.chdir(root)
    mics = root / "MotionCorr/job002/Movies"
    (mics / "mic_001.mrc").unlink()  # missing
    bad = np.zeros((256, 256), np.float32)
    bad[5, 5] = np.nan
    write_mrc(mics / "mic_002.mrc", bad, 1.5)  # NaN
    write_mrc(mics / "mic_003.mrc", np.ones((64, 64), np.complex64), 1.5)  # wrong mode
    picker = FakePicker()
    rc, out, err = run(RELION_CMD, picker)
    assert rc == 0
    assert len(picker.calls) == 2
    assert (root / "External/job012" / relion.EXIT_SUCCESS).exists()
    assert "MotionCorr/job002/Movies/mic_001.mrc: file does not exist" in err
    assert "mic_002.mrc: contains 1 NaN or infinite pixel values" in err
    assert "mic_003.mrc: MRC mode 4 (complex64) is complex" in err
    assert "Skipped 3 micrograph(s)" in out
    assert re.search(r"^\s+\* MotionCorr/job002/Movies/mic_001.mrc: file does not exist$", out, re.M)
    assert re.search(r"^\s+\* MotionCorr/job002/Movies/mic_002.mrc: contains 1 NaN", out, re.M)  # path once
    lst = io.read_star(root / "External/job012/autopick.star")["coordinate_files"]
    assert list(lst["rlnMicrographName"]) == ["MotionCorr/job002/Movies/mic_000.mrc",
                                              "MotionCorr/job002/Movies/mic_004.mrc"]


def test_invert_gives_the_networks_dark_particles(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=1)
    monkeypatch.chdir(root)
    mic = root / "MotionCorr/job002/Movies/mic_000.mrc"
    light = np.zeros((256, 256), np.uint8)
    light[100:120, 100:120] = 200  # a light particle on a dark background, unsigned: negating must not wrap
    write_mrc(mic, light, 1.5)
    seen = []

    class Recorder(FakePicker):
        def __call__(self, image, angpix, diameter_A, params):
            seen.append(np.array(image))
            return super().__call__(image, angpix, diameter_A, params)

    for flag in ("", " --invert", " --invert Yes", " --invert No"):
        rc, _, err = run(RELION_CMD + flag, Recorder())
        assert rc == 0, err
        (root / "External/job012/Movies/mic_000_autopick.star").unlink()
    plain, inverted, yes, no = seen
    assert plain[110, 110] > plain[10, 10]
    assert inverted.dtype == np.float32 and inverted[110, 110] == -200 and inverted[10, 10] == 0
    assert np.array_equal(yes, inverted) and np.array_equal(no, plain)


def test_micrographs_with_light_particles_are_named_in_run_err(tmp_path, monkeypatch):
    """The contrast check: the networks (a stand-in picker that carries them, so that the checks before picking run)
    see particles in the negated micrographs only, and run.err says to set invert; with invert set as it should be,
    or on cryo-EM contrast, nothing is said."""
    from relion_pixer.models import load_pretrained
    from relion_pixer.simulate import random_config, simulate_micrograph

    root = made_project(tmp_path / "p", n=1)
    monkeypatch.chdir(root)
    rng = np.random.default_rng(707)
    cfg = random_config(rng, snr=1.0, particle_diameter_px=64.0, families="globular", empty=False, n_ice=0,
                        carbon_edge=False, density=0.2, angpix=1.5)
    image = simulate_micrograph(rng, shape=(512, 512), **cfg).image.astype(np.float32)

    class WithNetworks(FakePicker):
        models = load_pretrained()

    out_dir = root / "External/job012"
    for sign, flag, warned in ((-1, "", "invert Yes"), (-1, " --invert Yes", None), (1, "", None),
                               (1, " --invert Yes", "invert No")):
        write_mrc(root / "MotionCorr/job002/Movies/mic_000.mrc", sign * image, 1.5)
        shutil.rmtree(out_dir, ignore_errors=True)
        rc, out, err = run(RELION_CMD.replace("150", "96") + " --estimate_size No --check_spacing No" + flag,
                           WithNetworks())
        assert rc == 0, err
        assert " + contrast: the networks' confidence in particles" in out
        if warned:
            assert "the particles look lighter than the background" in err and f"set {warned}" in err
        else:
            assert "lighter than the background" not in err
        # a Continue with a micrograph to pick says it again from pixer_contrast.json, without measuring
        next(out_dir.rglob("*_autopick.star")).unlink()
        rc, out, err2 = run(RELION_CMD.replace("150", "96") + " --estimate_size No --check_spacing No" + flag,
                            WithNetworks())
        assert rc == 0 and "kept from the first run in pixer_contrast.json" in out
        assert ("lighter than the background" in err2) == bool(warned)


@pytest.fixture
def two_gpus(monkeypatch):
    """torch told there are two CUDA devices (none is used: what would load networks or set a device is recorded)."""
    import torch

    current: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(str(d)))
    monkeypatch.setattr(job, "_load_networks", lambda opts, device: f"networks on {device}")
    return current


def test_the_checks_before_picking_run_on_the_gpu_the_picking_uses(two_gpus):
    """--gpu 1: the contrast check, size estimate, spacing check and adapt run on cuda:1 as the picking does (they ran
    on cuda:0, and the picking loaded the networks a second time), with cuda:1 made the current device."""
    log = job._Log(_stdio.StringIO(), _stdio.StringIO())
    for argv, want in ((RELION_CMD + " --gpu 1", "cuda:1"), (RELION_CMD + " --gpu 1 --device cuda:0", "cuda:0"),
                       (RELION_CMD + " --gpu", "cuda:0")):
        opts = job.parse_args(argv.split())
        assert job._size_models(opts, None) == (f"networks on {want}", want)
        assert job._devices(opts, parallel.World(), 1, log) == [want]  # what picking compares it with
        assert two_gpus[-1] == want
    assert "--gpu 1 is ignored: --device cuda:0 names the device" in log.err.getvalue()


def test_a_cuda_device_beyond_those_present_is_a_usage_error(two_gpus):
    with pytest.raises(job.UsageError, match=r"--device cuda:2 was asked for, but there are only 2 CUDA device\(s\) "
                                             r"\(cuda:0 to cuda:1\)"):
        job._resolve_device("cuda:2")
    assert job._resolve_device("cuda:1") == "cuda:1" and job._resolve_device("auto") == "cuda"


def test_a_diameter_in_nm_is_refused_instead_of_upsampling(tmp_path, monkeypatch):
    """15 (nm, meant as 150 A) makes a 10 px particle at 1.5 A/px: refused per micrograph with the likely cause."""
    root = made_project(tmp_path / "p", n=2)
    monkeypatch.chdir(root)
    rc, out, err = run(RELION_CMD.replace("--particle_diameter 150", "--particle_diameter 12"))
    assert rc == 1
    assert "mic_000.mrc: a 12 A particle is only 8.0 px wide at 1.5 A/px" in err
    assert "is the diameter in Angstrom" in err
    assert "smaller than any particle picked in practice: it is in Angstrom (120 for 12 nm)" in err
    assert (root / "External/job012" / relion.EXIT_FAILURE).exists()


def test_strict_makes_a_bad_micrograph_fatal(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=3)
    monkeypatch.chdir(root)
    bad = root / "MotionCorr/job002/Movies/mic_001.mrc"
    image = mrcfile.read(bad).copy()
    image[5, 5] = np.nan  # found only when its pixels are read
    write_mrc(bad, image, None)
    rc, _, err = run(RELION_CMD + " --strict", FakePicker())
    assert rc == 1
    jd = root / "External/job012"
    assert (jd / relion.EXIT_FAILURE).exists() and not (jd / relion.EXIT_SUCCESS).exists()
    assert "mic_001.mrc: contains 1 NaN or infinite pixel values (--strict: stopping)" in err
    # what finished before the bad micrograph is kept and listed
    assert len(io.read_star(jd / "autopick.star")["coordinate_files"]) == 1


def test_strict_fails_on_a_missing_micrograph_before_the_stages_that_precede_picking(tmp_path, monkeypatch):
    """The size estimate, the spacing check and adapt skip micrographs they cannot read: with strict, a missing
    file fails the job before them (it had adapted for minutes and then failed on the first pick)."""
    root = made_project(tmp_path / "p", n=3)
    monkeypatch.chdir(root)
    (root / "MotionCorr/job002/Movies/mic_001.mrc").unlink()
    picker = FakePicker()
    rc, out, err = run(RELION_CMD + " --strict --adapt Yes", picker)
    assert rc == 1 and not picker.calls
    assert "mic_001.mrc: file does not exist (--strict: stopping before any micrograph is picked)" in err
    assert "particle size" not in out and "adapt" not in out.lower()
    assert (root / "External/job012" / relion.EXIT_FAILURE).exists()


def test_all_micrographs_bad_is_a_failure(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=2)
    monkeypatch.chdir(root)
    for p in (root / "MotionCorr/job002/Movies").iterdir():
        p.unlink()
    rc, _, err = run(RELION_CMD)
    assert rc == 1
    assert (root / "External/job012" / relion.EXIT_FAILURE).exists()
    assert "none of the 2 micrographs could be picked" in err


def test_a_continue_whose_only_new_micrographs_are_bad_succeeds_with_the_earlier_picks(tmp_path, monkeypatch):
    """On-the-fly (a Schemes loop reruns the job as the input grows): new micrographs that cannot be picked, and
    nothing else new, leave the earlier picks listed and the job a success with a warning (it had failed, and failed
    again at every later run, stopping the Scheme); strict still fails."""
    root = made_project(tmp_path / "p", n=2)
    monkeypatch.chdir(root)
    rc, _, err = run(RELION_CMD)
    assert rc == 0, err
    names = [f"MotionCorr/job002/Movies/mic_{i:03d}.mrc" for i in range(3)]
    made_micrographs_star(root / IN_MICS, names)  # a third micrograph, whose file is missing
    for _ in range(2):
        rc, out, err = run(RELION_CMD)
        assert rc == 0, err
        assert "mic_002.mrc: file does not exist" in err
        assert "none of the 1 micrograph(s) left to pick could be picked" in err and "lists the 2 picked before" in err
        jd = root / "External/job012"
        assert (jd / relion.EXIT_SUCCESS).exists() and not (jd / relion.EXIT_FAILURE).exists()
        assert len(io.read_star(jd / "autopick.star")["coordinate_files"]) == 2
    rc, _, err = run(RELION_CMD + " --strict")
    assert rc == 1 and (root / "External/job012" / relion.EXIT_FAILURE).exists()


def test_micrograph_smaller_than_a_particle(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=1, size=64)
    monkeypatch.chdir(root)
    rc, _, err = run(f"--o External/job012/ --in_mics {IN_MICS} --particle_diameter 400")
    assert rc == 1
    assert "mic_000.mrc: image (64 x 64 px) is smaller than the particle (267 px at 1.5 A/px)" in err


def test_missing_pixel_size_then_angpix_and_header(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mics.star").write_text("data_\nloop_\n_rlnMicrographName\nMicrographs/a.mrc\n")
    write_mrc(tmp_path / "Micrographs/a.mrc", np.random.default_rng(0).normal(size=(128, 128)).astype(np.float32), None)
    rc, _, err = run("--o out/ --in_mics mics.star --particle_diameter 100")
    assert rc == 1
    assert "Micrographs/a.mrc: no pixel size in the STAR file (_rlnMicrographPixelSize) or the MRC header; give --angpix" in err
    picker = FakePicker()
    rc, _, err = run("--o out/ --in_mics mics.star --particle_diameter 100 --angpix 1.06", picker)
    assert rc == 0, err
    assert picker.calls[0][1] == 1.06
    # the MRC header is the last fallback
    write_mrc(tmp_path / "Micrographs/a.mrc", np.random.default_rng(0).normal(size=(128, 128)).astype(np.float32), 2.0)
    picker = FakePicker()
    rc, _, err = run("--o out2/ --in_mics mics.star --particle_diameter 100", picker)
    assert rc == 0, err
    assert picker.calls[0][1] == pytest.approx(2.0)


def test_angpix_override_warns_when_it_disagrees(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=1)
    monkeypatch.chdir(root)
    picker = FakePicker()
    rc, _, err = run(RELION_CMD + " --angpix 1.06", picker)
    assert rc == 0
    assert picker.calls[0][1] == 1.06
    assert "--angpix 1.06 overrides the pixel size" in err


def test_mixed_pixel_sizes_warn_and_each_uses_its_own(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=3)
    monkeypatch.chdir(root)
    names = [e.name for e in io.read_micrographs_star(root / IN_MICS, project_dir=root)]
    made_micrographs_star(root / IN_MICS, names, angpix=(1.5, 1.06), groups=[1, 2, 1])
    picker = FakePicker()
    rc, _, err = run(RELION_CMD, picker)
    assert rc == 0
    assert [c[1] for c in picker.calls] == [1.5, 1.06, 1.5]
    assert "2 different pixel sizes (1.06, 1.5 A/px); each micrograph is resampled with its own" in err


@pytest.mark.parametrize(
    "content, match",
    [
        ("", "lists no micrographs"),
        ("data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n1 2\n", "no _rlnMicrographName column"),
        (None, "micrograph STAR file does not exist"),
    ],
)
def test_bad_star_files_fail_cleanly(tmp_path, monkeypatch, content, match):
    monkeypatch.chdir(tmp_path)
    if content is not None:
        (tmp_path / "mics.star").write_text(content)
    rc, _, err = run("--o External/job001/ --in_mics mics.star --particle_diameter 150")
    assert rc == 1
    assert re.search(r"^ERROR: mics.star: .*" + match, err, re.M), err
    assert (tmp_path / "External/job001" / relion.EXIT_FAILURE).exists()


def test_missing_particle_diameter_through_main(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = job.main(["--o", "External/job003/", "--in_mics", "mics.star", "--j", "1"])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: --particle_diameter is required")
    assert len(err.strip().splitlines()) == 1
    assert (tmp_path / "External/job003" / relion.EXIT_FAILURE).exists()
    rc = job.main(["--o", "External/job003/", "--in_mics", "mics.star", "--particle_diameter", "big"])
    assert rc == 1
    assert "--particle_diameter needs a diameter in Angstrom, not 'big'" in capsys.readouterr().err


def test_device_and_model_errors_before_any_work(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=1)
    monkeypatch.chdir(root)
    import torch

    out, err = _stdio.StringIO(), _stdio.StringIO()
    if not torch.cuda.is_available():
        rc = job.run_job(job.parse_args((RELION_CMD + " --device cuda:0").split()), out=out, err=err)
        assert rc == 1
        assert "--device cuda:0 was asked for, but no CUDA device is available (use --device cpu)" in err.getvalue()
    err = _stdio.StringIO()
    rc = job.run_job(job.parse_args((RELION_CMD + " --device cpu --model nope.pt").split()), out=out, err=err)
    assert rc == 1
    assert "model file nope.pt does not exist" in err.getvalue()
    assert (root / "External/job012" / relion.EXIT_FAILURE).exists()


def test_count_rows_matches_the_parser(shared_data):
    for f in sorted((shared_data / RELION5 / "AutoPick/job008/Movies").glob("*.star"))[:3]:
        assert job._count_rows(str(f)) == len(io.read_coordinates_star(f))


def test_count_rows_on_our_files(tmp_path):
    f = tmp_path / "c.star"
    for n in (0, 1, 7):
        io.write_coordinates_star(f, np.arange(2 * n, dtype=float).reshape(n, 2), np.full(n, 0.7), version=None)
        assert job._count_rows(str(f)) == n == len(io.read_coordinates_star(f))


def test_help(capsys):
    assert job.main(["--help"]) == 0
    assert "particle_diameter" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------------------------
# tolerant argument parsing
# ------------------------------------------------------------------------------------------------------------------


def test_relion_command_line_is_parsed_tolerantly():
    # what RELION 5 builds: params with unquoted values, an empty value as a bare label, --j, other_args,
    # and --pipeline_control when the command contains "relion_"
    argv = ("--o External/job012/ --in_mics CtfFind/job005/micrographs_ctf.star --particle_diameter 180 "
            "--threshold --write_maps --max_particles 0 --device cpu --some_future_option 1 2 "
            "--j 4 --pipeline_control External/job012/").split()
    opts = job.parse_args(argv)
    assert opts.o == "External/job012/"
    assert opts.in_mics == "CtfFind/job005/micrographs_ctf.star"
    assert opts.particle_diameter == 180.0
    assert opts.threshold == PickParams.threshold  # bare: default, with a warning
    assert opts.write_maps is True
    assert opts.max_particles == 0
    assert opts.device == "cpu"
    assert opts.threads == 4
    assert any("--threshold was given without a value" in w for w in opts.warnings)
    assert any("unknown argument: --some_future_option 1 2" in w for w in opts.warnings)


@pytest.mark.parametrize(
    "args, field, value",
    [
        ("--write_maps Yes", "write_maps", True),
        ("--write_maps No", "write_maps", False),
        ("--write_maps false", "write_maps", False),
        ("--write_maps 1", "write_maps", True),
        ("--strict", "strict", True),
        ("--strict no", "strict", False),
        ("----particle_diameter 150", "particle_diameter", 150.0),  # dashes typed into RELION's label field
        ("--Particle-Diameter=150", "particle_diameter", 150.0),
        ("--min_distance 120", "min_distance", 120.0),
        ("--batch_size 64", "batch_size", 64),
        ("--map_threshold 0.2", "map_threshold", 0.2),
        ("--map_relative 0", "map_relative", 0.0),
        ("--map_odds 0.1", "map_odds", 0.1),
        ("--margin 0", "margin", 0.0),
        ("--model my.pt", "model", "my.pt"),
        ("--device CUDA:1", "device", "cuda:1"),
        ("--precision BFloat16", "precision", "bfloat16"),
        ("--precision auto", "precision", "auto"),
        ("--precision", "precision", None),  # an empty GUI field: the package default
        ("--relion_version 3.1", "relion_version", 3),
        ("--pipeline-control External/job012/", "o", "out/"),
        ("--in_movies movies.star", "o", "out/"),
    ],
)
def test_parameter_forms(args, field, value):
    base = "--o out/ --in_mics m.star"
    if "particle_diameter" not in args.lower().replace("-", "_"):
        base += " --particle_diameter 150"
    opts = job.parse_args((base + " " + args).split())
    assert getattr(opts, field) == value


@pytest.mark.parametrize(
    "args, match",
    [
        ("--o out/ --in_mics m.star", "--particle_diameter is required"),
        ("--o out/ --in_mics m.star --particle_diameter", "--particle_diameter is required"),
        ("--o out/ --in_mics m.star --particle_diameter -5", "must be positive"),
        ("--in_mics m.star --particle_diameter 150", "--o OUTPUT_DIRECTORY/ is required"),
        ("--o out/ --particle_diameter 150", "no input"),
        ("--o out/ --in_mics m.star --particle_diameter 150 --threshold 2", "between 0 and 1"),
        ("--o out/ --in_mics m.star --particle_diameter 150 --max_particles 1.5", "whole number"),
        ("--o out/ --in_mics m.star --particle_diameter 150 --device gpu", "auto, cpu, cuda or cuda:N"),
        ("--o out/ --in_mics m.star --particle_diameter 150 --write_maps maybe", "--write_maps takes Yes or No, not 'maybe'"),
        ("--o out/ --in_mics m.star --particle_diameter 150 --treshold 0.3",
         "unknown parameter '--treshold': did you mean threshold?"),
        ("--o out/ --in_mics m.star --diameter 150", "unknown parameter '--diameter': did you mean particle_diameter?"),
        ("--o out/ --in_mics m.star --particle_diameter 150 --max_particle 300",
         "unknown parameter '--max_particle': did you mean max_particles?"),
        ("--o out/ --in_mics m.star --particle_diameter 150 --relion_version 3.0", "3.0 has no External job"),
        ("--o out/ --in_mics m.star --particle_diameter 150 --j 0", "at least 1"),
        ("--o out/ --in_mics m.star --particle_diameter 150 --map_threshold -0.1", "--map_threshold must be between 0 and 1"),
        ("--o out/ --in_mics m.star --particle_diameter 150 --margin -3", "--margin must be 0 or positive"),
        ("--o out/ --in_mics m.star --particle_diameter 150 --min_distance 0", "--min_distance must be positive"),
        ("--o out/ --in_mics m.star --particle_diameter 150 --angpix abc", "--angpix needs a pixel size"),
        ("--o out/ --in_mics m.star --particle_diameter 150 --precision half", "--precision must be auto, float32 or bfloat16"),
    ],
)
def test_bad_arguments(args, match):
    with pytest.raises(job.UsageError, match=re.escape(match)):
        job.parse_args(args.split())


def test_a_bad_precision_in_the_environment_is_a_usage_error(monkeypatch):
    """RELION_PIXER_CPU_PRECISION reaches every worker and rank; a bad value stops the job before it starts instead
    of failing each micrograph."""
    monkeypatch.setenv("RELION_PIXER_CPU_PRECISION", "half")
    with pytest.raises(job.UsageError, match="RELION_PIXER_CPU_PRECISION must be auto, float32 or bfloat16, not 'half'"):
        job.parse_args("--o out/ --in_mics m.star --particle_diameter 150".split())
    opts = job.parse_args("--o out/ --in_mics m.star --particle_diameter 150 --precision float32".split())
    assert opts.precision == "float32"  # the job's parameter wins over the environment
    monkeypatch.setenv("RELION_PIXER_CPU_PRECISION", " BFloat16")
    assert job.parse_args("--o out/ --in_mics m.star --particle_diameter 150".split()).precision is None


def test_an_empty_value_names_the_default_it_falls_back_to():
    """RELION sends an empty GUI field as a bare --label; the warning says what is used instead."""
    opts = job.parse_args("--o out/ --in_mics m.star --particle_diameter 150 --min_distance --margin --threshold".split())
    assert opts.min_distance is None and opts.margin is None and opts.threshold == PickParams.threshold
    assert "--min_distance was given without a value; using the default (half the particle diameter)" in opts.warnings
    assert "--margin was given without a value; using the default (0.4 of the particle diameter)" in opts.warnings
    assert f"--threshold was given without a value; using the default ({PickParams.threshold:g})" in opts.warnings


def test_pipeline_filenames_like_relion():
    d = relion.decompose_pipeline_filename
    assert d("MotionCorr/job002/Movies/x.mrc") == ("MotionCorr/", "job002/", "Movies/x.mrc")
    assert d("MotionCorr/job002/x.mrc") == ("MotionCorr/", "job002/", "x.mrc")
    assert d("Import/job001/a/b/c.tif") == ("Import/", "job001/", "a/b/c.tif")
    assert d("Micrographs/x.mrc") == ("", "", "Micrographs/x.mrc")
    assert d("job001/x.mrc") == ("", "job001/", "x.mrc")
    assert d("MotionCorr/job0123/x.mrc") == ("MotionCorr/", "job0123/", "x.mrc")
    assert d("MotionCorr/jobs/job002/x.mrc") == ("MotionCorr/jobs/", "job002/", "x.mrc")
    assert relion.without_extension("a.b/c") == "a"  # RELION's withoutExtension takes the last dot anywhere
    c = relion.coordinate_file_name
    assert c("External/job012/", "MotionCorr/job002/Movies/x.mrc") == "External/job012/Movies/x_autopick.star"
    assert c("External/job012", "MotionCorr/job002/x.tiff") == "External/job012/x_autopick.star"
    assert c("out/", "Micrographs/x.mrc") == "out/Micrographs/x_autopick.star"
    assert c("out/", "/data/run1/x.mrc") == "out/data/run1/x_autopick.star"
    assert c("out/", "../raw/x.mrc") == "out/raw/x_autopick.star"
    assert c("out/", "x.mrc", "_pixer.star") == "out/x_pixer.star"


def test_duplicate_coordinate_targets_are_refused(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=1)
    monkeypatch.chdir(root)
    made_micrographs_star(root / IN_MICS, ["MotionCorr/job002/Movies/mic_000.mrc", "MotionCorr/job003/Movies/mic_000.mrc"])
    rc, _, err = run(RELION_CMD)
    assert rc == 1 and "would both write External/job012/Movies/mic_000_autopick.star" in err


# ------------------------------------------------------------------------------------------------------------------
# standalone use, pictures, progress bar
# ------------------------------------------------------------------------------------------------------------------


def test_standalone_pick_of_mrc_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(3)
    write_mrc(tmp_path / "a.mrc", rng.normal(size=(200, 300)).astype(np.float32), None)
    write_mrc(tmp_path / "data/b.mrc", rng.normal(size=(256, 256)).astype(np.float16), None)
    picker = FakePicker()
    rc, out, err = run("a.mrc data/b.mrc --angpix 1.06 --particle_diameter 180 --o out/".split(), picker)
    assert rc == 0, err
    assert [c[0] for c in picker.calls] == [(200, 300), (256, 256)]
    assert (tmp_path / "out/a_autopick.star").exists() and (tmp_path / "out/data/b_autopick.star").exists()
    lst = io.read_star(tmp_path / "out/autopick.star")["coordinate_files"]
    assert list(lst["rlnMicrographName"]) == ["a.mrc", "data/b.mrc"]
    assert (tmp_path / "out" / relion.EXIT_SUCCESS).exists()
    # shell-style patterns are expanded (RELION users type Micrographs/*.mrc)
    opts = job.parse_args(["data/*.mrc", "--angpix", "1", "--particle_diameter", "100", "--o", "o2/"])
    assert opts.micrographs == ("data/b.mrc",)


def test_write_maps(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=1)
    monkeypatch.chdir(root)
    rc, _, err = run(RELION_CMD + " --write_maps Yes")
    assert rc == 0, err
    movies = root / "External/job012/Movies"
    png = movies / "mic_000_picks.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with mrcfile.open(movies / "mic_000_probmap.mrc") as m:
        assert m.data.shape == (64, 64)
        assert float(m.voxel_size.x) == pytest.approx(1.5 / 0.25)
    rc, _, _ = run(RELION_CMD.replace("job012", "job013") + " --write_maps No")
    assert not list((root / "External/job013/Movies").glob("*.png"))
    # Continue with write_maps switched on: pictures for what it picks now, and run.out says the rest keep theirs
    made_micrographs_star(root / IN_MICS, ["MotionCorr/job002/Movies/mic_000.mrc", "MotionCorr/job002/Movies/new.mrc"])
    noise = np.random.default_rng(1).normal(size=(256, 256)).astype(np.float32)
    write_mrc(root / "MotionCorr/job002/Movies/new.mrc", noise, 1.5)
    rc, out, err = run(RELION_CMD.replace("job012", "job013") + " --write_maps Yes")
    assert rc == 0, err
    assert "write_maps: pictures and maps for the 1 micrograph(s) picked now; the 1 picked before keep" in out
    assert [p.name for p in (root / "External/job013/Movies").glob("*.png")] == ["new_picks.png"]


def test_progress_bar_on_a_terminal(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=2)
    monkeypatch.chdir(root)

    class Terminal(_stdio.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    rc = job.run_job(job.parse_args(RELION_CMD.split()), pick_fn=FakePicker(), out=out, err=_stdio.StringIO())
    assert rc == 0
    text = out.getvalue()
    assert "mic/s" in text or "s/mic" in text  # tqdm's bar
    assert "mic_001.mrc: 4 particles" in text


# ------------------------------------------------------------------------------------------------------------------
# the real chain (networks, picking, classifier)
# ------------------------------------------------------------------------------------------------------------------

MISSING = [m for m in ("picking", "classify", "segment", "models")
           if importlib.util.find_spec(f"relion_pixer.{m}") is None]
needs_chain = pytest.mark.skipif(bool(MISSING), reason="relion_pixer." + ", relion_pixer.".join(MISSING)
                                 + " not on this branch yet (main lacks them)")


def _model_args(tmp_path: Path) -> list[str]:
    """``--model`` with a small random-weight model file when the shipped weights are absent.

    Its output biases make the chain pick something on noise (classifier: "particle"; segmenter: a little towards
    "particle"), so that the end-to-end test sees coordinates flow through every stage.
    """
    from importlib import resources

    import torch

    from relion_pixer import models

    shipped = resources.files("relion_pixer") / "weights" / models.DEFAULT_WEIGHTS
    if shipped.is_file():
        return []
    path = tmp_path / "random_model.pt"
    torch.manual_seed(0)
    classifier, segmenter = models.build_classifier(), models.build_segmenter()
    with torch.no_grad():
        classifier.head[-1].bias.copy_(torch.tensor([0.0, 8.0, 0.0]))
        for branch in segmenter.branches:
            branch[-1].bias.copy_(torch.tensor([0.0, 0.3, 0.0]))
    models.save_models(path, classifier, segmenter)
    return ["--model", str(path)]


@needs_chain
def test_pick_micrograph_chain(tmp_path):
    import torch

    from relion_pixer import models, pipeline

    torch.manual_seed(0)
    args = _model_args(tmp_path)
    loaded = models.load_pretrained(args[1] if args else None)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(300, 400)).astype(np.float32)
    res = pipeline.pick_micrograph(image, 1.0, 40.0, loaded, PickParams(threshold=0.0, max_particles=7))
    assert res.xy.shape[1] == 2 and len(res.xy) == len(res.fom) <= 7
    assert np.all(np.diff(res.fom) <= 0)
    assert res.prob_map.dtype == np.float32 and res.prob_map.ndim == 2
    assert res.net_image.shape == res.prob_map.shape
    if len(res.xy):
        assert (res.xy[:, 0] >= 0).all() and (res.xy[:, 0] < 400).all() and (res.xy[:, 1] < 300).all()


@needs_chain
@pytest.mark.parametrize("kind", ["made", "shared"])
def test_external_job_end_to_end_as_relion_runs_it(request, tmp_path, kind):
    if kind == "shared":
        root = shared_project(request.getfixturevalue("shared_data"), tmp_path / "proj", size=512)
    else:
        root = made_project(tmp_path / "proj", n=3, size=512)
    model_args = _model_args(tmp_path)
    extra = ["--write_maps", "Yes", "--precision", "float32"] if kind == "made" else []
    cmd = [sys.executable, str(REPO / "external_job.py")] + RELION_CMD.split() + extra + model_args
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lst = check_relion_outputs(root, empty=None)  # a micrograph without picks has a 0-byte file, as in RELION
    assert len(re.findall(r"^ \[\s*\d+/\d+\] MotionCorr/\S+: \d+ particles", proc.stdout, re.M)) == len(lst)
    frames = [io.read_coordinates_star(root / c) for c in lst["rlnMicrographCoordinates"]]
    total = sum(len(f) for f in frames)
    assert f"is {total} (on average" in proc.stdout
    # the precision the networks ran at: as asked, or the default's choice for this CPU
    assert re.search(r"networks loaded, running on cpu \((float32|bfloat16)\)", proc.stdout)
    if extra:
        assert "running on cpu (float32)" in proc.stdout
    if model_args:  # the biased random model picks something on noise
        assert total > 0
    for f in frames:
        if len(f):
            assert f["rlnCoordinateX"].between(0, 511).all() and f["rlnCoordinateY"].between(0, 511).all()
            assert (f["rlnAutopickFigureOfMerit"] >= PickParams.threshold).all()  # the default threshold
    # the size estimate: once per job, in run.out and in the job directory, and the networks saw that size
    assert len(re.findall(r"^ \+ particle size from the data: \d+ A, [\d.]+x the diameter given \(150 A", proc.stdout,
                          re.M)) == 1
    size = json.loads((root / "External/job012/pixer_size.json").read_text())
    assert size["given_A"] == 150.0 and 0.5 * 150 <= size["estimate_A"] <= 1.85 * 150
    weight = size_module.ESTIMATE_WEIGHT  # the shipped weights' blend (0: picks at the diameter given)
    assert size["picking_A"] == pytest.approx(150.0 ** (1 - weight) * size["estimate_A"] ** weight)
    if extra:
        assert len(list((root / "External/job012/Movies").glob("*_picks.png"))) == len(lst)
        side = preprocess._output_shape((512, 512), preprocess.scale_factor(size["picking_A"], 1.5))
        for m in (root / "External/job012/Movies").glob("*_probmap.mrc"):
            with mrcfile.open(m) as mrc:
                assert mrc.data.shape == side  # the estimated diameter sets the network scale
                assert 0.0 <= float(mrc.data.min()) and float(mrc.data.max()) <= 1.0


# ------------------------------------------------------------------------------------------------------------------
# the chain's plumbing, with stand-ins for the stages that are not on this branch
# ------------------------------------------------------------------------------------------------------------------


def test_pick_micrograph_chains_the_stages(monkeypatch):
    """pipeline.pick_micrograph passes the right scales and settings between stages (stand-in picker/classifier)."""
    import types

    import relion_pixer
    from relion_pixer import NET_DIAMETER_PX, pipeline

    seen = {}

    def predict_probability(segmenter, net_image, device, **kw):
        seen["seg"] = (segmenter, net_image.shape, device)
        return np.full(net_image.shape, 0.5, np.float32)

    def pick_centres(prob_map, diameter_px, min_distance_px=None, threshold=None, **kw):
        seen["pick"] = (prob_map.shape, diameter_px, min_distance_px)
        seen["map_threshold"] = threshold
        return np.array([[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]]), np.array([0.5, 0.6, 0.7])

    def classify_candidates(classifier, net_image, xy, device="cpu", batch_size=256):
        seen["cls"] = (classifier, xy.shape, device, batch_size)
        # fewer than MIN_REFERENCE candidates: all are the reference; sure of 2 of 3 gives trust (2/3 - 0.5) / 0.3
        return np.array([[0.0, 1.0, 0.0], [0.1, 0.9, 0.0], [0.5, 0.5, 0.0]])[: len(xy)]

    from relion_pixer.picking import adaptive_threshold

    fakes = {"segment": dict(predict_probability=predict_probability),
             "picking": dict(pick_centres=pick_centres, adaptive_threshold=adaptive_threshold),
             "classify": dict(classify_candidates=classify_candidates)}
    for name, attrs in fakes.items():
        mod = types.ModuleType(f"relion_pixer.{name}")
        mod.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, f"relion_pixer.{name}", mod)
        monkeypatch.setattr(relion_pixer, name, mod, raising=False)
    models = types.SimpleNamespace(segmenter="SEG", classifier="CLS")
    image = np.random.default_rng(0).normal(size=(400, 600)).astype(np.float32)
    params = PickParams(threshold=0.4, max_particles=0, min_distance_A=100.0, device="cuda:1", batch_size=32)
    res = pipeline.pick_micrograph(image, 2.0, 200.0, models, params)
    # 200 A at 2 A/px = 100 px -> NET_DIAMETER_PX: factor 0.32
    assert seen["seg"] == ("SEG", (128, 192), "cuda:1")
    assert seen["pick"] == ((128, 192), NET_DIAMETER_PX, pytest.approx(100.0 * NET_DIAMETER_PX / 200.0))
    assert seen["cls"] == ("CLS", (3, 2), "cuda:1", 32)
    # map scores 0.5, 0.6, 0.7 with P(particle) 1.0, 0.9, 0.5: the first two keep their map score, the last is
    # vetoed as far as the classifier is trusted: 0.7 x (1 - 5/9) = 0.31 < 0.4
    np.testing.assert_allclose(res.fom, [0.6, 0.5])  # best first
    np.testing.assert_allclose(res.xy, [[30.0 / 0.32, 40.0 / 0.32], [10.0 / 0.32, 20.0 / 0.32]])
    assert res.factors == (128 / 400, 192 / 600) and res.capped == 0 and res.trust == pytest.approx(5 / 9)
    assert res.prob_map.shape == res.net_image.shape == (128, 192)
    assert seen["map_threshold"] == PickParams.map_threshold
    # the micrograph's own cut: 0.9 x the 75th percentile of (0.5, 0.6, 0.7) = 0.585 leaves two candidates
    pipeline.pick_micrograph(image, 2.0, 200.0, models, PickParams(map_threshold=0.2, map_relative=0.9))
    assert seen["map_threshold"] == 0.2 and seen["cls"][1] == (2, 2)
    res = pipeline.pick_micrograph(image, 2.0, 200.0, models, PickParams(threshold=0.4, max_particles=1))
    assert seen["pick"][2] is None and len(res.xy) == 1 and res.capped == 1  # the cap says what it cut


def test_an_engine_error_is_fatal_with_the_reason(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=2)
    monkeypatch.chdir(root)

    def oom(image, angpix, d, params):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    rc, _, err = run(RELION_CMD, oom)
    assert rc == 1
    assert err.strip().endswith("ERROR: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert (root / "External/job012" / relion.EXIT_FAILURE).exists()


def test_shim_as_relion_calls_it_without_networks(tmp_path):
    """external_job.py through cli.py: a bad command line gives one error line and the failure marker."""
    root = made_project(tmp_path / "p", n=1)
    cmd = [sys.executable, str(REPO / "external_job.py"), "--o", "External/job012/", "--in_mics", IN_MICS,
           "--j", "1", "--pipeline_control", "External/job012/"]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "ERROR: --particle_diameter is required: the particle's diameter in Angstrom (e.g. 180)"]
    assert (root / "External/job012" / relion.EXIT_FAILURE).exists()
    proc = subprocess.run([sys.executable, str(REPO / "external_job.py"), "pick", "--help"], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "particle_diameter" in proc.stdout


def test_shim_run_by_a_python_without_the_packages(tmp_path):
    """RELION runs external_job.py with the first python3 on its PATH. One without the packages (here: the same
    interpreter without site-packages, ``-S``) re-runs the shim with the checkout's ``.venv`` when there is one, and
    otherwise fails with the reason and the failure marker, so that RELION does not wait for the job forever."""
    import shutil

    root = made_project(tmp_path / "p", n=1)
    lone = tmp_path / "lone"  # a checkout without an environment
    lone.mkdir()
    shutil.copy(REPO / "external_job.py", lone / "external_job.py")
    cmd = [sys.executable, "-S", str(lone / "external_job.py"), "--o", "External/job012/", "--in_mics", IN_MICS,
           "--particle_diameter", "100"]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "lacks numpy" in proc.stderr and "which relion-pixer needs" in proc.stderr
    assert str(lone / ".venv") in proc.stderr
    assert (root / "External/job012" / relion.EXIT_FAILURE).exists()
    if not (REPO / ".venv/bin/python").is_file():
        return  # installed without the Makefile's environment: nothing to fall back to
    (lone / ".venv").symlink_to(REPO / ".venv")
    (lone / "relion_pixer").symlink_to(REPO / "relion_pixer")
    proc = subprocess.run([sys.executable, "-S", str(lone / "external_job.py"), "pick", "--help"], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "particle_diameter" in proc.stdout, proc.stderr


def test_continue_keeps_the_size_estimate_and_gives_the_same_picks(tmp_path, monkeypatch, capsys):
    """The size estimate is made once per job: Continue reads it back from pixer_size.json, so the micrographs it
    picks are picked at the same size as the first run's."""
    root = made_project(tmp_path / "p", n=3, size=384)
    monkeypatch.chdir(root)
    cmd = RELION_CMD.split() + _model_args(tmp_path)
    assert job.main(cmd) == 0
    first = capsys.readouterr().out
    assert first.count("particle size from the data") == 1 and "kept from the first run" not in first
    again = _continue_without_the_last_coordinates(root, cmd, capsys)
    assert "kept from the first run in pixer_size.json" in again and "1 to pick" in again


def _continue_without_the_last_coordinates(root: Path, cmd: list, capsys) -> str:
    """Delete the last micrograph's coordinate file, Continue the job (``cmd``), check that the file comes back byte
    for byte, and return what the second run printed."""
    lst = check_relion_outputs(root, empty=None)
    coords = [root / c for c in lst["rlnMicrographCoordinates"]]
    before = coords[-1].read_bytes()
    coords[-1].unlink()
    assert job.main(cmd) == 0
    again = capsys.readouterr().out
    assert coords[-1].read_bytes() == before
    return again


def test_check_spacing_reports_the_spacing_and_continue_keeps_it(tmp_path, monkeypatch, capsys):
    """``check_spacing`` (the default, Yes): run.out gives the picks' spacing once, measured with the job's second
    pass, pixer_spacing.json keeps it, and Continue picks at the same size without measuring it again (the minimum
    count of picks is lowered: these micrographs are small). ``check_spacing No`` makes no check."""
    root = made_project(tmp_path / "p", n=3, size=384)
    monkeypatch.chdir(root)
    monkeypatch.setattr(size_module, "MIN_SPACING_PICKS", 2)
    passes, real_check = [], size_module.check_spacing

    def check(*args, **kwargs):
        passes.append(kwargs.get("repick"))
        return real_check(*args, **kwargs)

    monkeypatch.setattr(size_module, "check_spacing", check)
    cmd = RELION_CMD.split() + _model_args(tmp_path)
    assert job.main(cmd) == 0
    first = capsys.readouterr().out
    assert passes == [True]
    assert len(re.findall(r"^ \+ pick spacing: the median pick at \d+ A has its nearest neighbour \d+ A away "
                          r"\([\d.]+ diameters, \d+ picks", first, re.M)) == 1, first
    kept = json.loads((root / "External/job012/pixer_spacing.json").read_text())
    size = json.loads((root / "External/job012/pixer_size.json").read_text())
    assert kept["checked_A"] == size["picking_A"]  # the check follows the size estimate
    assert size_module.SPACING_FLOOR * kept["checked_A"] <= kept["picking_A"] <= kept["checked_A"]
    again = _continue_without_the_last_coordinates(root, cmd, capsys)
    assert "kept from the first run in pixer_spacing.json" in again and "the median pick" not in again
    off = [a.replace("job012", "job013") for a in cmd] + ["--check_spacing", "No"]
    assert job.main(off) == 0
    assert "pick spacing" not in capsys.readouterr().out and not (root / "External/job013/pixer_spacing.json").exists()
    assert passes == [True]


def test_an_output_directory_that_takes_no_files_is_one_clear_error(tmp_path, monkeypatch):
    """A job directory that exists but takes no files (permissions, an immutable or read-only directory): one error
    naming the directory, before any work, and no traceback."""
    root = made_project(tmp_path / "p", n=1)
    monkeypatch.chdir(root)
    (root / "External/job012").mkdir(parents=True)

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(job.tempfile, "mkstemp", refused)
    rc, out, err = run(RELION_CMD)
    assert rc == 1
    assert err.strip().splitlines() == ["ERROR: cannot write in the output directory External/job012/ (Permission "
                                        "denied)"]
    assert "particle size" not in out


def test_an_exit_marker_that_cannot_be_written_is_reported_not_raised(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=1)
    monkeypatch.chdir(root)

    def full(job_dir, status):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(relion, "write_exit_marker", full)
    rc, out, err = run(RELION_CMD.replace(IN_MICS, "CtfFind/job005/missing.star"))
    assert rc == 1
    lines = err.strip().splitlines()
    assert "missing.star" in lines[0]
    assert lines[1] == "ERROR: cannot write RELION_JOB_EXIT_FAILURE in External/job012 (No space left on device)"


def _unpickable(image, angpix, diameter_A, params):
    raise ValueError("the micrograph is damaged")


def test_a_job_that_picks_nothing_leaves_no_list_and_no_output_node(tmp_path, monkeypatch):
    """Every micrograph skipped: the job fails and leaves only its failure marker, not an empty coordinate list that
    RELION would take as an output node."""
    root = made_project(tmp_path / "p", n=2)
    monkeypatch.chdir(root)
    rc, out, err = run(RELION_CMD + " --estimate_size No", pick_fn=_unpickable)
    jd = root / "External/job012"
    assert rc == 1 and "none of the 2 micrographs could be picked" in err
    assert (jd / relion.EXIT_FAILURE).exists()
    assert not (jd / "autopick.star").exists() and not (jd / "RELION_OUTPUT_NODES.star").exists()
    assert "no autopick.star written" in out


def test_no_readable_micrograph_is_said_by_every_stage_before_picking(tmp_path, monkeypatch, capsys):
    """With every micrograph unreadable (and no strict), the size estimate, the spacing check and adapt each say that
    no micrograph could be read, not that the particles gave them nothing to measure; the job then fails naming each
    file's reason."""
    root = made_project(tmp_path / "p", n=2, size=256)
    monkeypatch.chdir(root)
    for p in (root / "MotionCorr/job002/Movies").glob("*.mrc"):
        p.write_bytes(b"not an MRC file")
    assert job.main(RELION_CMD.split() + _model_args(tmp_path) + ["--adapt", "Yes"]) == 1
    cap = capsys.readouterr()
    assert "particle size from the data: not measured: no micrograph of the job could be read" in cap.out
    assert "pick spacing: not checked: no micrograph of the job could be read" in cap.out
    assert "too few to measure" not in cap.out
    assert "adapt: not adapted" in cap.out and "no readable micrograph" in cap.out
    assert cap.out.count("file is too small to be an MRC file") == 2
    assert "none of the 2 micrographs could be picked" in cap.err


def test_size_not_measured_is_said_and_continue_at_another_diameter_warns(tmp_path, monkeypatch, capsys):
    """When no scale gives the networks a particle to see, run.out says the size was not measured and the job picks at
    the diameter given (nothing kept for Continue); when Continue is given another diameter than the run that picked
    the first micrographs, run.err says that the job now mixes two sizes."""
    root = made_project(tmp_path / "p", n=3, size=384)
    monkeypatch.chdir(root)
    cmd = RELION_CMD.split() + _model_args(tmp_path)
    real = size_module.estimate_diameter

    def blind(micrographs, diameter_A, *args, **kwargs):
        for _ in micrographs:
            pass
        return size_module.SizeEstimate(diameter_A, diameter_A, size_module.FACTORS,
                                        tuple(float("nan") for _ in size_module.FACTORS), False)

    monkeypatch.setattr(size_module, "estimate_diameter", blind)
    assert job.main(cmd) == 0
    out = capsys.readouterr().out
    assert "particle size from the data: not measured" in out and "picking at the diameter given" in out
    assert not (root / "External/job012/pixer_size.json").exists()

    monkeypatch.setattr(size_module, "estimate_diameter", real)
    shutil.rmtree(root / "External/job012")
    assert job.main(cmd) == 0
    capsys.readouterr()
    kept = json.loads((root / "External/job012/pixer_size.json").read_text())
    coords = sorted((root / "External/job012").rglob("*_autopick.star"))
    coords[-1].unlink()
    other = [a if a != "150" else "250" for a in cmd]
    assert job.main(other) == 0
    captured = capsys.readouterr()
    assert (f"2 micrograph(s) were picked by an earlier run of this job at {kept['picking_A']:.0f} A (diameter given "
            "150 A)") in captured.err


def test_a_header_pixel_size_unlike_the_star_files_is_named(tmp_path, monkeypatch):
    """The STAR file's pixel size is used, as RELION does, but a first micrograph whose MRC header says otherwise
    draws a warning naming it and both values."""
    root = made_project(tmp_path / "p", n=2)
    monkeypatch.chdir(root)
    names = [e.name for e in io.read_micrographs_star(root / IN_MICS, project_dir=root)]
    made_micrographs_star(root / IN_MICS, names, angpix=(1.25,))
    write_micrographs(root, IN_MICS, size=256, angpix=1.5)
    picker = FakePicker()
    rc, _, err = run(RELION_CMD, picker)
    assert rc == 0 and [c[1] for c in picker.calls] == [1.25, 1.25]
    assert (f"{names[0]}: the STAR file gives 1.25 A/px (_rlnMicrographPixelSize), its MRC header 1.5 A/px; picking "
            "with 1.25 A/px") in err
    write_micrographs(root, IN_MICS, size=256, angpix=1.25)
    rc, _, err = run(RELION_CMD.replace("job012", "job013"), FakePicker())
    assert rc == 0 and "MRC header" not in err


def test_a_micrograph_listed_twice_is_picked_once(tmp_path, monkeypatch):
    root = made_project(tmp_path / "p", n=2)
    monkeypatch.chdir(root)
    names = [e.name for e in io.read_micrographs_star(root / IN_MICS, project_dir=root)]
    made_micrographs_star(root / IN_MICS, names + names[:1])
    picker = FakePicker()
    rc, out, err = run(RELION_CMD, picker)
    assert rc == 0 and len(picker.calls) == 2
    assert f"1 micrograph(s) are listed more than once ({names[0]}); each is picked once" in err
    listed = io.read_star(root / "External/job012/autopick.star")["coordinate_files"]
    assert list(listed["rlnMicrographName"]) == names
    assert "from 2 of 2 micrographs is 8" in out.replace("particles ", "")


def test_a_margin_past_half_the_micrograph_and_a_threshold_of_one_are_said(tmp_path, monkeypatch):
    """Settings that can keep no pick say so: a margin of at least half the micrographs' short side (once, not per
    micrograph), a threshold of 1."""
    root = made_project(tmp_path / "p", n=3)  # 256 px at 1.5 A/px: 384 A
    monkeypatch.chdir(root)
    rc, _, err = run(RELION_CMD + " --margin 200", FakePicker())
    assert rc == 0
    assert err.count("--margin 200 A is at least half the short side of the micrographs (384 A)") == 1, err
    rc, _, err = run(RELION_CMD.replace("job012", "job013") + " --margin 150", FakePicker())
    assert rc == 0 and "--margin" not in err
    assert any("--threshold 1 keeps no pick" in w for w in job.parse_args(RELION_CMD.split() + ["--threshold", "1"]).warnings)
    assert not any("threshold" in w for w in job.parse_args(RELION_CMD.split() + ["--threshold", "0.9"]).warnings)


def test_a_star_argument_that_is_an_image_or_a_directory_is_named_as_such(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_mrc(tmp_path / "mics.star", np.zeros((64, 64), np.float32), 1.0)
    rc, _, err = run("--o External/job001/ --in_mics mics.star --particle_diameter 150")
    assert rc == 1 and "ERROR: mics.star: not a STAR file (binary content" in err, err
    (tmp_path / "Mics").mkdir()
    rc, _, err = run("--o External/job001/ --in_mics Mics --particle_diameter 150")
    assert rc == 1 and "ERROR: Mics: is a directory; give the micrographs STAR file in it" in err, err


def test_the_size_estimate_runs_on_the_threads_given(tmp_path, monkeypatch, capsys):
    """``j`` bounds every stage: the size estimate (and the spacing check and adapt, which run beside it) runs with
    the job's threads, not the machine's."""
    import torch

    root = made_project(tmp_path / "p", n=1, size=384)
    monkeypatch.chdir(root)
    seen = []
    real = size_module.estimate_diameter

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(size_module, "estimate_diameter", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert job.main(RELION_CMD.split() + _model_args(tmp_path)) == 0  # RELION_CMD has --j 1
    finally:
        torch.set_num_threads(before)
    assert seen == [1]


def test_continue_with_the_size_estimate_turned_off_warns_of_two_sizes(tmp_path, monkeypatch, capsys):
    """A Continue that picks the rest at another diameter says so whatever moved it: here the size estimate turned
    off (pixer_picking.json keeps what each run picked at)."""
    root = made_project(tmp_path / "p", n=3, size=384)
    monkeypatch.chdir(root)
    cmd = RELION_CMD.split() + _model_args(tmp_path)
    assert job.main(cmd) == 0
    capsys.readouterr()
    first = json.loads((root / "External/job012/pixer_picking.json").read_text())
    assert first["given_A"] == 150.0
    sorted((root / "External/job012").rglob("*_autopick.star"))[-1].unlink()
    assert job.main(cmd + ["--estimate_size", "No"]) == 0
    err = capsys.readouterr().err
    assert abs(first["picking_A"] - 150.0) > 1  # noise micrographs: the estimate moves it
    assert (f"2 micrograph(s) were picked by an earlier run of this job at {first['picking_A']:.0f} A (diameter "
            "given 150 A); this run picks the rest at 150 A (diameter given 150 A)") in err, err
    assert json.loads((root / "External/job012/pixer_picking.json").read_text())["picking_A"] == 150.0


def test_an_estimate_past_the_micrographs_limits_falls_back_to_the_diameter_given():
    """The limits (a particle of at least 10 px, a network image of at most 8192 px) are the diameter given's: an
    estimate that would take the picking diameter past them, where the diameter given is within them, is not used."""
    shape = (4096, 4096)
    assert "upsampled to 9362 x 9362 px" in job._beyond_limits(14.0, 16.0, shape, 1.0)
    assert job._beyond_limits(17.0, 16.0, shape, 1.0) is None  # within the limits
    assert job._beyond_limits(10.0, 9.0, shape, 1.0) is None  # the diameter given is past them: the job says so
    assert "only 9.0 px wide" in job._beyond_limits(9.0, 12.0, (512, 512), 1.0)


def test_continue_with_other_networks_warns(tmp_path, monkeypatch, capsys):
    """A Continue that picks the rest with other networks (another ``model``; ``adapt`` turned on or off) says so,
    as it does for another diameter."""
    from relion_pixer.models import shipped_weights

    root = made_project(tmp_path / "p", n=3, size=384)
    monkeypatch.chdir(root)
    cmd = RELION_CMD.split() + ["--estimate_size", "No"]
    assert job.main(cmd) == 0
    capsys.readouterr()
    first = json.loads((root / "External/job012/pixer_picking.json").read_text())
    assert first["networks"].startswith(shipped_weights().name + " (")
    sorted((root / "External/job012").rglob("*_autopick.star"))[-1].unlink()
    v4 = shipped_weights().with_name("pixer_v4.pt")
    assert job.main(cmd + ["--model", str(v4)]) == 0
    err = capsys.readouterr().err
    assert (f"2 micrograph(s) were picked by an earlier run of this job with other networks ({first['networks']}); "
            f"this run picks the rest with pixer_v4.pt (") in err, err
    assert "at one size" not in err  # the diameter is the same


@pytest.mark.parametrize("start", ["external_job.py", "relion_pixer"])
def test_sigterm_while_the_job_starts_leaves_the_aborted_marker(tmp_path, monkeypatch, start):
    """A SIGTERM that comes while the executable RELION runs (external_job.py, or the ``relion_pixer`` command on
    PATH) is still importing, before the job installs its own handling, still leaves RELION_JOB_EXIT_ABORTED, so
    that RELION does not show the job running. The command gives the caller's handler back when it returns."""
    import signal as _signal

    from relion_pixer import cli

    root = made_project(tmp_path / "p", n=2, size=128)
    monkeypatch.chdir(root)
    launch = ([str(REPO / "external_job.py")] if start == "external_job.py" else
              ["-c", "import sys; from relion_pixer.cli import main; sys.exit(main(sys.argv[1:]))"])
    proc = subprocess.Popen([sys.executable, *launch] + RELION_CMD.split(), cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.25)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    jd = root / "External/job012"
    assert proc.returncode == 2, err
    assert (jd / relion.EXIT_ABORTED).exists() and not (jd / relion.EXIT_SUCCESS).exists()
    before = _signal.getsignal(_signal.SIGTERM)
    assert cli.main(["pick", "--help"]) == 0
    assert _signal.getsignal(_signal.SIGTERM) is before
    assert cli._job_dir(["--o", "External/job001/", "--pipeline_control=External/job001/x/"]) == "External/job001/x/"
    # read as the job reads its options (relion.parse_tolerant), so a SIGTERM while it starts finds the same directory
    for argv in (["pick", "--O", "External/job002/"], ["---o=External/job002/"], ["--in_mics", "m.star", "--o",
                                                                                  "External/job002/", "--j", "2"]):
        assert cli._job_dir(argv) == relion.parse_tolerant(argv, {"o": "value", "in_mics": "value", "j": "value"}
                                                           ).values["o"] == "External/job002/"
    assert cli._job_dir(["--pipeline-control", "External/job004/", "--o", "x/"]) == "External/job004/"
    assert cli._job_dir(["-o", "External/job005/"]) is None  # one dash is not an option to the job either
    # the shim's own copy (it must work when the package cannot be imported) reads them the same
    spec = importlib.util.spec_from_file_location("_external_job_shim", REPO / "external_job.py")
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)  # its main runs only as __main__
    for argv in (["--O", "a/"], ["---o=b/"], ["--o", "c/", "--pipeline_control", "d/"], ["-o", "e/"], ["--o"],
                 ["--o", "--in_mics", "m.star"], ["pick", "--Pipeline-Control=f/"]):
        assert shim._job_dir(argv) == cli._job_dir(argv), argv


def test_crowded_yes_asks_for_the_second_pass_and_run_out_counts_what_it_added(tmp_path, monkeypatch):
    """``crowded`` (the default, Yes) reaches the picker as ``PickParams.repick``, and run.out's summary says how
    many of the particles the second pass found; with ``crowded No``, one pass and no such line."""
    root = made_project(tmp_path / "p", n=3)
    monkeypatch.chdir(root)
    asked = []

    def picker(image, angpix, diameter_A, params):
        asked.append(params.repick)
        result = FakePicker()(image, angpix, diameter_A, params)
        return dataclasses.replace(result, repicked=1 if params.repick else 0)

    for extra in (" --crowded Yes", ""):
        rc, out, err = run(RELION_CMD + extra + " --estimate_size No", pick_fn=picker)
        assert rc == 0, err
        assert asked == [True] * 3
        assert "The second pass (crowded Yes) found 3 of the 12 particles with the first picks masked out" in out
        shutil.rmtree(root / "External")
        asked.clear()
    rc, out, err = run(RELION_CMD + " --crowded No --estimate_size No", pick_fn=picker)
    assert rc == 0, err
    assert asked == [False] * 3 and "second pass" not in out
    assert "  crowded [Yes/No]" in job.HELP
