"""Tests of relion_pixer.evaluate (matching, precision / recall / F1, AP, IoU, CLI)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import starfile

from relion_pixer import evaluate as ev

# ---------------------------------------------------------------------------------------------- matching


def test_perfect_and_shifted_matches():
    true = np.array([[10.0, 10.0], [50.0, 20.0], [30.0, 70.0]])
    m = ev.match_picks(true, true, 5)
    assert (m.tp, m.fp, m.fn) == (3, 0, 0)
    np.testing.assert_array_equal(m.distance, 0)  # exact coincidences count (distance 0)
    pred = true[::-1] + [3.0, 4.0]  # 5 px away each: on the radius (inclusive)
    m = ev.match_picks(pred, true, 5)
    assert m.tp == 3
    np.testing.assert_array_equal(m.true_index, [2, 1, 0])
    np.testing.assert_allclose(m.distance, 5)


def test_just_inside_and_outside_the_radius():
    true = np.array([[100.0, 100.0]])
    assert ev.match_picks([[104.99, 100.0]], true, 5).tp == 1
    assert ev.match_picks([[105.01, 100.0]], true, 5).tp == 0
    assert ev.match_picks([[103.0, 103.9]], true, 5).tp == 1  # 4.93 px
    assert ev.match_picks([[103.0, 104.1]], true, 5).tp == 0  # 5.09 px


def test_duplicates_count_once():
    true = np.array([[10.0, 10.0], [60.0, 60.0]])
    pred = np.array([[10.0, 11.0], [11.0, 10.0], [10.5, 10.5], [60.0, 60.0]])
    m = ev.match_picks(pred, true, 4)
    assert (m.tp, m.fp, m.fn) == (2, 2, 0)
    assert set(m.pred_index) == {2, 3}  # the closest duplicate wins
    s = ev.precision_recall_f1(pred, true, 4)
    assert s.precision == pytest.approx(0.5) and s.recall == 1.0 and s.f1 == pytest.approx(2 / 3)


def test_hungarian_beats_greedy_nearest():
    # greedy nearest-first would pair pick 0 with truth 1 and leave truth 0 unmatched
    true = np.array([[0.0, 0.0], [4.0, 0.0]])
    pred = np.array([[3.0, 0.0], [7.5, 0.0]])
    m = ev.match_picks(pred, true, 4)
    assert m.tp == 2
    np.testing.assert_array_equal(m.true_index, [0, 1])


@pytest.mark.parametrize("n_pred, n_true", [(0, 0), (0, 3), (4, 0)])
def test_empty_inputs(n_pred, n_true):
    pred = np.arange(2 * n_pred, dtype=float).reshape(n_pred, 2) * 10
    true = np.arange(2 * n_true, dtype=float).reshape(n_true, 2) * 10
    m = ev.match_picks(pred, true, 5)
    assert (m.tp, m.n_pred, m.n_true) == (0, n_pred, n_true)
    s = ev.precision_recall_f1(pred, true, 5)
    assert math.isnan(s.precision) == (n_pred == 0)
    assert math.isnan(s.recall) == (n_true == 0)
    assert math.isnan(s.f1) == (n_pred + n_true == 0)
    if n_pred:
        assert s.precision == 0
    if n_true:
        assert s.recall == 0
    # empty lists and None-free empty arrays are accepted
    assert ev.match_picks([], true, 5).n_true == n_true


def test_edge_picks_are_ordinary_points():
    true = np.array([[0.0, 0.0], [1023.0, 511.0]])
    pred = np.array([[-1.5, 0.5], [1023.0, 514.0]])  # coordinates may sit on or beyond the border
    assert ev.match_picks(pred, true, 3).tp == 2


def test_bad_inputs():
    with pytest.raises(ValueError, match="radius"):
        ev.match_picks([[0, 0]], [[0, 0]], 0)
    with pytest.raises(ValueError, match="N x 2"):
        ev.match_picks(np.zeros((3, 3)), [[0, 0]], 1)
    with pytest.raises(ValueError, match="NaN"):
        ev.match_picks([[np.nan, 0]], [[0, 0]], 1)
    with pytest.raises(ValueError, match="scores"):
        ev.average_precision([[0, 0], [1, 1]], [1.0], [[0, 0]], 1)


def test_pooled_over_micrographs():
    preds = [np.array([[10.0, 10.0], [40.0, 40.0]]), np.zeros((0, 2)), np.array([[5.0, 5.0]])]
    trues = [np.array([[10.0, 11.0]]), np.array([[20.0, 20.0], [30.0, 30.0]]), np.array([[5.0, 5.0]])]
    s = ev.pooled_precision_recall_f1(preds, trues, 3)
    assert (s.tp, s.n_pred, s.n_true) == (2, 3, 4)
    assert s.precision == pytest.approx(2 / 3) and s.recall == pytest.approx(0.5)
    assert s.f1 == pytest.approx(2 * 2 / 7)
    # pooling is micro-averaging, not the mean of per-micrograph figures
    per = [ev.precision_recall_f1(p, t, 3).recall for p, t in zip(preds, trues)]
    assert np.mean(per) != pytest.approx(s.recall)
    with pytest.raises(ValueError):
        ev.pooled_precision_recall_f1(preds, trues[:2], 3)


# ---------------------------------------------------------------------------------------------- AP


def test_ap_perfect_ranking_is_one():
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 500, (30, 2))
    fp = true[:10] + 200.0 + rng.uniform(0, 1, (10, 2))  # far from everything? make sure
    fp = fp[[min(np.hypot(*(true - q).T)) > 10 for q in fp]]
    pred = np.concatenate([true + rng.normal(0, 0.5, true.shape), fp])
    score = np.concatenate([np.linspace(1, 0.5, len(true)), np.linspace(0.4, 0.1, len(fp))])
    assert ev.average_precision(pred, score, true, 5) == pytest.approx(1.0)
    # reversing the ranking lowers it
    assert ev.average_precision(pred, -score, true, 5) < 0.9


def test_ap_hand_computed():
    true = np.array([[0.0, 0.0], [100.0, 0.0]])
    pred = np.array([[0.0, 0.0], [50.0, 50.0], [100.0, 0.0], [200.0, 200.0]])
    score = np.array([0.9, 0.8, 0.7, 0.6])
    # ranking: TP, FP, TP, FP -> precision 1, 1/2, 2/3, 1/2 at recall 1/2, 1/2, 1, 1
    # interpolated: 1 at recall 1/2, 2/3 at recall 1 -> AP = 0.5 * 1 + 0.5 * 2/3
    assert ev.average_precision(pred, score, true, 5) == pytest.approx(0.5 + 1 / 3)
    # a missed particle caps recall: only one of two found, ranked first
    assert ev.average_precision(pred[:2], score[:2], true, 5) == pytest.approx(0.5)
    assert ev.average_precision(np.zeros((0, 2)), [], true, 5) == 0.0
    assert math.isnan(ev.average_precision(pred, score, np.zeros((0, 2)), 5))


def test_ap_duplicates_after_the_first_are_false_positives():
    true = np.array([[0.0, 0.0]])
    pred = np.array([[1.0, 0.0], [0.0, 0.0]])
    is_tp = ev.greedy_match_by_score(pred, [0.9, 0.5], true, 3)
    np.testing.assert_array_equal(is_tp, [True, False])  # by score, not by distance
    assert ev.average_precision(pred, [0.9, 0.5], true, 3) == pytest.approx(1.0)
    assert ev.average_precision(pred, [0.5, 0.9], true, 3) == pytest.approx(1.0)


def test_pooled_ap_ranks_across_micrographs():
    preds = [np.array([[0.0, 0.0]]), np.array([[50.0, 50.0]])]
    trues = [np.array([[0.0, 0.0]]), np.array([[0.0, 0.0]])]
    # micrograph 1's false positive outranks micrograph 0's true positive
    ap = ev.pooled_average_precision(preds, [[0.5], [0.9]], trues, 3)
    assert ap == pytest.approx(0.5 * 0.5)
    ap = ev.pooled_average_precision(preds, [[0.9], [0.5]], trues, 3)
    assert ap == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------- IoU


def test_mask_iou():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    assert ev.mask_iou(a, b) == 1.0
    a[:, :4] = True
    b[:, 2:6] = True
    assert ev.mask_iou(a, b) == pytest.approx(20 / 60)
    labels = np.zeros((10, 10), np.uint8)
    labels[:, 2:6] = 1
    labels[:, 8:] = 2  # contamination is not particle
    pred = np.where(a, 1, 0)
    assert ev.mask_iou(pred, labels, label=1) == pytest.approx(20 / 60)
    assert ev.mask_iou(pred, labels) == pytest.approx(20 / 80)
    with pytest.raises(ValueError, match="shape"):
        ev.mask_iou(a, b[:5])


def test_best_mask_at_stride():
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 31.5) ** 2 + (xx - 30.0) ** 2 <= 12.0**2
    np.testing.assert_array_equal(ev.best_mask_at_stride(disc, 1), disc)
    # a disc 24 px across is drawn almost exactly at output stride 4
    assert ev.mask_iou(ev.best_mask_at_stride(disc, 4), disc) > 0.9
    # a line 2 px wide: the cell averages cut at 0.5 lose it, fitted logits draw it (the level set's width is set
    # by the ratio of neighbouring logits)
    line = np.zeros((64, 66), bool)  # not a multiple of the stride: padded, then cropped back
    line[29:31, 8:56] = True
    drawn = ev.best_mask_at_stride(line, 4)
    assert drawn.shape == line.shape and ev.mask_iou(drawn, line) > 0.9
    averaged = ev.best_mask_at_stride(line, 4, steps=0)
    assert ev.mask_iou(averaged, line) < 0.5
    with pytest.raises(ValueError, match="stride"):
        ev.best_mask_at_stride(disc, 0)


def test_particle_ious():
    inst = np.zeros((40, 60), np.int32)
    inst[5:15, 5:15] = 1  # 100 px
    inst[5:15, 15:25] = 2  # touching particle 1
    inst[25:35, 40:50] = 4  # ids need not be consecutive
    pred = np.zeros_like(inst, dtype=bool)
    pred[5:15, 5:25] = True  # 1 and 2 found exactly (a merged blob)
    pred[25:35, 40:45] = True  # half of 4
    pred[21:23, 40:50] = True  # 20 stray pixels 3-4 rows above particle 4 (inside its margin of 4)
    pred[0:2, 50:60] = True  # stray pixels far from everything
    ids, ious = ev.particle_ious(pred, inst, margin_px=4)
    np.testing.assert_array_equal(ids, [1, 2, 4])
    # particles 1 and 2: the neighbour's predicted pixels are ignored, stray pixels far away are outside
    np.testing.assert_allclose(ious[:2], 1.0)
    assert ious[2] == pytest.approx(50 / (100 + 20))
    # with a margin of 2 the stray band (3 px away) is outside the window
    assert ev.particle_ious(pred, inst, margin_px=2)[1][2] == pytest.approx(0.5)
    ids, ious = ev.particle_ious(pred, np.zeros_like(inst))
    assert len(ids) == 0 and len(ious) == 0
    with pytest.raises(ValueError, match="integer"):
        ev.particle_ious(pred, inst.astype(float))


def test_micrograph_key():
    assert ev.micrograph_key("AutoPick/job008/Movies/mic_001_autopick.star") == "mic_001"
    assert ev.micrograph_key("MotionCorr/job002/Movies/mic_001.mrc") == "mic_001"
    assert ev.micrograph_key("coords/061_10028.star") == "061_10028"
    assert ev.micrograph_key("x/mic_manualpick.star") == "mic"
    assert ev.micrograph_key("x/mic_pixer_autopick.star") == "mic"


# ---------------------------------------------------------------------------------------------- CLI


def _write_coords(path, xy, fom=None):
    df = pd.DataFrame({"rlnCoordinateX": xy[:, 0], "rlnCoordinateY": xy[:, 1]})
    if fom is not None:
        df["rlnAutopickFigureOfMerit"] = fom
    path.parent.mkdir(parents=True, exist_ok=True)
    starfile.write(df, path, overwrite=True)


def _project(tmp_path):
    """A RELION-like project: truth/ and AutoPick/job001/{autopick.star, Movies/*_autopick.star}."""
    truth = {
        "mic_a": np.array([[10.0, 10.0], [50.0, 50.0], [90.0, 90.0]]),
        "mic_b": np.array([[20.0, 20.0]]),
        "mic_c": np.array([[5.0, 5.0]]),  # not picked
    }
    for k, xy in truth.items():
        _write_coords(tmp_path / "truth" / f"{k}.star", xy)
    picks = {
        "mic_a": (np.array([[11.0, 10.0], [50.0, 52.0], [200.0, 200.0]]), np.array([0.9, 0.8, 0.95])),
        "mic_b": (np.array([[20.0, 20.0], [21.0, 20.0]]), np.array([0.7, 0.3])),
    }
    job = tmp_path / "AutoPick" / "job001"
    rows = []
    for k, (xy, fom) in picks.items():
        _write_coords(job / "Movies" / f"{k}_autopick.star", xy, fom)
        rows.append({"rlnMicrographName": f"MotionCorr/job002/Movies/{k}.mrc",
                     "rlnMicrographCoordinates": f"AutoPick/job001/Movies/{k}_autopick.star"})
    starfile.write({"coordinate_files": pd.DataFrame(rows)}, job / "autopick.star", overwrite=True)
    return tmp_path, job


def test_cli_autopick_star(tmp_path, monkeypatch, capsys):
    root, job = _project(tmp_path)
    monkeypatch.chdir(root)
    out = root / "scores.json"
    rc = ev.main(["--picks", "AutoPick/job001/autopick.star", "--truth", "truth", "--diameter", "8", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr()
    assert "mic_a" in text.out and "pooled" in text.out
    assert "without picks" in text.err
    res = json.loads(out.read_text())
    assert res["radius"] == 4.0
    per = {r["micrograph"]: r for r in res["micrographs"]}
    assert set(per) == {"mic_a", "mic_b"}
    assert (per["mic_a"]["tp"], per["mic_a"]["n_pred"], per["mic_a"]["n_true"]) == (2, 3, 3)
    assert (per["mic_b"]["tp"], per["mic_b"]["n_pred"]) == (1, 2)
    p = res["pooled"]
    assert (p["tp"], p["n_pred"], p["n_true"]) == (3, 5, 4)
    assert p["precision"] == pytest.approx(0.6) and p["recall"] == pytest.approx(0.75)
    # pooled ranking: 0.95 FP, 0.9 TP, 0.8 TP, 0.7 TP, 0.3 FP; 4 truths
    assert p["average_precision"] == pytest.approx(0.75 * 0.75)
    # centring: matched picks lie 1 and 2 px (mic_a) and 0 px (mic_b) from their true centres
    assert per["mic_a"]["median_distance"] == pytest.approx(1.5) and per["mic_b"]["median_distance"] == 0.0
    assert p["median_distance"] == pytest.approx(1.0)
    assert "dist" in text.out

    # run from elsewhere: paths resolve through --project_dir or, failing that, the job's project
    monkeypatch.chdir(tmp_path / "truth")
    for extra in (["--project_dir", str(root)], []):
        rc = ev.main(["--picks", str(job / "autopick.star"), "--truth", str(root / "truth"), "--radius", "4",
                      "--json", str(out), *extra])
        assert rc == 0
        assert json.loads(out.read_text())["pooled"]["tp"] == 3


def test_a_particles_star_is_split_by_micrograph(tmp_path, capsys):
    """An Extract / Select / Class2D particles STAR holds every micrograph in one table: it is read per micrograph
    (it had been taken for one micrograph named after the file, so a pick on one micrograph matched a truth on
    another)."""
    def particles(path, rows):
        df = pd.DataFrame(rows, columns=["rlnCoordinateX", "rlnCoordinateY", "rlnMicrographName"])
        path.parent.mkdir(parents=True, exist_ok=True)
        starfile.write({"particles": df}, path, overwrite=True)

    particles(tmp_path / "picks" / "particles.star",
              [(100.0, 100.0, "MotionCorr/job002/Movies/micB.mrc"), (40.0, 40.0, "MotionCorr/job002/Movies/micA.mrc"),
               (300.0, 300.0, "MotionCorr/job002/Movies/micA.mrc")])
    particles(tmp_path / "truth" / "particles.star",
              [(100.0, 100.0, "MotionCorr/job002/Movies/micA.mrc"), (41.0, 40.0, "MotionCorr/job002/Movies/micA.mrc"),
               (7.0, 7.0, "MotionCorr/job002/Movies/micB.mrc")])
    picks = ev.read_picks(tmp_path / "picks" / "particles.star")
    assert sorted(picks) == ["micA", "micB"]
    assert ev.read_coordinates(picks["micA"])[0].tolist() == [[40.0, 40.0], [300.0, 300.0]]
    out = tmp_path / "s.json"
    assert ev.main(["--picks", str(tmp_path / "picks" / "particles.star"), "--truth",
                    str(tmp_path / "truth" / "particles.star"), "--radius", "10", "--json", str(out)]) == 0
    per = {r["micrograph"]: r for r in json.loads(out.read_text())["micrographs"]}
    assert (per["micA"]["tp"], per["micA"]["n_pred"], per["micA"]["n_true"]) == (1, 2, 2)
    assert (per["micB"]["tp"], per["micB"]["n_pred"], per["micB"]["n_true"]) == (0, 1, 1)


def test_picks_of_a_job_written_with_a_plain_output_folder_resolve_from_anywhere(tmp_path, monkeypatch):
    """``relion_pixer ... --o out/`` lists ``out/...`` paths relative to where it ran, the list's own parent: found
    from another directory too; a RELION 3.1 ``coords_suffix_*.star`` reads as its job directory."""
    from relion_pixer import io

    run_dir = tmp_path / "work"
    _write_coords(run_dir / "out" / "Micrographs" / "mic_a_autopick.star", np.array([[10.0, 10.0]]), np.ones(1))
    io.write_coordinate_files_star(run_dir / "out" / "autopick.star", ["Micrographs/mic_a.mrc"],
                                   ["out/Micrographs/mic_a_autopick.star"])
    _write_coords(tmp_path / "truth" / "mic_a.star", np.array([[11.0, 10.0]]))
    out = tmp_path / "s.json"
    for cwd in (tmp_path, run_dir / "out"):
        monkeypatch.chdir(cwd)
        assert ev.main(["--picks", str(run_dir / "out" / "autopick.star"), "--truth", str(tmp_path / "truth"),
                        "--radius", "4", "--json", str(out)]) == 0
        assert json.loads(out.read_text())["pooled"]["tp"] == 1
    (run_dir / "out" / "coords_suffix_pixer.star").write_text("CtfFind/job003/micrographs_ctf.star\n")
    assert sorted(ev.read_picks(run_dir / "out" / "coords_suffix_pixer.star")) == ["mic_a"]


def test_cli_errors_name_the_file_or_the_option(tmp_path, monkeypatch, capsys):
    root, job = _project(tmp_path)
    monkeypatch.chdir(root)
    assert ev.main(["--picks", str(job / "autopick.star"), "--truth", "truth", "--diameter", "0"]) == 2
    assert "--diameter must be positive" in capsys.readouterr().err
    # --json into a folder that does not exist: one line, after the table, and no file
    assert ev.main(["--picks", str(job / "autopick.star"), "--truth", "truth", "--radius", "4", "--json",
                    "nodir/s.json"]) == 2
    assert "cannot write nodir/s.json" in capsys.readouterr().err and not (root / "nodir").exists()
    (job / "Movies" / "mic_a_autopick.star").write_text("data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n10 abc\n")
    assert ev.main(["--picks", str(job / "autopick.star"), "--truth", "truth", "--radius", "4"]) == 2
    err = capsys.readouterr().err
    assert "mic_a_autopick.star: _rlnCoordinateY is not a finite number in 1 row(s)" in err and "'abc'" in err


def test_cli_options(tmp_path, monkeypatch, capsys):
    root, job = _project(tmp_path)
    monkeypatch.chdir(root)
    out = root / "s.json"
    # --min_fom drops the low-scoring duplicate in mic_b and the 0.8 pick in mic_a
    assert ev.main(["--picks", str(job / "autopick.star"), "--truth", "truth", "--radius", "4", "--min_fom", "0.85",
                    "--json", str(out)]) == 0
    p = json.loads(out.read_text())["pooled"]
    assert (p["tp"], p["n_pred"]) == (1, 2)
    # --all_truth counts the unpicked micrograph
    assert ev.main(["--picks", str(job / "autopick.star"), "--truth", "truth", "--radius", "4", "--all_truth",
                    "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["pooled"]["n_true"] == 5 and res["pooled"]["n_micrographs"] == 3
    mic_c = [r for r in res["micrographs"] if r["micrograph"] == "mic_c"][0]
    assert mic_c["precision"] is None and mic_c["recall"] == 0.0  # NaN written as null
    # a directory of per-micrograph files works as picks (searched recursively, RELION's job files skipped)
    for d in (job / "Movies", job):
        assert ev.main(["--picks", str(d), "--truth", "truth", "--radius", "4", "--json", str(out)]) == 0
        res = json.loads(out.read_text())
        assert res["pooled"]["tp"] == 3 and res["pooled"]["n_micrographs"] == 2
    # errors
    capsys.readouterr()
    with pytest.raises(SystemExit):
        ev.main(["--picks", str(job / "autopick.star"), "--truth", "truth"])  # no radius
    assert ev.main(["--picks", str(root / "nope.star"), "--truth", "truth", "--radius", "4"]) == 2
    (root / "empty").mkdir()
    (root / "empty" / "mic_a.box").write_text("10 10 8 8\n")
    assert ev.main(["--picks", str(job / "autopick.star"), "--truth", str(root / "empty"), "--radius", "4"]) == 2
    assert "empty: no coordinate STAR files in it (it has .box files; only RELION coordinate STAR files are read)" in \
        capsys.readouterr().err
    # a coordinate-file list (a ManualPick job's manualpick.star) as truth; RELION's job files in a truth directory
    # are not micrographs
    assert ev.main(["--picks", str(job / "autopick.star"), "--truth", str(job / "autopick.star"), "--radius", "4",
                    "--json", str(out)]) == 0
    p = json.loads(out.read_text())["pooled"]
    assert p["tp"] == p["n_pred"] == p["n_true"] == 5
    for name in ("RELION_OUTPUT_NODES.star", "local_selection.star", "micrographs_selected.star"):
        (root / "truth" / name).write_text("data_\nloop_\n_rlnMicrographName\nmic_z.mrc\n")
    assert ev.main(["--picks", str(job / "autopick.star"), "--truth", "truth", "--radius", "4", "--all_truth",
                    "--json", str(out)]) == 0
    assert json.loads(out.read_text())["pooled"]["n_micrographs"] == 3


@pytest.mark.shared
def test_cli_on_shared_truth_against_itself(shared_data, tmp_path, capsys):
    coords = shared_data / "real" / "empiar10028_ribosome80S" / "coords"
    out = tmp_path / "self.json"
    assert ev.main(["--picks", str(coords), "--truth", str(coords), "--diameter", "56", "--json", str(out)]) == 0
    p = json.loads(out.read_text())["pooled"]
    assert p["n_micrographs"] == 10 and p["n_true"] == 865
    assert p["precision"] == 1.0 and p["recall"] == 1.0


@pytest.mark.shared
def test_reads_relion_autopick_star(shared_data):
    job = shared_data / "relion" / "relion5_tutorial_project" / "AutoPick" / "job008"
    picks = ev.read_picks(job / "autopick.star", project_dir=job.parents[1])
    assert len(picks) == 10
    assert "20170629_00021_frameImage" in picks
    xy, fom = ev.read_coordinates(picks["20170629_00021_frameImage"])
    assert xy.shape[1] == 2 and len(xy) > 10 and fom is not None and len(fom) == len(xy)
    assert xy[0] == pytest.approx([1614.217657, 112.882354])


def test_a_coordinate_list_reads_names_as_the_picking_job_writes_them(tmp_path):
    """Names with # or a quote inside, as the picking job writes them into autopick.star, read back whole."""
    from relion_pixer import io

    names = ["M/hash#1.mrc", "M/o'brien.mrc", "M/with space.mrc"]
    coords = [f"job/M/{ev.micrograph_key(n)}_autopick.star" for n in names]
    (tmp_path / "job" / "M").mkdir(parents=True)
    for c, xy in zip(coords, ([10.0, 20.0], [30.0, 40.0], [50.0, 60.0])):
        io.write_coordinates_star(tmp_path / c, np.array([xy]), np.ones(1))
    io.write_coordinate_files_star(tmp_path / "job" / "autopick.star", names, coords)
    picks = ev.read_picks(tmp_path / "job" / "autopick.star", project_dir=tmp_path)
    assert sorted(picks) == ["hash#1", "o'brien", "with space"]
    assert ev.read_coordinates(picks["o'brien"])[0].tolist() == [[30.0, 40.0]]


def test_matched_filter_dprime_white_noise_matches_theory():
    rng = np.random.default_rng(0)
    n, d, a, sd = 512, 30, 0.2, 2.0
    yy, xx = np.mgrid[:n, :n]
    xy = np.array([[120.0, 130.0], [380.0, 300.0]])
    signal = sum(a * (np.hypot(xx - x, yy - y) <= d / 2) for x, y in xy)
    noise = sd * rng.standard_normal((n, n))
    box = 2 * d
    dp = ev.matched_filter_dprime(signal, noise, xy, box, mask_radius=0.75 * d, rng=rng)
    # white noise: d'^2 = (sum s^2 - (sum s)^2 / box^2) / sd^2 (the box mean is left out)
    disc = a * (np.hypot(*(np.mgrid[:box, :box] - box // 2)) <= d / 2)
    expected = math.sqrt(((disc**2).sum() - disc.sum() ** 2 / box**2) / sd**2)
    np.testing.assert_allclose(dp, expected, rtol=0.1)
    # twice the noise amplitude halves d'; low-passed noise of the same variance leaves the disc's sharp edge in a
    # nearly noise-free band, which the prewhitened filter exploits
    np.testing.assert_allclose(ev.matched_filter_dprime(signal, 2 * noise, xy, box, 0.75 * d), dp / 2, rtol=0.15)
    from scipy.ndimage import gaussian_filter

    low = gaussian_filter(noise, 4.0)
    low *= sd / low.std()
    assert (ev.matched_filter_dprime(signal, low, xy, box, 0.75 * d) > 2 * dp).all()
    # boxes off the particle see less of it: a mask just covering the disc loses most of it 12 px away
    off = ev.matched_filter_dprime(signal, noise, xy + 12.0, box, d / 2 + 1, rng=np.random.default_rng(0))
    on = ev.matched_filter_dprime(signal, noise, xy, box, d / 2 + 1, rng=np.random.default_rng(0))
    assert (off < 0.8 * on).all()
    # a centre outside the image is an error, not a wrapped box
    with pytest.raises(ValueError, match="inside"):
        ev.matched_filter_dprime(signal, noise, [[-5.0, 10.0]], box)
    with pytest.raises(ValueError, match="one shape"):
        ev.matched_filter_dprime(signal, noise[:10], xy, box)
    with pytest.raises(ValueError, match="box"):
        ev.matched_filter_dprime(signal, noise, xy, 1000)


def test_median_distance_pools_matches_and_is_nan_without_one():
    from relion_pixer.evaluate import match_picks, median_distance

    truth = np.array([[10.0, 10.0], [50.0, 50.0], [90.0, 90.0]])
    a = match_picks(np.array([[11.0, 10.0], [50.0, 53.0]]), truth, 5.0)  # distances 1 and 3
    b = match_picks(np.array([[90.0, 92.0]]), truth, 5.0)  # distance 2
    none = match_picks(np.zeros((0, 2)), truth, 5.0)
    assert median_distance([a]) == pytest.approx(2.0)
    assert median_distance([a, b, none]) == pytest.approx(2.0)
    assert median_distance([b, none]) == pytest.approx(2.0)
    assert np.isnan(median_distance([none])) and np.isnan(median_distance([]))
