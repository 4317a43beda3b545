"""Networks: shapes, initialisation from the classifier, batch-norm folding, saving and loading, tiling."""

import numpy as np
import pytest
import torch

from relion_pixer import BOX_SIZE
from relion_pixer.models import (
    build_classifier,
    build_segmenter,
    fuse_batchnorm,
    load_pretrained,
    save_models,
    shipped_weights,
)
from relion_pixer.segment import predict_probability


def _randomise_bn(module):
    gen = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)


def test_classifier_shapes():
    clf = build_classifier().eval()
    out = clf(torch.randn(5, 1, BOX_SIZE, BOX_SIZE))
    assert out.shape == (5, 3)
    with pytest.raises(ValueError, match="64 x 64"):
        clf(torch.randn(1, 1, 48, 48))


@pytest.mark.parametrize("shape", [(96, 96), (101, 77), (64, 200)])
def test_segmenter_output_matches_input_size(shape):
    seg = build_segmenter().eval()
    out = seg(torch.randn(2, 1, *shape))
    assert out.shape == (2, 3, *shape)


def test_segmenter_initialised_from_classifier_trunk():
    clf = build_classifier()
    _randomise_bn(clf)
    seg = build_segmenter(clf)
    for (name, a), (_, b) in zip(clf.trunk.state_dict().items(), seg.trunk.state_dict().items()):
        assert torch.equal(a, b), name
    # a copy, not shared: training the segmenter must not change the classifier
    next(seg.trunk.parameters()).data.add_(1.0)
    assert not torch.equal(next(seg.trunk.parameters()), next(clf.trunk.parameters()))


@pytest.mark.parametrize("rates", [(2,), (2, 4, 6, 8), (2, 4, 6, 8, 10)])
def test_number_of_branches(rates):
    seg = build_segmenter(rates=rates)
    assert [b.rate for b in seg.branches] == list(rates)
    with pytest.raises(ValueError):
        build_segmenter(rates=())


def test_fuse_batchnorm_keeps_outputs():
    seg = build_segmenter().eval()
    _randomise_bn(seg)
    x = torch.randn(1, 1, 64, 80)
    before = seg(x)
    fuse_batchnorm(seg)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in seg.modules())
    assert torch.allclose(before, seg(x), atol=1e-4)


def test_save_and_load_roundtrip(tmp_path):
    clf = build_classifier().eval()
    _randomise_bn(clf)
    seg = build_segmenter(clf, rates=(2, 4, 6)).eval()
    path = tmp_path / "model.pt"
    save_models(path, clf, seg, {"note": "test"})
    # the file holds plain tensors and strings only
    torch.load(path, weights_only=True)
    models = load_pretrained(path)
    assert models.meta["note"] == "test"
    assert models.segmenter.rates == (2, 4, 6)
    x = torch.randn(1, 1, 64, 64)
    assert torch.allclose(models.segmenter(x), seg(x), atol=1e-4)
    assert torch.allclose(models.classifier(x), clf(x), atol=1e-4)


def test_average_pooling_trunk_is_kept_through_save_and_load(tmp_path):
    clf = build_classifier(pool="avg").eval()
    assert sum(isinstance(m, torch.nn.AvgPool2d) for m in clf.trunk) == 2
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in clf.trunk)
    seg = build_segmenter(clf).eval()
    assert seg.trunk.pool == "avg"
    path = tmp_path / "avg.pt"
    save_models(path, clf, seg)
    models = load_pretrained(path)
    assert models.segmenter.trunk.pool == "avg" and models.classifier.trunk.pool == "avg"
    x = torch.randn(1, 1, 64, 64)
    assert torch.allclose(models.segmenter(x), seg(x), atol=1e-4)
    # files written before the option have no "pool" entry: their trunks max-pool
    payload = torch.load(path, weights_only=True)
    del payload["pool"]
    torch.save(payload, path)
    assert load_pretrained(path).segmenter.trunk.pool == "max"
    with pytest.raises(ValueError, match="pool must be one of max, avg"):
        build_classifier(pool="median")


def test_branch_width_is_kept_through_save_and_load(tmp_path):
    clf = build_classifier().eval()
    seg = build_segmenter(clf, branch_width=48).eval()
    assert all(b[0][0].out_channels == 48 for b in seg.branches)
    path = tmp_path / "wide.pt"
    save_models(path, clf, seg)
    models = load_pretrained(path)
    assert models.segmenter.hidden == 48
    x = torch.randn(1, 1, 64, 64)
    assert torch.allclose(models.segmenter(x), seg(x), atol=1e-4)
    # files written before the option have no "branch_width" entry: their branches are 32 channels wide
    seg32 = build_segmenter(clf).eval()
    save_models(path, clf, seg32)
    payload = torch.load(path, weights_only=True)
    del payload["branch_width"]
    torch.save(payload, path)
    assert load_pretrained(path).segmenter.hidden == 32


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_pretrained(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.pt"):
        load_pretrained(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="other.pt"):
        load_pretrained(other)
    # one-line reasons, never torch's advice to load untrusted files with weights_only=False
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ValueError, match=r"noise.pt: not a relion_pixer model file \(not a PyTorch file, or a damaged one\)$"):
        load_pretrained(noise)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(shipped_weights().read_bytes()[:100_000])
    with pytest.raises(ValueError, match=r"truncated.pt: .*a damaged one"):
        load_pretrained(truncated)
    pickled = tmp_path / "checkpoint.pt"
    torch.save({"array": np.zeros(3)}, pickled)
    with pytest.raises(ValueError, match=r"checkpoint.pt: .*Python objects besides weights") as info:
        load_pretrained(pickled)
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="is a directory"):
        load_pretrained(tmp_path)
    broken = tmp_path / "broken.pt"
    torch.save({"format": "relion_pixer/1", "widths": [8], "box_size": 48, "classifier": {}, "segmenter": {},
                "rates": [2]}, broken)
    with pytest.raises(ValueError, match="broken.pt: a damaged or incompatible"):
        load_pretrained(broken)


def test_tile_too_small_for_its_margin_is_a_clear_error():
    seg = build_segmenter().eval()
    img = np.zeros((400, 400), np.float32)
    with pytest.raises(ValueError, match="too small for a margin"):
        predict_probability(seg, img, tile=128, margin=64)


@pytest.mark.parametrize("shape", [(701, 1103), (1100, 699), (300, 257)])
def test_tiled_inference_has_no_seams(shape):
    torch.manual_seed(0)
    seg = build_segmenter().eval()
    _randomise_bn(seg)
    fuse_batchnorm(seg)
    img = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    whole = predict_probability(seg, img, tile=4096)
    tiled = predict_probability(seg, img, tile=256, margin=64, batch_size=3)
    assert whole.shape == shape
    assert torch.allclose(whole, tiled, atol=1e-5)
    # a tile that is not a whole number of strides used to leave the last rows and columns unwritten
    for odd_tile in (257, 254):
        assert torch.allclose(whole, predict_probability(seg, img, tile=odd_tile, margin=64), atol=1e-5)
    both = predict_probability(seg, img, tile=256, all_classes=True)
    assert both.shape == (3, *shape)
    assert torch.allclose(both.sum(0), torch.ones(shape), atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (1, 4, 17, 23), (3, 1, 2, 5)])
def test_maxpool2x2_equals_maxpool2d_without_gradients(shape):
    from relion_pixer.models import MaxPool2x2

    x = torch.randn(*shape)
    ref = torch.nn.functional.max_pool2d(x, 2)
    with torch.no_grad():
        assert torch.equal(MaxPool2x2(2)(x), ref)
        assert torch.equal(MaxPool2x2(2)(x.contiguous(memory_format=torch.channels_last)), ref)
    with pytest.raises(ValueError):
        MaxPool2x2(3)


def test_inference_path_equals_the_training_path():
    """Without gradients the networks pool before the ReLU with the fast pooling: exactly the same outputs."""
    from relion_pixer.models import build_classifier, build_segmenter

    torch.manual_seed(0)
    cls = build_classifier().eval()
    seg = build_segmenter(cls).eval()
    boxes, image = torch.randn(5, 1, 64, 64), torch.randn(1, 1, 70, 93)
    with torch.enable_grad():
        ref_c, ref_s = cls(boxes), seg(image)
    with torch.inference_mode():
        assert torch.equal(cls(boxes), ref_c)
        assert torch.equal(seg(image), ref_s)


def test_classifier_context_round_trips_through_the_model_file(tmp_path):
    from relion_pixer.models import build_classifier, build_segmenter, load_pretrained, save_models

    cls = build_classifier(context=32)
    save_models(tmp_path / "m.pt", cls, build_segmenter(cls))
    assert load_pretrained(tmp_path / "m.pt").classifier.context == 32
    assert load_pretrained().classifier.context == 0  # files without the key: no context


def test_cpu_precision_names_and_scope(monkeypatch):
    from relion_pixer import models as models_mod

    monkeypatch.delenv("RELION_PIXER_CPU_PRECISION", raising=False)
    assert models_mod.cpu_precision("auto") in ("float32", "bfloat16")
    assert models_mod.cpu_precision("float32") == "float32"
    with pytest.raises(ValueError, match="RELION_PIXER_CPU_PRECISION.*float16"):
        models_mod.cpu_precision("float16")
    before = models_mod.CPU_PRECISION
    with models_mod.using_cpu_precision("bfloat16"):
        assert models_mod.cpu_precision() == "bfloat16"
        import os

        assert os.environ["RELION_PIXER_CPU_PRECISION"] == "bfloat16"  # for the worker processes it starts
        assert isinstance(models_mod.inference_autocast("cpu"), torch.autocast)
    assert models_mod.CPU_PRECISION == before and "RELION_PIXER_CPU_PRECISION" not in __import__("os").environ
    with models_mod.using_cpu_precision("float32"):
        assert not isinstance(models_mod.inference_autocast("cpu"), torch.autocast)
        x = torch.randn(1, 1, 64, 64)
        seg = build_segmenter(build_classifier()).eval()
        assert predict_probability(seg, x[0, 0]).dtype == torch.float32
