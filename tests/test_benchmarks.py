"""The multi-set real benchmark runs on a reduced set: a set folder with a metadata file and nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from relion_pixer import io
from relion_pixer.simulate import random_config, simulate_micrograph

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    for name in ("common", "bench_real"):
        sys.modules.pop(name, None)
    import bench_real
    import common

    yield common, bench_real
    for name in ("common", "bench_real"):
        sys.modules.pop(name, None)


def _write_set(root: Path, n: int = 3, name: str = "sim_globular", drop_every: int = 0) -> None:
    """A small 'real' set made by the simulator: micrographs, coordinates and its pixer_set.toml; ``drop_every`` k
    leaves every k-th particle unlabelled (labels_complete false), as a labeller who missed some."""
    folder = root / name
    (folder / "micrographs").mkdir(parents=True)
    (folder / "coords").mkdir()
    rng = np.random.default_rng(31337)
    names = []
    for i in range(n):
        cfg = random_config(rng, snr=1.0, particle_diameter_px=48.0, families="globular", empty=False, n_ice=0,
                            carbon_edge=False, density=0.2, angpix=2.0)
        sim = simulate_micrograph(rng, shape=(384, 384), **cfg)
        mic = f"mic{i}"
        names.append(mic)
        mrcfile.write(str(folder / "micrographs" / f"{mic}.mrc"), sim.image.astype(np.float32), voxel_size=2.0)
        xy = np.asarray(sim.coords).reshape(-1, 2)
        if drop_every:
            xy = xy[np.arange(len(xy)) % drop_every != 0]
        io.write_coordinates_star(folder / "coords" / f"{mic}.star", xy, np.ones(len(xy)))
    (folder / "pixer_set.toml").write_text(
        f'title = "simulated globular"\nangpix = 2.0\ndiameter_A = 96.0\nlabels_complete = {str(not drop_every).lower()}\n'
        f'[split]\ntrain = ["{names[0]}"]\nvalid = ["{names[1]}"]\ntest = {names[2:]!r}\n'.replace("'", '"'))
    (root / "no_metadata").mkdir(exist_ok=True)  # a folder without a metadata file is skipped


def test_the_multi_set_benchmark_runs_on_a_set_given_by_its_metadata_file(tmp_path, monkeypatch, bench_modules):
    common, bench_real = bench_modules
    _write_set(tmp_path)
    monkeypatch.setattr(common, "REAL_ROOT", tmp_path)
    monkeypatch.setattr(bench_real, "SWEEP", (1.0, 1.25))
    sets = common.real_sets()
    assert [s.name for s in sets] == ["sim_globular"] and sets[0].radius_px == 24.0
    from relion_pixer.models import load_pretrained
    from relion_pixer.pipeline import PickParams

    r = bench_real.bench_set(sets[0], load_pretrained(), PickParams(), "test", estimate=True, sweep=True,
                             gallery_dir=tmp_path / "gallery")
    assert r["pixer"]["truth"] > 5 and r["pixer"]["f1"] > 0.5, r["pixer"]
    assert (tmp_path / "gallery" / "sim_globular_test_unmatched.png").stat().st_size > 1000
    assert r["pixer"]["median_distance_px"] < 0.25 * r["radius_px"]  # simulated centres: picks well centred
    assert 0.0 <= r["average_precision"]["fom"] <= 1.0 and 0.0 <= r["average_precision"]["map_score"] <= 1.0
    assert set(r["sweep"]) == {"1", "1.25"} and r["sweep_f1_spread"] >= 0.0
    assert 0.5 * 96 < r["diameter_picked_at_A"] < 1.8 * 96
    pooled = bench_real.pooled([r["pixer"], r["log"]])
    assert pooled["truth"] == 2 * r["pixer"]["truth"]


def test_a_metadata_file_without_a_diameter_is_a_clear_error(tmp_path, monkeypatch, bench_modules):
    common, _ = bench_modules
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "pixer_set.toml").write_text('angpix = 2.0\n[split]\ntest = ["a"]\n')
    monkeypatch.setattr(common, "REAL_ROOT", tmp_path)
    with pytest.raises(SystemExit, match="pixer_set.toml: missing 'diameter_A'"):
        common.real_sets()


def test_the_blob_size_benchmark_measures_the_area_equivalent_diameter_of_isolated_blobs(monkeypatch):
    """Two isolated disks of radius 10 px count (diameter 20 px); two touching disks hold two centres and do not."""
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("bench_size_blobs", None)
    import bench_size_blobs

    yy, xx = np.mgrid[:200, :200]
    prob = np.zeros((200, 200), np.float32)
    for cx, cy in ((40, 40), (150, 50), (60, 150), (78, 150)):  # the last two overlap into one region
        prob[(xx - cx) ** 2 + (yy - cy) ** 2 <= 10.0 ** 2] = 0.9
    monkeypatch.setattr(bench_size_blobs, "segment_micrograph", lambda *a, **k: (None, prob, (1.0, 1.0)))
    monkeypatch.setattr(bench_size_blobs.picking, "pick_centres", lambda *a, **k: bench_size_blobs.picking.PickResult(
        np.array([[40.0, 40.0], [150.0, 50.0], [60.0, 150.0], [78.0, 150.0]]), np.full(4, 0.9)))

    class Mic:
        image, angpix = None, 1.0

    d = bench_size_blobs.blob_diameters([Mic()], 100.0, models=None, level=0.5)
    assert len(d) == 2
    assert np.allclose(d, 2.0 * np.sqrt(np.count_nonzero((xx - 40) ** 2 + (yy - 40) ** 2 <= 100) / np.pi))
    assert abs(d[0] - 20.0) < 0.5


def test_on_crisp_masks_the_jobs_confidence_follows_their_size_and_the_peak_does_not(monkeypatch):
    """Maps of sure, crisp discs (what the networks draw on clean particles) at three sizes: the job's confidence, a
    Gaussian-smoothed score, rises with the discs' size, while the map's own peak reads them all equally sure; the
    plateau's middle is the geometric middle of the scales within reach of the highest peak."""
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("bench_size_confidence", None)
    import bench_size_confidence as bsc

    from relion_pixer import NET_DIAMETER_PX

    yy, xx = np.mgrid[:256, :256]
    rows = []
    for radius in (0.3 * NET_DIAMETER_PX, 0.4 * NET_DIAMETER_PX, 0.5 * NET_DIAMETER_PX):
        prob = np.full((256, 256), 1e-3, np.float32)
        for cx in (64, 128, 192):
            for cy in (64, 128, 192):
                prob[(xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2] = 0.99999
        rows.append(bsc.measures(prob))
    assert rows[0]["job"] < rows[1]["job"] < rows[2]["job"]
    assert all(r["candidates"] == 9 for r in rows)
    assert max(r["peak"] for r in rows) - min(r["peak"] for r in rows) < 1e-6
    curve = {0.8: {"job": 1.0, "narrow": 1.0, "peak": 5.0}, 1.0: {"job": 2.0, "narrow": 3.0, "peak": 9.0},
             1.25: {"job": 1.5, "narrow": 1.0, "peak": 8.95}, 1.5: {"job": 0.5, "narrow": 0.0, "peak": 8.0}}
    s = bsc.summary(curve)
    assert s["best_job"] == 1.0 and s["best_peak"] == 1.0 and s["peak_plateau"] == [1.0, 1.25]
    assert s["peak_plateau_middle"] == pytest.approx(np.sqrt(1.25))


def test_the_decision_benchmark_tells_carbon_ice_and_aggregates_apart(monkeypatch):
    """The kind map covers exactly the simulator's contamination label and finds each kind the micrograph holds:
    carbon on one side of the film's edge, ice blobs and aggregates elsewhere."""
    import copy

    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("bench_decision", None)
    import bench_decision as bd

    rng = np.random.default_rng(4)
    cfg = random_config(rng, snr=0.5, particle_diameter_px=24.0, families="globular", empty=False, n_ice=3,
                        n_aggregates=2, carbon_edge=True, angpix=2.0)
    state = copy.deepcopy(rng)
    sim = simulate_micrograph(rng, shape=(384, 384), **cfg)
    kinds = bd.kind_map(sim, state, cfg)
    assert np.array_equal(kinds > 0, sim.labels == 2)
    present = {bd.KINDS[k - 1] for k in np.unique(kinds[kinds > 0])}
    assert present == set(bd.KINDS), present
    carbon = kinds == bd.KINDS.index("carbon") + 1
    assert 0.05 < carbon.mean() < 0.6  # the film covers 10-40 % of the micrograph


def test_the_profile_size_is_the_halo_outside_a_solid_or_hollow_particle_whatever_the_diameter_given(monkeypatch):
    """Noisy dark particles of radius 20 px with a bright ring at 20-24 px: the halo (radius 22 px) is found from a
    solid disc's dark centre and from a hollow shell's dark rim, at diameters given 0.8x-1.25x."""
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("bench_size_profile", None)
    import bench_size_profile as bsp

    yy, xx = np.mgrid[:400, :400]
    rng = np.random.default_rng(5)
    centres = np.array([(x, y) for x in range(60, 341, 90) for y in range(60, 341, 90)], float)

    def images(shell: bool):
        out = []
        for _ in range(3):
            img = rng.normal(0.0, 3.0, (400, 400))
            for cx, cy in centres:
                r = np.hypot(xx - cx, yy - cy)
                img -= ((r < 20) & ((r >= 14) if shell else True)) * 1.0
                if shell:
                    img -= (r < 14) * 0.3  # the shell's top and bottom: a lighter centre than the rim
                img += ((r >= 20) & (r < 24)) * 0.5
            out.append(img)
        return out

    for shell in (False, True):
        imgs = images(shell)
        for given in (32.0, 40.0, 50.0):
            r, p, n = bsp.mean_profile(imgs, [centres] * 3, given, 1.0)
            assert n == 3 * len(centres)
            assert abs(bsp.halo_diameter(r, p, given) - 44.0) < 3.0, (shell, given)


def test_set_model_items_name_a_real_set_and_a_file(tmp_path, monkeypatch, bench_modules, capsys):
    """``--set_model SET=FILE`` (the leave-one-set-out benchmarks): a mapping, or a parser error naming the sets."""
    import argparse

    common, _ = bench_modules
    _write_set(tmp_path)
    monkeypatch.setattr(common, "REAL_ROOT", tmp_path)
    ap = argparse.ArgumentParser()
    common.add_set_model_argument(ap)
    args = ap.parse_args(["--set_model", "sim_globular=runs/a/model.pt"])
    assert common.read_set_models(ap, args.set_model) == {"sim_globular": "runs/a/model.pt"}
    assert common.read_set_models(ap, []) == {}
    for bad in ("sim_globular", "sim_globular=", "other=runs/a/model.pt"):
        with pytest.raises(SystemExit):
            common.read_set_models(ap, [bad])
        assert "--set_model takes SET=FILE with SET one of ['sim_globular']" in capsys.readouterr().err


def test_leave_one_set_out_scores_a_set_with_incomplete_labels_against_completed_ones(tmp_path, monkeypatch,
                                                                                      bench_modules):
    """loso.py on two small sets under the real sets' names: the one with a third of its labels dropped also gets
    each model's F1 against the labels completed with the models' particle-like picks, which reads higher; the same
    networks given as a variant change nothing, on these micrographs or drawn again."""
    import json

    from relion_pixer.models import shipped_weights

    common, _ = bench_modules
    _write_set(tmp_path, name="empiar10028_ribosome80S", drop_every=3)
    _write_set(tmp_path, name="empiar10146_apoferritin")
    monkeypatch.setattr(common, "REAL_ROOT", tmp_path)
    sys.modules.pop("loso", None)
    import loso

    out = tmp_path / "loso.json"
    weights = str(shipped_weights())
    monkeypatch.setattr(sys, "argv", ["loso.py", "--ribosome_only", weights, "--apoferritin_only", weights,
                                      "--variant", f"same={weights},{weights}", "--threads", "1", "--json", str(out)])
    loso.main()
    sets = json.loads(out.read_text())["sets"]
    for row in sets.values():  # the same networks as a variant: no change, and none over micrographs drawn again
        assert row["same_change"] == 0 and row["same_change_interval"] == [0.0, 0.0]
    incomplete, complete = sets["empiar10028_ribosome80S"], sets["empiar10146_apoferritin"]
    for key in ("v4", "apoferritin_only", "v12"):
        assert incomplete[key]["completed_f1"] > incomplete[key]["f1"] + 0.05, incomplete[key]
    assert all("completed_f1" not in complete[key] for key in ("v4", "ribosome_only", "v12"))


def test_networks_that_never_saw_a_set_are_trained_on_every_other_sets_train_split_and_loso_scores_any_set(
        tmp_path, monkeypatch, bench_modules):
    """loso_train.py writes, for each set, the recipe's real data as the other sets' train splits (a third set needs
    no code); loso.py scores a set named by --set_model, with a variant read from a folder of such runs."""
    import json

    from relion_pixer.models import shipped_weights

    common, _ = bench_modules
    for name in ("set_a", "set_b", "set_c"):
        _write_set(tmp_path, name=name)
    monkeypatch.setattr(common, "REAL_ROOT", tmp_path)
    for mod in ("loso_train", "loso"):
        sys.modules.pop(mod, None)
    import loso
    import loso_train

    runs = tmp_path / "runs"
    loso_train.main(["--out", str(runs), "--dry_run"])
    for left_out in ("set_a", "set_b", "set_c"):
        rec = json.loads((runs / left_out / "loso.json").read_text())
        assert rec["left_out"] == left_out and rec["recipe"].endswith("two_real_sets_v12.toml")
        others = sorted({"set_a", "set_b", "set_c"} - {left_out})
        assert [Path(e["coords"]).parent.name for e in rec["real"]] == others
        assert all([Path(m).name for m in e["micrographs"]] == ["mic0.mrc"] for e in rec["real"])  # train only
        assert not (runs / left_out / "model.pt").exists()
    with pytest.raises(SystemExit):
        loso_train.main(["--out", str(runs), "--sets", "nope", "--dry_run"])
    # one simulated replay shared by the runs of a recipe, never over a run's own
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "sim_train.pt").write_bytes(b"replay")
    (runs / "set_b" / "sim_train.pt").write_bytes(b"own")
    loso_train.main(["--out", str(runs), "--sim_cache", str(cache), "--dry_run"])
    assert [(runs / s / "sim_train.pt").read_bytes() for s in ("set_a", "set_b", "set_c")] == [b"replay", b"own", b"replay"]

    weights = str(shipped_weights())
    (runs / "set_c" / "model.pt").symlink_to(weights)
    out = tmp_path / "loso.json"
    monkeypatch.setattr(sys, "argv", ["loso.py", "--set_model", f"set_c={weights}", "--variant", f"same={runs}",
                                      "--threads", "1", "--json", str(out)])
    loso.main()
    row = json.loads(out.read_text())["sets"]["set_c"]
    assert set(json.loads(out.read_text())["sets"]) == {"set_c"}
    assert row["unseen_model"] == "loso" and row["same_change"] == 0 and row["loso"]["f1"] > 0.5


def test_the_f1_change_interval_is_zero_for_the_same_picks_and_follows_a_gain_that_every_micrograph_shows(
        bench_modules):
    """The paired bootstrap over micrographs: the same picks twice change nothing; picks that find one more true
    particle on every micrograph gain on every draw; a gain on one micrograph only spans zero."""
    common, _ = bench_modules
    rng = np.random.default_rng(3)
    mics = [common.Micrograph(f"m{i}", np.zeros((8, 8)), 1.0, rng.uniform(0, 500, size=(10, 2))) for i in range(6)]
    half = [(m.truth[:5], np.ones(5)) for m in mics]
    more = [(m.truth[:6], np.ones(6)) for m in mics]
    one = [(m.truth[:9] if i == 0 else m.truth[:5], np.ones(9 if i == 0 else 5)) for i, m in enumerate(mics)]
    assert common.f1_change_interval(half, half, mics, 2.0) == (0.0, 0.0)
    lo, hi = common.f1_change_interval(half, more, mics, 2.0)
    assert 0 < lo <= hi  # every draw gains: F1 2 x 6 / 16 against 2 x 5 / 15
    assert lo == pytest.approx(12 / 16 - 10 / 15) and hi == pytest.approx(lo)
    lo, hi = common.f1_change_interval(half, one, mics, 2.0)
    assert lo == pytest.approx(0.0) and hi > 0.02  # a draw without micrograph 0 gains nothing


def test_score_pools_the_counts_and_the_centring_of_the_matched_picks(bench_modules):
    common, _ = bench_modules
    truth = np.array([[10.0, 10.0], [50.0, 50.0], [90.0, 90.0]])
    mics = [common.Micrograph("a", np.zeros((8, 8)), 1.0, truth), common.Micrograph("b", np.zeros((8, 8)), 1.0, truth[:1])]
    picks = [(truth + [[1.0, 0.0], [0.0, 3.0], [40.0, 0.0]], np.ones(3)), (truth[:1] + [[0.0, 2.0]], np.ones(1))]
    s = common.score(picks, mics, 5.0)
    assert (s["picks"], s["truth"]) == (4, 4)
    assert s["precision"] == s["recall"] == s["f1"] == pytest.approx(0.75)
    assert s["median_distance_px"] == pytest.approx(2.0)  # of 1, 3 and 2 px
    assert np.isnan(common.score([(np.zeros((0, 2)), np.zeros(0))], mics[:1], 5.0)["median_distance_px"])


def test_binned_micrographs_keep_each_label_on_its_particle(bench_modules):
    """``bench_real.py --bin``: means over bins, pixel size times the factor, and a label at the centre of a particle
    stays at its centre in binned pixels (pixel centres at integers, as the coordinates)."""
    common, _ = bench_modules
    image = np.zeros((10, 13), np.float32)
    image[4:8, 4:8] = 1.0  # a 4 px particle centred at (5.5, 5.5)
    m = common.Micrograph("a", image, 1.5, np.array([[5.5, 5.5]]))
    (b,) = common.binned([m], 2)
    assert b.image.shape == (5, 6) and b.angpix == 3.0  # the 13th column does not fill a bin
    np.testing.assert_allclose(b.image[2:4, 2:4], 1.0)  # the particle: binned pixels 2-3, centre 2.5
    np.testing.assert_allclose(b.truth, [[2.5, 2.5]])
    assert common.binned([m], 1)[0] is m
    with pytest.raises(ValueError, match="whole number >= 1"):
        common.binned([m], 0)


def test_an_ensemble_of_one_network_twice_picks_as_the_network_and_missing_members_are_named(tmp_path, monkeypatch,
                                                                                            bench_modules):
    """bench_ensemble.py on two small sets under the real sets' names: the mean of a network's logits with its own
    picks exactly as the network alone; an ensemble of two different networks is judged by the rule; a member whose
    file is missing stops the run with its path."""
    import json
    import shutil

    from relion_pixer.models import shipped_weights

    common, _ = bench_modules
    _write_set(tmp_path, name="empiar10028_ribosome80S", drop_every=3)
    _write_set(tmp_path, name="empiar10146_apoferritin")
    monkeypatch.setattr(common, "REAL_ROOT", tmp_path)
    runs = tmp_path / "runs"
    v4 = shipped_weights().with_name("pixer_v4.pt")
    for folder, weights in (("loso_apoferritin_only", shipped_weights()), ("loso_ribosome_only", shipped_weights()),
                            ("loso_apoferritin_only_seed1", v4), ("loso_ribosome_only_seed1", v4)):
        (runs / folder).mkdir(parents=True)
        shutil.copy(weights, runs / folder / "model.pt")
    sys.modules.pop("bench_ensemble", None)
    import bench_ensemble

    out = tmp_path / "ensemble.json"
    argv = ["bench_ensemble.py", "--runs", str(runs), "--threads", "1", "--ensemble", "twice=base,base",
            "--ensemble", "seeds=base,seed1", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    bench_ensemble.main()
    result = json.loads(out.read_text())
    for name, row in result["sets"].items():
        assert row["twice"]["f1"] == row["base"]["f1"] and row["twice"]["picks"] == row["base"]["picks"], name
    assert result["verdicts"]["twice"]["changes"] == [0.0, 0.0] and not result["verdicts"]["twice"]["carries_over"]
    assert set(result["verdicts"]) == {"twice", "seeds"}
    assert "completed_f1" in result["sets"]["empiar10028_ribosome80S"]["seeds"]
    monkeypatch.setattr(sys, "argv", argv[:-2] + ["--ensemble", "more=base,jitter"])
    with pytest.raises(SystemExit, match="loso_apoferritin_only_jitter/model.pt"):
        bench_ensemble.main()


def test_a_map_of_one_scale_is_the_jobs_and_three_scales_keep_its_grid(tmp_path, monkeypatch, bench_modules):
    """bench_scales.multiscale: the scale 1 alone gives the job's map and picks; maps made at 1/1.1, 1 and 1.1 and
    averaged lie on the same grid, stay probabilities and still find the particles of a clean micrograph about as well.
    common.real_cases reads each set by its never-saw-it model and by the shipped one."""
    from relion_pixer.models import load_pretrained, shipped_weights
    from relion_pixer.pipeline import PickParams, segment_micrograph

    common, bench_real = bench_modules
    _write_set(tmp_path, name="empiar10146_apoferritin")
    monkeypatch.setattr(common, "REAL_ROOT", tmp_path)
    sys.modules.pop("bench_scales", None)
    import bench_scales

    shipped = load_pretrained()
    cases = common.real_cases({"empiar10146_apoferritin": str(shipped_weights())}, shipped, splits=("test",))
    assert [(c[0], c[1], c[3]) for c in cases] == [("loso", "empiar10146_apoferritin", 96.0),
                                                    ("shipped", "empiar10146_apoferritin", 96.0)]
    assert cases[1][4] is shipped and cases[0][4] is not shipped
    mics = cases[1][2]
    one = bench_scales.multiscale((1.0,))(mics, 96.0, shipped)
    job = segment_micrograph(mics[0].image, mics[0].angpix, 96.0, shipped)
    assert np.array_equal(np.asarray(one[0][1]), np.asarray(job[1]))
    three = bench_scales.multiscale((1 / 1.1, 1.0, 1.1))(mics, 96.0, shipped)
    prob = np.asarray(three[0][1])
    assert prob.shape == np.asarray(job[1]).shape and 0.0 <= prob.min() and prob.max() <= 1.0
    assert not np.array_equal(prob, np.asarray(job[1]))
    f1 = {}
    for scales in ((1.0,), (1 / 1.1, 1.0, 1.1)):
        picks, _, _, _ = bench_real.pixer_picks(mics, 96.0, shipped, PickParams(), estimate=False, spacing=False,
                                                segment=bench_scales.multiscale(scales))
        f1[scales] = common.score(picks, mics, 24.0)["f1"]
    assert min(f1.values()) > 0.6 and max(f1.values()) - min(f1.values()) < 0.15, f1


def test_the_stage_breakdown_ends_at_the_jobs_picks_and_only_loses_along_the_way(tmp_path, monkeypatch, bench_modules):
    """bench_crowd_stages.stage_picks: its last stage is exactly what pick_micrograph returns, each stage keeps a subset
    of the candidates of the one before (recall never rises from the floor on), and the particles no peak matches are
    counted once each, as merged or unseen."""
    from relion_pixer.models import load_pretrained
    from relion_pixer.pipeline import PickParams, pick_micrograph

    common, _ = bench_modules
    _write_set(tmp_path, name="empiar10146_apoferritin")
    monkeypatch.setattr(common, "REAL_ROOT", tmp_path)
    sys.modules.pop("bench_crowd_stages", None)
    import bench_crowd_stages

    models = load_pretrained()
    mic = common.real_sets()[0].micrographs("test")[0]
    stages, missed = bench_crowd_stages.stage_picks(mic, 96.0, models, PickParams(), 24.0)
    job = pick_micrograph(mic.image, mic.angpix, 96.0, models, PickParams())
    assert np.array_equal(stages["picks"], job.xy)
    recall = [common.score([(stages[s], np.ones(len(stages[s])))], [mic], 24.0)["recall"]
              for s in bench_crowd_stages.STAGES]
    assert recall[0] > 0.5 and all(a >= b for a, b in zip(recall[1:], recall[2:])), recall
    assert len(stages["floor"]) >= len(stages["cuts"]) >= len(stages["picks"])
    matched = round(recall[0] * len(mic.truth))
    assert missed["merged"] + missed["unseen"] == len(mic.truth) - matched
    groups = missed["by_neighbours"].values()
    assert sum(n for n, _ in groups) == len(mic.truth) and all(0 <= k <= n for n, k in groups)
    assert sum(k for _, k in groups) >= missed["unseen"]  # every unseen particle is one the map does not see


def test_the_second_pass_benchmark_scores_exactly_the_jobs_picks_with_and_without_crowded(tmp_path, monkeypatch,
                                                                                           bench_modules):
    """bench_repick.compare: at each diameter it picks at, its "off" and "on" are the F1 of pick_micrograph without
    and with ``repick`` (the job's ``crowded No`` / ``Yes``), and its mean and spread follow from the rows."""
    from relion_pixer.models import load_pretrained
    from relion_pixer.pipeline import PickParams, pick_micrograph

    common, _ = bench_modules
    _write_set(tmp_path, name="empiar10146_apoferritin")
    monkeypatch.setattr(common, "REAL_ROOT", tmp_path)
    sys.modules.pop("bench_repick", None)
    import bench_repick

    models = load_pretrained()
    mics = common.real_sets()[0].micrographs("test")[:1]
    r = bench_repick.compare(mics, 96.0, models, PickParams())
    assert [row["given"] for row in r["rows"]] == list(bench_repick.GIVEN)
    row = r["rows"][1]
    d = row["picked_at"] * 96.0
    for key, repick in (("off", False), ("on", True)):
        res = pick_micrograph(mics[0].image, mics[0].angpix, d, models, PickParams(repick=repick))
        assert row[key]["f1"] == common.score([(res.xy, res.fom)], mics, 24.0)["f1"]
        assert row[key]["picks"] == len(res.xy)
    assert row["added"] == row["on"]["picks"] - row["off"]["picks"]
    f1 = [x["on"]["f1"] for x in r["rows"]]
    assert r["mean_f1_on"] == pytest.approx(np.mean(f1)) and r["spread_on"] == pytest.approx(max(f1) - min(f1))


@pytest.mark.parametrize("script, shell", [("new_set.sh", "sh"), ("run_all.sh", "bash")])
def test_the_benchmark_scripts_parse_and_name_only_scripts_that_exist(script, shell):
    """The one-command scripts (a third real set's decisions; every figure) parse, and every benchmark they call is
    in benchmarks/."""
    import re
    import shutil
    import subprocess

    path = BENCH / script
    if shutil.which(shell):
        subprocess.run([shell, "-n", str(path)], check=True)
    called = set(re.findall(r"(?:benchmarks/)?(\w+\.py)\b", path.read_text()))
    assert called and all((BENCH / name).is_file() for name in called), sorted(called)
