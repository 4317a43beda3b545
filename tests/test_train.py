"""Training: a few-step smoke run end to end, resume, config errors, real-data labels."""

import json
import re

import numpy as np
import pytest
import torch

from relion_pixer import BACKGROUND, PARTICLE
from relion_pixer.models import load_pretrained
from relion_pixer.preprocess import nearest_resample
from relion_pixer.train import IGNORE, _disc_labels, cut_boxes, far_background, load_config, main

SMOKE = """
sim_train = 4
sim_valid = 1
sim_size = 96
oversample_min = 1.2
oversample_max = 1.5
valid_oversample = 1.5
widths = [8, 16, 16]
cls_steps = 5
cls_batch = 8
seg_steps = 5
seg_batch = 2
seg_crop = 64
blur_fraction = 0.5
checkpoint_every = 2
valid_every = 5
threads = 1
"""


def test_five_step_training_smoke_run(tmp_path):
    cfg = tmp_path / "smoke.toml"
    cfg.write_text(SMOKE)
    out = tmp_path / "run"
    assert main(["--config", str(cfg), "--out", str(out)]) == 0
    models = load_pretrained(out / "model.pt")
    assert models.segmenter.rates == (2, 4, 6, 8)
    assert models.classifier.trunk.widths == models.segmenter.trunk.widths == (8, 16, 16)
    final = json.loads((out / "final.json").read_text())
    assert {"classifier", "segmenter_snr0.01", "segmenter_snr0.1"} <= set(final)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == ["classifier", "segmenter"]
    assert all(np.isfinite(r["loss"]) for r in log)
    # the model file's figures are those logged for the final weights
    assert final["segmenter_snr0.1"]["particle_iou"] == log[-1]["iou_snr0.1"]
    assert models.meta["validation"]["segmenter_snr0.01"] == final["segmenter_snr0.01"]
    # rerunning resumes from the finished checkpoint and does no more steps
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["stage"] == "segmenter" and ckpt["step"] == 5
    assert main(["--config", str(cfg), "--out", str(out)]) == 0
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / "final.json").read_text())["segmenter_snr0.1"] == final["segmenter_snr0.1"]


def test_shell_fraction_adds_hollow_shell_micrographs_and_keeps_the_others(tmp_path, monkeypatch, capsys):
    """The shells come on top of the simulated set, from their own seed: the other micrographs stay the same."""
    import relion_pixer.train as train

    made = []
    real_set = train.simulated_set

    def spy(n, size, seed, *args, **kwargs):
        made.append((n, seed, kwargs.get("families")))
        return real_set(n, size, seed, *args, **kwargs)

    monkeypatch.setattr(train, "simulated_set", spy)
    cfg = tmp_path / "smoke.toml"
    cfg.write_text(SMOKE.replace("threads = 1", "threads = 1\nshell_fraction = 0.5"))
    assert main(["--config", str(cfg), "--out", str(tmp_path / "run")]) == 0
    base = load_config(cfg)
    assert made[0] == (base.sim_train, base.seed, None)
    assert (max(1, round(0.5 * base.sim_train)), base.seed + 20_000, ("shell",)) in made
    assert (tmp_path / "run" / "sim_shell.pt").is_file()
    cfg.write_text(SMOKE.replace("threads = 1", "threads = 1\nshell_fraction = 2"))
    assert main(["--config", str(cfg), "--out", str(tmp_path / "bad")]) == 1
    assert "shell_fraction must be between 0 and 1" in capsys.readouterr().err
    cfg.write_text(SMOKE.replace("threads = 1", "threads = 1\ncrowded_fraction = -0.1"))
    assert main(["--config", str(cfg), "--out", str(tmp_path / "bad2")]) == 1
    assert "crowded_fraction must be between 0 and 1" in capsys.readouterr().err


def test_atomic_fraction_builds_particles_from_the_atomic_models(tmp_path, simulated_options, capsys):
    """atomic_fraction adds micrographs whose particles come from the atomic models, fragments left out."""
    import relion_pixer.train as train

    big = tmp_path / "big.pdb"
    small = tmp_path / "small.pdb"
    rng = np.random.default_rng(0)

    def pdb(path, n):
        xyz = rng.normal(scale=12.0, size=(n, 3))
        path.write_text("".join(f"ATOM  {i + 1:5d}  CA  ALA A{i + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00           C\n"
                                for i, (x, y, z) in enumerate(xyz)) + "END\n")

    pdb(big, 600)
    pdb(small, 40)
    assert train.atomic_model_files([str(tmp_path / "*.pdb")]) == [str(big)]
    with pytest.raises(ValueError, match="no atomic model with at least 500"):
        train.atomic_model_files([str(small)])

    cfg = tmp_path / "smoke.toml"
    cfg.write_text(SMOKE.replace("threads = 1", f"threads = 1\natomic_fraction = 0.5\natomic_models = '{tmp_path}/*.pdb'"))
    assert main(["--config", str(cfg), "--out", str(tmp_path / "run")]) == 0
    base = load_config(cfg)
    drawn = [(o["families"], tuple(o.get("model_files", ()))) for o in simulated_options]
    added = [d for d in drawn if d[1]]
    assert len(added) == max(1, round(0.5 * base.sim_train)) and all(d == ((), (str(big),)) for d in added)
    assert (tmp_path / "run" / "sim_atomic.pt").is_file()
    cfg.write_text(SMOKE.replace("threads = 1", f"threads = 1\natomic_fraction = 0.5\natomic_models = '{small}'"))
    assert main(["--config", str(cfg), "--out", str(tmp_path / "bad")]) == 1
    assert "no atomic model with at least 500" in capsys.readouterr().err


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("no_such_setting = 3\n")
    with pytest.raises(ValueError, match="no_such_setting"):
        load_config(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("sim_train = [\n")
    with pytest.raises(ValueError, match="broken.toml"):
        load_config(broken)
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        load_config(tmp_path / "missing.toml")
    typed = tmp_path / "typed.toml"
    for line, said in (('cls_steps = "a"', "cls_steps must be int (like 1500), not 'a'"),
                       ("cls_steps = 2.5", "cls_steps must be int"), ("cls_lr = true", "cls_lr must be float"),
                       ("seg_lr = 1", None), ("name = 3", "name must be str")):
        typed.write_text(line + "\n")
        if said is None:
            assert load_config(typed).seg_lr == 1
        else:
            with pytest.raises(ValueError, match=re.escape(f"typed.toml: training setting {said}")):
                load_config(typed)
    assert load_config(None, seg_steps=7).seg_steps == 7


def test_real_micrographs_are_a_glob_or_a_list_of_files_and_globs(tmp_path):
    from relion_pixer.train import _real_files

    for name in ("b.mrc", "a.mrc", "c.mrc"):
        (tmp_path / name).write_bytes(b"")
    assert _real_files(str(tmp_path / "*.mrc")) == [str(tmp_path / n) for n in ("a.mrc", "b.mrc", "c.mrc")]
    # a list keeps its order (a split's), each pattern's matches sorted
    assert _real_files([str(tmp_path / "c.mrc"), str(tmp_path / "[ab].mrc")]) == [
        str(tmp_path / n) for n in ("c.mrc", "a.mrc", "b.mrc")]
    with pytest.raises(FileNotFoundError, match="d.mrc"):
        _real_files([str(tmp_path / "a.mrc"), str(tmp_path / "d.mrc")])
    with pytest.raises(FileNotFoundError, match="lists no micrographs"):
        _real_files([])
    cfg = tmp_path / "real.toml"
    cfg.write_text(f'[[real]]\nmicrographs = ["{tmp_path / "a.mrc"}"]\ncoords = "{tmp_path}"\ndiameter = 100.0\n')
    assert load_config(cfg).real[0]["micrographs"] == [str(tmp_path / "a.mrc")]


def test_disc_labels_trust_only_near_labelled_particles():
    lab = _disc_labels((64, 64), np.array([[20.0, 30.0]]), diameter=20)
    assert lab[30, 20] == PARTICLE
    assert lab[30, 20 + 12] == BACKGROUND  # in the ring (0.45 .. 0.9 diameters)
    assert lab[5, 60] == IGNORE  # far away: maybe an unlabelled particle
    assert (_disc_labels((8, 8), np.zeros((0, 2)), 20) == IGNORE).all()


def test_far_background_keeps_unlabelled_particles_out():
    from relion_pixer import NET_DIAMETER_PX as D

    rng = np.random.default_rng(3)
    image = rng.normal(0.0, 1.0, (320, 320))
    yy, xx = np.mgrid[0:320, 0:320]
    centres = np.array([[60.0, 60.0], [60.0, 160.0], [160.0, 60.0], [260.0, 260.0]])
    for x, y in centres:
        image[(xx - x) ** 2 + (yy - y) ** 2 <= (D / 2) ** 2] -= 1.5  # dark particles
    labelled, unlabelled = centres[:3], centres[3]
    empty = far_background(image, labelled, percentile=5.0)
    d_label = np.sqrt((xx[..., None] - labelled[:, 0]) ** 2 + (yy[..., None] - labelled[:, 1]) ** 2).min(-1)
    assert not empty[d_label <= D].any()  # never near a label
    d_free = np.hypot(xx - unlabelled[0], yy - unlabelled[1])
    assert not empty[d_free <= D / 2].any()  # the unlabelled particle's disc stays out
    assert empty[160, 260] and empty[250, 120]  # empty ice far from both is background
    assert empty.mean() > 0.3
    assert not far_background(image, np.zeros((0, 2)), 5.0).any()


def test_nearest_resample_follows_fourier_grid():
    lab = np.zeros((100, 60), np.uint8)
    lab[50, 30] = 1
    small = nearest_resample(lab, (50, 30))
    assert small.shape == (50, 30)
    assert small[25, 15] == 1 and small.sum() == 1


def test_cut_boxes_pads_at_edges():
    img = np.arange(100, dtype=np.float32).reshape(10, 10)
    boxes = cut_boxes([img], np.array([[0, 0.0, 0.0], [0, 5.0, 5.0]], np.float32), box=4)
    assert boxes.shape == (2, 4, 4)
    assert boxes[0, 2, 2] == img[0, 0] and boxes[0, 0, 0] == 0
    assert np.array_equal(boxes[1], img[3:7, 3:7])


def test_blur_augmentation_lowpasses_and_renormalises():
    from relion_pixer.train import _gaussian_blur

    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 64, 64)).astype(np.float32))
    y = _gaussian_blur(x, 2.0)
    assert y.shape == x.shape

    def neighbour_corr(a):
        a = a - a.mean()
        return float((a[..., :, 1:] * a[..., :, :-1]).mean() / (a * a).mean())

    assert neighbour_corr(x) < 0.1 < 0.8 < neighbour_corr(y)
    for img in y:  # each image on its own: median 0, sd 1, as preprocess.normalise leaves a micrograph
        assert abs(float(img.median())) < 1e-5
        assert abs(float(img.std()) - 1.0) < 1e-3
    # a box half in the zero padding (MAD 0) stays finite and of unit scale
    half = x[:1].clone()
    half[..., :, 40:] = 0
    z = _gaussian_blur(half, 1.0)
    assert torch.isfinite(z).all() and float(z.abs().max()) < 20


def test_blur_fraction_zero_leaves_training_batches_unchanged():
    from relion_pixer.train import LabelledSet, seg_batch

    rng = np.random.default_rng(1)
    data = LabelledSet([rng.standard_normal((80, 80)).astype(np.float32)], [np.zeros((80, 80), np.uint8)],
                       [np.zeros((0, 2), np.float32)])
    a = seg_batch([(data, 1.0)], 4, 48, torch.Generator().manual_seed(3))
    b = seg_batch([(data, 1.0)], 4, 48, torch.Generator().manual_seed(3), 0.0)
    c = seg_batch([(data, 1.0)], 4, 48, torch.Generator().manual_seed(3), 1.0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.allclose(a[0], c[0])


def test_small_mask_weights_favour_thin_particles():
    from relion_pixer.train import small_mask_weights

    inst = np.zeros((96, 96), np.int32)
    yy, xx = np.mgrid[:96, :96]
    inst[np.hypot(yy - 30, xx - 30) <= 16] = 1  # a disc of the network diameter (32 px)
    inst[70:74, 40:72] = 2  # a rod 32 x 4 px: 1/6 of the disc's area
    inst[5:7, 80:82] = 3  # a 2 x 2 fleck: clipped at the maximum
    w = small_mask_weights(inst, 4.0)
    assert w.dtype == np.float32 and w.shape == inst.shape
    assert np.all(w[inst == 0] == 1)
    assert np.allclose(w[inst == 1], 1.0, atol=0.02)  # a pixelated disc: about the reference area
    assert np.all(w[inst == 3] == 4)
    assert w[72, 50] == pytest.approx(min(4.0, np.pi * 16**2 / 128), rel=1e-6)
    assert np.all(small_mask_weights(inst, 1.0) == 1)
    # normalised: the particle pixels' mean weight becomes 1, background stays 1
    from relion_pixer.train import mean_small_mask_weight

    c = mean_small_mask_weight([inst, inst], 4.0)
    assert c == pytest.approx(w[inst > 0].mean(), rel=1e-6) and c > 1
    wn = small_mask_weights(inst, 4.0, scale=1 / c)
    assert wn[inst > 0].mean() == pytest.approx(1.0, rel=1e-5) and np.all(wn[inst == 0] == 1)
    assert mean_small_mask_weight([np.zeros((4, 4), np.int32)], 4.0) == 1.0


def test_small_mask_weighting_off_leaves_batches_unchanged_and_on_keeps_maps_aligned():
    from relion_pixer.train import LabelledSet, seg_batch, small_mask_weights

    rng = np.random.default_rng(2)
    inst = np.zeros((80, 80), np.int32)
    inst[10:14, 20:52] = 1
    inst[50:60, 50:60] = 2
    labels = (inst > 0).astype(np.uint8)
    data = LabelledSet([rng.standard_normal((80, 80)).astype(np.float32)], [labels],
                       [np.zeros((0, 2), np.float32)], [inst])
    a = seg_batch([(data, 1.0)], 6, 48, torch.Generator().manual_seed(5))
    b = seg_batch([(data, 1.0)], 6, 48, torch.Generator().manual_seed(5), 0.0, 1.0)
    c = seg_batch([(data, 1.0)], 6, 48, torch.Generator().manual_seed(5), 0.0, 4.0)
    assert len(a) == len(b) == 2 and len(c) == 3
    # the same crops, augmentations and noise whether or not weights are asked for
    for u, v, t in zip(a, b, c[:2]):
        assert torch.equal(u, v) and torch.equal(u, t)
    # weights follow their labels through crop, rotation and flip: > 1 exactly on the small particles' pixels
    w_full = small_mask_weights(inst, 4.0)
    y, w = c[1], c[2]
    assert torch.equal(w > 1, y == 1)
    assert set(np.unique(w[y == 1].numpy()).round(4)) <= set(np.unique(w_full[inst > 0]).round(4))
    # a set without instance maps (real labels) gets weight 1
    plain = LabelledSet(data.images, data.labels, data.coords)
    assert torch.all(seg_batch([(plain, 1.0)], 2, 48, torch.Generator().manual_seed(5), 0.0, 4.0)[2] == 1)


def test_seg_loss_pixel_weights():
    from relion_pixer.train import IGNORE, _seg_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, generator=g)
    target = torch.randint(0, 3, (2, 16, 16), generator=g)
    target[0, :4] = IGNORE
    ones = torch.ones(2, 16, 16)
    # unit weights give the unweighted loss; weights change it, and ignored pixels stay ignored
    assert _seg_loss(logits, target, ones).item() == pytest.approx(_seg_loss(logits, target).item(), rel=1e-5)
    heavy = ones.clone()
    heavy[target == 1] = 4.0
    assert _seg_loss(logits, target, heavy).item() != pytest.approx(_seg_loss(logits, target).item(), rel=1e-3)
    on_ignored = ones.clone()
    on_ignored[0, :4] = 50.0
    assert _seg_loss(logits, target, on_ignored).item() == pytest.approx(_seg_loss(logits, target).item(), rel=1e-5)


@pytest.mark.parametrize("stage", ["classifier", "segmenter"])
def test_training_killed_mid_run_resumes_to_the_same_weights(tmp_path, monkeypatch, stage):
    """A run stopped after a checkpoint in either stage and resumed ends with the weights of an uninterrupted run
    (dropout draws from torch's global random state, which the checkpoint must carry)."""
    from relion_pixer import train as train_mod

    cfg = tmp_path / "smoke.toml"
    cfg.write_text(SMOKE)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(["--config", str(cfg), "--out", str(whole)]) == 0

    saved = train_mod.RunDir.save_checkpoint

    class Killed(Exception):
        pass

    def save_then_die(self, state):
        saved(self, state)
        if state["stage"] == stage and state["step"] == 2:
            raise Killed  # the machine goes away right after this checkpoint

    monkeypatch.setattr(train_mod.RunDir, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        main(["--config", str(cfg), "--out", str(killed)])
    monkeypatch.setattr(train_mod.RunDir, "save_checkpoint", saved)
    assert main(["--config", str(cfg), "--out", str(killed)]) == 0

    a = torch.load(whole / "model.pt", weights_only=True)
    b = torch.load(killed / "model.pt", weights_only=True)
    for part in ("classifier", "segmenter"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resuming"


def test_phase_plate_fraction_zero_reproduces_the_earlier_training_set():
    """The option draws no random number when off, so configs written before it still make the same data: the
    pixels below were made by the code before the option existed (commit aa401d7)."""
    from relion_pixer.train import simulated_set

    before = [[2.17428, 0.04796, 1.49272, -0.94957], [0.44893, -1.33899, -1.03409, -0.73665]]
    off = simulated_set(2, 96, seed=3, snr=0.3, progress=False, phase_plate_fraction=0.0)
    assert np.allclose(off.images[0][:2, :4], before, atol=1e-3)
    assert np.allclose(off.images[1][10, 10:14], [-0.99577, 0.03960, -0.83959, -0.94507], atol=1e-3)
    on = simulated_set(2, 96, seed=3, snr=0.3, progress=False, phase_plate_fraction=1.0)
    assert not np.allclose(on.images[0][:2, :4], before, atol=1e-3)
    with pytest.raises(ValueError, match="phase_plate_fraction"):
        simulated_set(1, 96, seed=3, snr=0.3, progress=False, phase_plate_fraction=1.5)


@pytest.fixture
def simulated_options(monkeypatch):
    """The options of every micrograph ``simulate_micrograph`` is asked for from now on (each is still simulated)."""
    import relion_pixer.simulate as simulate

    drawn = []
    real_simulate = simulate.simulate_micrograph

    def spy(rng, **cfg):
        drawn.append(cfg)
        return real_simulate(rng, **cfg)

    monkeypatch.setattr(simulate, "simulate_micrograph", spy)
    return drawn


def test_thin_fraction_draws_thin_families_and_nothing_when_off(simulated_options):
    from relion_pixer.train import THIN_FAMILIES, simulated_set

    before = [[2.17428, 0.04796, 1.49272, -0.94957], [0.44893, -1.33899, -1.03409, -0.73665]]
    off = simulated_set(2, 96, seed=3, snr=0.3, progress=False, thin_fraction=0.0)
    assert np.allclose(off.images[0][:2, :4], before, atol=1e-3)  # the same pixels as without the option

    simulated_options.clear()
    simulated_set(4, 64, seed=3, snr=0.3, progress=False, thin_fraction=1.0)
    drawn = [o["families"] for o in simulated_options]
    assert len(drawn) == 4 and all(len(f) == 1 and f[0] in THIN_FAMILIES for f in drawn)
    with pytest.raises(ValueError, match="thin_fraction"):
        simulated_set(1, 96, seed=3, snr=0.3, progress=False, thin_fraction=-0.1)


def test_crowded_packs_the_particles_and_draws_nothing_when_off(simulated_options):
    """``crowded`` micrographs are simulated at the crowded density and separation, never empty; without it the set
    is the same pixels as before the option existed."""
    from relion_pixer.train import CROWDED_DENSITY, CROWDED_SEPARATION, simulated_set

    before = [[2.17428, 0.04796, 1.49272, -0.94957], [0.44893, -1.33899, -1.03409, -0.73665]]
    off = simulated_set(2, 96, seed=3, snr=0.3, progress=False)
    assert np.allclose(off.images[0][:2, :4], before, atol=1e-3)
    simulated_options.clear()
    packed = simulated_set(3, 96, seed=3, snr=0.3, progress=False, crowded=True)
    for o in simulated_options:
        assert CROWDED_DENSITY[0] <= o["density"] <= CROWDED_DENSITY[1] and not o["empty"]
        assert CROWDED_SEPARATION[0] <= o["min_separation"] <= CROWDED_SEPARATION[1]
    assert sum(len(c) for c in packed.coords) > sum(len(c) for c in simulated_set(3, 96, seed=3, snr=0.3,
                                                                                    progress=False).coords)


def test_families_draws_every_micrograph_from_them(simulated_options):
    from relion_pixer.train import simulated_set

    simulated_set(3, 64, seed=3, snr=0.3, progress=False, families=("shell",))
    assert [o["families"] for o in simulated_options] == [("shell",)] * 3


def test_size_jitter_sets_the_particle_size_against_the_network_scale(monkeypatch):
    """The default range reproduces the earlier training set; a range of one value draws every micrograph's
    particles at that multiple of the diameter the micrograph is scaled with."""
    import relion_pixer.simulate as simulate
    from relion_pixer import NET_DIAMETER_PX
    from relion_pixer.train import simulated_set

    before = [[2.17428, 0.04796, 1.49272, -0.94957], [0.44893, -1.33899, -1.03409, -0.73665]]
    default = simulated_set(2, 96, seed=3, snr=0.3, progress=False, size_jitter=(0.85, 1.15))
    assert np.allclose(default.images[0][:2, :4], before, atol=1e-3)

    sizes = []
    real_config = simulate.random_config

    def spy(rng, **kw):
        cfg = real_config(rng, **kw)
        sizes.append(kw["particle_diameter_px"])
        return cfg

    monkeypatch.setattr(simulate, "random_config", spy)
    simulated_set(3, 64, seed=3, snr=0.3, oversample=2.0, progress=False, size_jitter=(1.3, 1.3))
    assert np.allclose(sizes, NET_DIAMETER_PX * 2.0 * 1.3)
    with pytest.raises(ValueError, match="size_jitter"):
        simulated_set(1, 96, seed=3, snr=0.3, progress=False, size_jitter=(1.2, 0.8))


def test_a_run_folder_made_from_other_settings_starts_afresh_and_a_damaged_cache_is_made_again(tmp_path, capsys):
    """Rerun on the same --out with other settings (here more simulated micrographs and another seed), the earlier
    checkpoint and simulated caches are not reused: the run says which settings changed and starts afresh. A cache
    left damaged (a run killed while writing it) is made again instead of failing every later run."""
    cfg = tmp_path / "smoke.toml"
    cfg.write_text(SMOKE)
    out = tmp_path / "run"
    assert main(["--config", str(cfg), "--out", str(out)]) == 0
    capsys.readouterr()
    other = tmp_path / "other.toml"
    other.write_text(SMOKE.replace("sim_train = 4", "sim_train = 3") + "seed = 7\n")
    assert main(["--config", str(other), "--out", str(out)]) == 0
    said = capsys.readouterr()
    text = said.out + said.err
    assert "made from other settings or inputs (seed, sim_train); starting afresh" in text, text
    assert "resuming" not in text and "data: 3 simulated" in text
    assert json.loads((out / "inputs.json").read_text())["sim_train"] == 3
    (out / "sim_train.pt").write_bytes(b"")  # killed while writing it (an older version wrote it in place)
    (out / "checkpoint.pt").unlink()
    assert main(["--config", str(other), "--out", str(out)]) == 0
    text = "".join(capsys.readouterr())
    assert "sim_train.pt: cannot be read (EOFError); simulating it again" in text and "data: 3 simulated" in text
    assert (out / "sim_train.pt").stat().st_size > 0


def test_no_simulated_replay_is_refused_up_front(tmp_path):
    from relion_pixer.train import train

    with pytest.raises(ValueError, match="sim_train must be at least 1"):
        train(load_config(None, sim_train=0), tmp_path / "run")


def test_a_stop_request_keeps_the_steps_checkpoint_and_the_run_resumes_to_the_same_weights(tmp_path):
    """``stop`` (RELION's Abort, polled after every step) ends training with the checkpoint of the step it stopped
    at; resumed, the run ends with the weights of an uninterrupted one."""
    from relion_pixer.train import TrainingStopped, train

    cfg = tmp_path / "smoke.toml"
    cfg.write_text(SMOKE.replace("checkpoint_every = 2", "checkpoint_every = 100"))
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert main(["--config", str(cfg), "--out", str(whole)]) == 0
    steps = []

    def stop():
        steps.append(1)
        return len(steps) == 8  # the 3rd segmenter step (5 classifier steps first)

    with pytest.raises(TrainingStopped, match="segmenter step 3"):
        train(load_config(cfg), stopped, stop=stop)
    ckpt = torch.load(stopped / "checkpoint.pt", weights_only=False)
    assert (ckpt["stage"], ckpt["step"]) == ("segmenter", 3)
    train(load_config(cfg), stopped)
    a = torch.load(whole / "model.pt", weights_only=True)
    b = torch.load(stopped / "model.pt", weights_only=True)
    for part in ("classifier", "segmenter"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resuming"
