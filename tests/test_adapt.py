"""Self-training inside the picking job (relion_pixer.adapt): pseudo-labels, the External job with ``adapt Yes``, the
revert path and Continue."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from relion_pixer import BACKGROUND, CONTAMINATION, NET_DIAMETER_PX, PARTICLE, adapt, io, job, relion
from relion_pixer.train import IGNORE

from test_job import IN_MICS, RELION_CMD, check_relion_outputs, made_project, write_mrc

#: A few steps only: the test checks the plumbing and the guard, not what adaptation gains. The held-out tiles of
#: these small samples hold a few picks, so one pick more or less is a change of 25 %: the bound on a fall is
#: widened to the bound on a rise (the fall's own bound has its own test).
QUICK = dataclasses.replace(adapt.DEFAULTS, cls_steps=4, cls_batch=8, seg_steps=4, seg_batch=2, seg_crop=64,
                            replay=2, replay_size=96, min_particles=5, max_count_fall=adapt.DEFAULTS.max_count_change)


def test_pseudo_labels_follow_the_networks_surest_calls():
    shape = (160, 240)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    image = np.zeros(shape, np.float32)
    # dark particles: two the job picks, one it does not, one it never saw (no candidate: the map missed it)
    for x, y in ((60, 60), (120, 60), (60, 110), (200, 50)):
        image -= 3.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 8.0 ** 2)).astype(np.float32)
    probs = np.zeros((3,) + shape, np.float32)
    probs[BACKGROUND] = 0.99
    probs[CONTAMINATION, 120:150, 150:190] = 0.97  # a contamination patch
    probs[BACKGROUND, 120:150, 150:190] = 0.02
    xy = np.array([[60.0, 60.0], [120.0, 60.0], [60.0, 110.0]])
    fom = np.array([0.95, 0.95, 0.2])  # (a pick below its micrograph's 40th percentile would be unsure too)
    picked = np.array([True, True, False])
    labels, sure = adapt.pseudo_labels(image, probs, xy, fom, picked, adapt.DEFAULTS)
    np.testing.assert_allclose(sure, xy[:2])
    for x, y in xy[:2].astype(int):
        assert labels[y, x] == PARTICLE
    assert labels[110, 60] == IGNORE  # the candidate the job does not pick: unsure
    assert labels[60, 60 + int(0.7 * NET_DIAMETER_PX)] == BACKGROUND  # the ring around a particle
    assert labels[140, 100] == BACKGROUND  # empty ice, far from everything
    assert labels[50, 200] == IGNORE  # the missed particle is not taught as background
    assert labels[135, 170] == CONTAMINATION
    assert (labels[:16] == IGNORE).all() and (labels[:, -16:] == IGNORE).all()  # the edges
    # a micrograph whose picks are all unsure (figures of merit below confident_fom) gives no particle
    labels, sure = adapt.pseudo_labels(image, probs, xy, np.array([0.2, 0.25, 0.1]), picked, adapt.DEFAULTS)
    assert len(sure) == 0 and not (labels == PARTICLE).any() and not (labels == BACKGROUND).any()
    with pytest.raises(ValueError, match="class probabilities"):
        adapt.pseudo_labels(image, probs[:, :10], xy, fom, picked)


def test_agreement_counts_held_out_particles_and_false_picks():
    lab = np.full((100, 100), IGNORE, np.uint8)
    lab[:, 50:] = BACKGROUND
    held = np.zeros((100, 100), bool)
    held[:, :] = True
    conf = np.array([[20.0, 20.0], [20.0, 70.0]])
    picks = np.array([[21.0, 20.0], [80.0, 80.0]])  # one confident particle found, one pick on background
    a = adapt.agreement([picks], [lab], [conf], [held])
    assert (a["tp"], a["missed"], a["false"], a["picks"]) == (1, 1, 1, 2)
    assert a["agreement"] == pytest.approx(2 / 4)
    held[:, 40:] = False  # only the left part held out: the pick on background (x 80) no longer counts
    a = adapt.agreement([picks], [lab], [conf], [held])
    assert (a["tp"], a["missed"], a["false"], a["picks"]) == (1, 1, 0, 1)


def simulated_project(root, n: int = 3, size: int = 256):
    """A RELION project whose micrographs are simulated (particles 32 px across at 4 A/px: 128 A)."""
    from relion_pixer.simulate import random_config, simulate_micrograph

    project = made_project(root, n=n, size=size)
    rng = np.random.default_rng(7)
    for e in io.read_micrographs_star(project / IN_MICS, project_dir=project):
        cfg = random_config(rng, snr=1.0, particle_diameter_px=32.0, families="globular", empty=False, n_ice=0,
                            n_aggregates=0, carbon_edge=False, carbon_hole=False, angpix=1.5, density=0.3)
        write_mrc(e.path, simulate_micrograph(rng, shape=(size, size), **cfg).image.astype(np.float32), 1.5)
    return project


ADAPT_CMD = RELION_CMD.replace("--particle_diameter 150", "--particle_diameter 48") + " --adapt Yes"


def test_adapt_end_to_end_then_continue_does_not_adapt_again(tmp_path, monkeypatch, capsys):
    from relion_pixer.models import load_pretrained

    root = simulated_project(tmp_path / "p")
    monkeypatch.chdir(root)
    monkeypatch.setattr(adapt, "DEFAULTS", QUICK)
    assert job.main(ADAPT_CMD.split()) == 0
    first = capsys.readouterr()
    for stage in ("pseudo-labels from 3 micrograph(s)", "simulated replay micrographs", "networks fine-tuned",
                  "adapted networks kept"):
        assert stage in first.out
    assert re.search(r"\+ adapt: pseudo-labels .*, [\d.]+ s$", first.out, re.M)  # the time each stage took
    jd = root / "External/job012"
    note = json.loads((jd / adapt.NOTE_FILE).read_text())
    assert note["kept"] and len(note["micrographs"]) == 3 and note["figures"]["confident_particles"] >= 5
    size = json.loads((jd / "pixer_size.json").read_text())
    assert note["diameter_A"] == size["picking_A"]  # adapted at the diameter the job picks at
    later = load_pretrained(jd / adapt.MODEL_FILE)  # loadable as `model` by a later job
    assert later.meta["adapted"]["micrographs"] == note["micrographs"]
    # the adapted networks are an output node: a later job can pick with them
    lst = check_relion_outputs(root, empty=None, extra_nodes=((adapt.MODEL_FILE, relion.MODEL_NODE_LABEL),))
    coords = [root / c for c in lst["rlnMicrographCoordinates"]]
    assert sum(len(io.read_coordinates_star(c)) for c in coords) > 0
    before = coords[-1].read_bytes()
    model_bytes = (jd / adapt.MODEL_FILE).read_bytes()
    coords[-1].unlink()
    assert job.main(ADAPT_CMD.split()) == 0
    again = capsys.readouterr().out
    assert "kept in adapted_model.pt" in again and "fine-tuned" not in again and "1 to pick" in again
    assert coords[-1].read_bytes() == before
    assert (jd / adapt.MODEL_FILE).read_bytes() == model_bytes


def test_adapted_networks_that_disagree_are_reverted(tmp_path, monkeypatch, capsys):
    """Networks that drift from the held-out pseudo-labels (here: fine-tuning that leaves them blind to particles)
    are rejected; the picks are then exactly the general networks'."""
    import torch

    from relion_pixer import train

    root = simulated_project(tmp_path / "p", n=2)
    monkeypatch.chdir(root)
    monkeypatch.setattr(adapt, "DEFAULTS", QUICK)
    real_fit = train.fit_segmenter

    def drifting(segmenter, *args, **kw):
        real_fit(segmenter, *args, **kw)
        with torch.no_grad():
            for branch in segmenter.branches:
                branch[-1].bias[PARTICLE] -= 50.0

    monkeypatch.setattr(train, "fit_segmenter", drifting)
    assert job.main(ADAPT_CMD.split()) == 0
    out, err = capsys.readouterr()
    assert "adapted networks rejected, reverting to the general networks" in out
    assert "the picks are those of the networks the job started from (not adapted)" in err
    jd = root / "External/job012"
    assert not (jd / adapt.MODEL_FILE).exists()
    note = json.loads((jd / adapt.NOTE_FILE).read_text())
    assert not note["kept"] and note["figures"]["agreement_adapted"]["agreement"] < QUICK.min_agreement
    general_cmd = ADAPT_CMD.replace("job012", "job013").replace("--adapt Yes", "--adapt No")
    assert job.main(general_cmd.split()) == 0
    capsys.readouterr()
    for mine in sorted((jd / "Movies").glob("*_autopick.star")):
        assert mine.read_bytes() == (root / "External/job013/Movies" / mine.name).read_bytes()
    # Continue keeps the decision: no second adaptation
    next(iter(sorted((jd / "Movies").glob("*_autopick.star")))).unlink()
    assert job.main(ADAPT_CMD.split()) == 0
    out, err = capsys.readouterr()
    assert "the first run reverted to the general networks" in out
    assert "Continue keeps that choice; to adapt on micrographs added since, run a new job with adapt Yes" in err


def _small_sample():
    from relion_pixer.simulate import random_config, simulate_micrograph

    rng = np.random.default_rng(3)
    cfg = random_config(rng, snr=1.0, particle_diameter_px=32.0, families="globular", empty=False, n_ice=0,
                        n_aggregates=0, carbon_edge=False, carbon_hole=False, angpix=1.5, density=0.3)
    return [(simulate_micrograph(rng, shape=(256, 256), **cfg).image.astype(np.float32), 1.5)]


def test_adaptation_is_deterministic_for_a_seed():
    import torch

    from relion_pixer.models import load_pretrained
    from relion_pixer.pipeline import PickParams

    sample = _small_sample()
    general = load_pretrained(None)
    runs = [adapt.adapt_models(sample, 48.0, general, None, PickParams(), dataclasses.replace(QUICK, seed=seed),
                               info=lambda msg: None) for seed in (0, 0, 1)]
    weights = [r.models.segmenter.state_dict() for r in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])  # the seed matters
    assert runs[0].figures["agreement_adapted"] == runs[1].figures["agreement_adapted"]


def test_the_guard_bounds_a_fall_in_picks_apart_from_a_rise():
    """The adapted networks are reverted when their picks on the held-out tiles fall by more than
    ``max_count_fall``, whatever ``max_count_change`` (the bound on a rise) allows; the reason gives the signed
    change. Same seed, so the same networks each time: only the guard's bounds differ."""
    from relion_pixer.models import load_pretrained
    from relion_pixer.pipeline import PickParams

    sample, general = _small_sample(), load_pretrained(None)

    def run(**bounds):
        return adapt.adapt_models(sample, 48.0, general, None, PickParams(), dataclasses.replace(QUICK, **bounds),
                                  info=lambda line: None)

    loose = run(max_count_fall=0.9, max_count_change=0.9)
    change = loose.figures["held_out_count_change"]
    assert loose.kept and change < 0  # this sample's adapted networks pick fewer there
    assert f"({change:+.0%};" in loose.reason
    assert run(max_count_fall=0.9, max_count_change=0.0).kept  # a bound on rises leaves a fall alone
    tight = run(max_count_fall=-change / 2, max_count_change=0.9)
    assert not tight.kept and tight.models is not None and "fewer)" in tight.reason


def test_the_guard_bounds_a_rise_in_picks_on_any_one_micrograph():
    """With ``max_micrograph_rise`` the adapted networks are reverted when, on any micrograph of the sample, their
    picks exceed the general networks' by more than the bound allows (``micrograph_rise_slack`` picks beyond the
    relative rise), whatever the pooled count on the held-out tiles says; None turns the bound off."""
    from relion_pixer.models import load_pretrained
    from relion_pixer.pipeline import PickParams

    sample, general = _small_sample(), load_pretrained(None)

    def run(**bounds):
        return adapt.adapt_models(sample, 48.0, general, None, PickParams(),
                                  dataclasses.replace(QUICK, max_count_fall=0.9, max_count_change=0.9, **bounds),
                                  info=lambda line: None)

    assert adapt.DEFAULTS.max_micrograph_rise == adapt.DEFAULTS.max_count_change  # the pooled bound, per micrograph
    free = run(max_micrograph_rise=None)
    counts = free.figures["micrograph_picks"]
    assert free.kept and len(counts) == len(sample) and all(g > 0 for g, _ in counts)
    most = max(a - g for g, a in counts)  # the largest rise, in picks (negative when every micrograph fell)
    assert run(max_micrograph_rise=0.0, micrograph_rise_slack=most).kept
    over = run(max_micrograph_rise=0.0, micrograph_rise_slack=most - 1)
    assert not over.kept and over.models is not None and "rose beyond 1 times" in over.reason
    first = next(k for k, (g, a) in enumerate(counts) if a - g == most)  # named by its place in the sample
    assert f"the sample's micrograph {first + 1}: {counts[first][1]} picks against {counts[first][0]}" in over.reason


def test_second_pass_puts_the_jobs_second_pass_picks_among_the_candidates():
    """With ``second_pass`` the teacher's picks are the job's, second pass included (``pick_segmented``); each is
    a candidate marked picked, with the job's figure of merit, so the pseudo-labels never teach it as background.
    Without it, one pass as before."""
    from relion_pixer.models import load_pretrained
    from relion_pixer.pipeline import PickParams, pick_from_map, pick_segmented
    from relion_pixer.preprocess import prepare, to_network
    from relion_pixer.segment import predict_probability
    from relion_pixer.simulate import random_config, simulate_micrograph

    rng = np.random.default_rng(11)
    cfg = random_config(rng, snr=1.0, particle_diameter_px=27.0, families="globular", empty=False, n_ice=0,
                        n_aggregates=0, carbon_edge=False, carbon_hole=False, angpix=7.0, density=0.5)
    cfg.update(min_separation=0.7)
    net, f = prepare(simulate_micrograph(rng, shape=(384, 384), **cfg).image, 7.0, 190.0)
    models, params = load_pretrained(None), PickParams()
    prob = predict_probability(models.segmenter, net, "cpu")
    job = pick_segmented(net, prob, f, 190.0, models, params)
    assert job.repicked > 0  # the second pass adds picks here
    for second_pass, picks in ((True, job), (False, pick_from_map(net, prob, f, 190.0, models, params))):
        xy, fom, _, picked, job_xy = adapt._candidates(net, models, f, 190.0, params, "cpu", second_pass)
        assert np.allclose(job_xy, to_network(picks.xy, f))
        near = np.linalg.norm(xy[:, None] - job_xy[None], axis=2)
        assert np.all(near.min(axis=0) < 0.5) and np.all(picked == (near.min(axis=1) < 0.5))
        assert np.allclose(np.sort(fom[picked]), np.sort(picks.fom))


def test_a_second_round_learns_from_the_first_and_a_drifting_one_leaves_it(monkeypatch):
    """``AdaptConfig.rounds``: round 2 relabels with round 1's networks and replaces them when it passes the guard
    against them; when round 2 drifts, round 1's networks stand, exactly as one round gives them."""
    import torch

    from relion_pixer import train
    from relion_pixer.models import load_pretrained
    from relion_pixer.pipeline import PickParams

    sample, general = _small_sample(), load_pretrained(None)

    def run(rounds):
        return adapt.adapt_models(sample, 48.0, general, None, PickParams(), dataclasses.replace(QUICK, rounds=rounds),
                                  info=lines.append)

    def same(a, b):
        sa, sb = a.models.segmenter.state_dict(), b.models.segmenter.state_dict()
        return all(torch.equal(sa[k], sb[k]) for k in sa)

    lines: list[str] = []
    one, two = run(1), run(2)
    assert one.kept and two.kept and "rounds" not in one.figures or one.figures["rounds"] == []
    assert len(two.figures["rounds"]) == 1 and two.figures["rounds"][0]["kept"]
    assert any(line.startswith(" + adapt (round 2): networks fine-tuned") for line in lines)
    assert "previous round's networks" in two.reason
    assert not same(one, two)  # round 2 learned from other labels

    real_fit, calls = train.fit_segmenter, []

    def drifting_in_round_two(segmenter, *args, **kw):
        real_fit(segmenter, *args, **kw)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                for branch in segmenter.branches:
                    branch[-1].bias[PARTICLE] -= 50.0

    monkeypatch.setattr(train, "fit_segmenter", drifting_in_round_two)
    lines.clear()
    kept = run(2)
    assert kept.kept and not kept.figures["rounds"][0]["kept"]
    assert any("round 1's stand" in line for line in lines)
    assert same(kept, one) and kept.reason == one.reason


def test_adapt_option_default_no_bare_flag_yes():
    base = "pick a.mrc --angpix 1 --particle_diameter 100 --o out/".split()[1:]
    assert job.parse_args(base).adapt is False
    assert job.parse_args(base + ["--adapt"]).adapt is True  # relion_pixer pick --adapt
    assert job.parse_args(base + ["--adapt", "No"]).adapt is False


def test_kept_adapted_networks_measure_the_size_again_and_continue_reuses_it(tmp_path, monkeypatch, capsys):
    """``AdaptConfig.reestimate``: the adapted networks' size estimate sets the diameter the job picks at; it is kept
    in pixer_adapt.json, and Continue picks at it without measuring again."""
    root = simulated_project(tmp_path / "p")
    monkeypatch.chdir(root)
    monkeypatch.setattr(adapt, "DEFAULTS", dataclasses.replace(QUICK, reestimate=True))
    assert job.main(ADAPT_CMD.split()) == 0
    first = capsys.readouterr().out
    assert "adapted networks kept" in first and "particle size measured again with the adapted networks" in first
    jd = root / "External/job012"
    note = json.loads((jd / adapt.NOTE_FILE).read_text())
    again = note["reestimate"]
    size = json.loads((jd / "pixer_size.json").read_text())
    assert again["given_A"] == size["given_A"] and 0.5 * size["given_A"] < again["estimate_A"] < 2.0 * size["given_A"]
    measured = (again["given_A"] * again["estimate_A"]) ** 0.5  # the blend, weight 0.5
    assert again["measured_picking_A"] == pytest.approx(measured)
    # taken only where nearer to the diameter given than the first picking diameter (reestimate_nearer, the default)
    assert again["picking_A"] == pytest.approx(adapt.nearer_to_given(measured, note["diameter_A"], again["given_A"]))
    assert f"picking at {again['picking_A']:.0f} A" in first
    kept = ((adapt.MODEL_FILE, relion.MODEL_NODE_LABEL),)
    coords = [root / c for c in check_relion_outputs(root, empty=None, extra_nodes=kept)["rlnMicrographCoordinates"]]
    before = coords[-1].read_bytes()
    coords[-1].unlink()
    assert job.main(ADAPT_CMD.split()) == 0
    second = capsys.readouterr().out
    assert "measured again" not in second and "fine-tuned" not in second
    if round(again["picking_A"]) != round(note["diameter_A"]):
        assert f"picking at {again['picking_A']:.0f} A, as they measured it" in second
    assert coords[-1].read_bytes() == before


def test_relions_abort_stops_adapt_during_its_fine_tuning(tmp_path, monkeypatch, capsys):
    """RELION's Abort while the networks are being fine-tuned stops the job within a step (not after the whole
    adaptation): RELION_JOB_EXIT_ABORTED, RELION_JOB_ABORT_NOW removed, no adapted model and no note, so that
    Continue adapts afresh."""
    from relion_pixer import train

    root = simulated_project(tmp_path / "p")
    monkeypatch.chdir(root)
    monkeypatch.setattr(adapt, "DEFAULTS", QUICK)
    jd = root / "External/job012"
    steps = []
    real_fit = train.fit_classifier

    def abort_after_two(*args, on_step=None, **kw):
        def step(i, loss, opt):
            steps.append(i)
            if i == 2:
                (jd / relion.ABORT_NOW).touch()  # the GUI's Abort button
            on_step(i, loss, opt)

        return real_fit(*args, on_step=step, **kw)

    monkeypatch.setattr(train, "fit_classifier", abort_after_two)
    assert job.main(ADAPT_CMD.split()) == 2
    out, err = capsys.readouterr()
    assert steps == [1, 2] and "stopped by RELION_JOB_ABORT_NOW" in err
    assert (jd / relion.EXIT_ABORTED).exists() and not (jd / relion.EXIT_SUCCESS).exists()
    assert not (jd / adapt.MODEL_FILE).exists() and not (jd / adapt.NOTE_FILE).exists()
    # the request is removed with the abort, as an External job must: left there, every rerun stopped at once
    assert not (jd / relion.ABORT_NOW).exists()


def test_the_size_measured_again_is_taken_only_nearer_to_the_diameter_given(monkeypatch):
    """``AdaptConfig.reestimate_nearer``: the adapted networks' diameter is taken where it lies nearer (log scale) to
    the diameter given than the first picking diameter, else the first stands and run.out says why; the note keeps
    the measured one beside it. Without ``first_A`` (the option off) the measure is always taken."""
    from relion_pixer import size

    assert adapt.nearer_to_given(175.0, 153.0, 128.0) == 153.0  # farther: the first stands
    assert adapt.nearer_to_given(130.7, 134.6, 128.0) == 130.7  # nearer: taken
    assert adapt.nearer_to_given(110.0, 142.0, 120.0) == 110.0  # past the diameter given, but nearer in log
    estimate = {"A": 0.0}

    def fake_estimate(micrographs, given_A, models, device="cpu"):
        list(micrographs)
        return size.SizeEstimate(estimate["A"], given_A, (1.0,), (0.0,), False)

    def fake_first(entries, invert=False, read=None):
        read.append("mic")
        return iter([(np.zeros((8, 8), np.float32), 1.0)])

    monkeypatch.setattr(size, "estimate_diameter", fake_estimate)
    monkeypatch.setattr(size, "first_micrographs", fake_first)
    lines = []
    for measured_A, first_A, expected in ((160.0, 110.0, 110.0), (100.0, 110.0, None), (160.0, None, None)):
        estimate["A"] = measured_A
        out = adapt._measure_again([], False, 100.0, None, "cpu", lines.append, first_A)
        blend = (100.0 * measured_A) ** 0.5
        assert out["measured_picking_A"] == pytest.approx(blend)
        assert out["picking_A"] == pytest.approx(blend if expected is None else expected)
        assert ("so the first stands" in lines[-1]) == (expected is not None)


def test_a_micrograph_picking_skips_is_skipped_by_adapt_not_fatal(tmp_path, monkeypatch, capsys):
    """A micrograph the job skips when picking (here: a second optics group whose pixel size leaves the particle
    under 10 px wide) is skipped by the adaptation too, named in run.out and pixer_adapt.json: it used to fail the
    whole job (RELION_JOB_EXIT_FAILURE, "a 48 A particle is only 6.0 px wide ...") before any micrograph was
    picked, where the job without adapt picks the others."""
    from test_job import made_micrographs_star

    root = simulated_project(tmp_path / "p")
    monkeypatch.chdir(root)
    monkeypatch.setattr(adapt, "DEFAULTS", QUICK)
    star = root / IN_MICS
    names = [e.name for e in io.read_micrographs_star(star, project_dir=root)]
    coarse = "MotionCorr/job002/Movies/coarse.mrc"
    write_mrc(root / coarse, np.random.default_rng(1).normal(size=(256, 256)).astype(np.float32), 8.0)
    made_micrographs_star(star, names[:1] + [coarse] + names[1:], angpix=(1.5, 8.0), groups=[1, 2, 1, 1])
    assert job.main(ADAPT_CMD.split()) == 0
    out, err = capsys.readouterr()
    jd = root / "External/job012"
    assert (jd / "RELION_JOB_EXIT_SUCCESS").exists() and not (jd / "RELION_JOB_EXIT_FAILURE").exists()
    assert f"+ adapt: {coarse} skipped, as picking skips it: " in out
    assert "pseudo-labels from 3 micrograph(s)" in out
    assert f"skipping micrograph: {coarse}" in err  # the job's own skip, when picking
    note = json.loads((jd / adapt.NOTE_FILE).read_text())
    assert note["micrographs"] == names and [s["micrograph"] for s in note["skipped"]] == [coarse]
    assert [s["sample"] for s in note["figures"]["skipped"]] == [1]
    assert len(list((jd / "Movies").glob("*_autopick.star"))) == 3


def test_continue_at_another_diameter_says_why_it_adapts_again(tmp_path, monkeypatch):
    """The earlier adaptation was made at another diameter: the job adapts again and run.out says why (it did so
    silently), and that a rejected new adaptation leaves the earlier model file in place; the revert's message no
    longer claims the first run kept its networks."""
    (tmp_path / adapt.NOTE_FILE).write_text(json.dumps({"kept": True, "diameter_A": 200.0, "init": "None"}))
    (tmp_path / adapt.MODEL_FILE).write_bytes(b"earlier")
    monkeypatch.setattr(adapt, "adapt_models", lambda *a, **k: adapt.AdaptResult(None, False, "stub", {}))
    said, warned = [], []
    general = object()
    chosen, diameter = adapt.for_job([], 180.0, False, None, general, None, tmp_path, said.append, warned.append)
    assert chosen is general and diameter == 180.0
    assert any("the earlier adaptation of this job was made at 200 A from None; this run picks at 180 A from None: "
               "adapting again (a rejected adaptation leaves the earlier adapted_model.pt in place)" in s for s in said)
    assert (tmp_path / adapt.MODEL_FILE).read_bytes() == b"earlier"
    # a Continue at the same diameter after that revert keeps the choice, naming it as the earlier adaptation's
    chosen, _ = adapt.for_job([], 180.0, False, None, general, None, tmp_path, said.append, warned.append)
    assert chosen is general and "the earlier adaptation of this job kept the networks it started from" in warned[-1]
