"""Tests of relion_pixer.classify (3-way classifier filter) with a deterministic test-double classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relion_pixer import BOX_SIZE
from relion_pixer.classify import FilterResult, extract_boxes, filter_candidates

GAIN = 4.0


class CentreMean(torch.nn.Module):
    """Test double: logits (0, GAIN * mean of the central 4 x 4 pixels, GAIN * mean of the box's outer ring).

    P(particle) = softmax(...)[1] is then a known function of the box content. Records how it was called.
    """

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(GAIN), requires_grad=False)
        self.calls = []

    def forward(self, x):
        assert x.ndim == 4 and x.shape[1] == 1 and x.dtype == torch.float32
        self.calls.append((len(x), self.training, torch.is_inference_mode_enabled()))
        c = x.shape[-1] // 2
        centre = x[:, 0, c - 2 : c + 2, c - 2 : c + 2].mean(dim=(1, 2))
        ring = torch.cat([x[:, 0, :2, :].flatten(1), x[:, 0, -2:, :].flatten(1)], dim=1).mean(dim=1)
        return torch.stack([torch.zeros_like(centre), self.scale * centre, self.scale * ring], dim=1)


def expected_fom(centre_value, ring_value=0.0):
    z = np.array([0.0, GAIN * centre_value, GAIN * ring_value])
    e = np.exp(z - z.max())
    return e[1] / e.sum()


def blob_image(values, shape=(300, 400), spacing=70):
    """Image with flat 9 x 9 squares of the given values on a grid; returns image and their centres."""
    img = np.zeros(shape, np.float32)
    xy = []
    per_row = (shape[1] - 40) // spacing
    for i, v in enumerate(values):
        x = 40 + (i % per_row) * spacing
        y = 40 + (i // per_row) * spacing
        img[y - 4 : y + 5, x - 4 : x + 5] = v
        xy.append((x, y))
    return img, np.array(xy, dtype=np.float64)


def naive_box(img, x, y, b):
    h, w = img.shape
    out = np.zeros((b, b), np.float32)
    cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    for i in range(b):
        for j in range(b):
            r, c = cy - b // 2 + i, cx - b // 2 + j
            if 0 <= r < h and 0 <= c < w:
                out[i, j] = img[r, c]
    return out


# ---------------------------------------------------------------------------------------------- boxes


@pytest.mark.parametrize("b", [BOX_SIZE, 15, 1])
def test_extract_boxes_matches_a_naive_loop(b, rng):
    img = rng.normal(size=(50, 70)).astype(np.float32)
    xy = np.array([[0, 0], [69, 49], [35.4, 20.6], [3.5, 47.49], [69.4, 0.2], [-0.3, 49.2], [-5, 10], [75, 52]], float)
    if b == 1:
        xy = xy[:-2]  # centres off the image are allowed only within half a box
    boxes = extract_boxes(img, xy, box_size=b)
    assert boxes.shape == (len(xy), 1, b, b) and boxes.dtype == torch.float32
    for k, (x, y) in enumerate(xy):
        np.testing.assert_array_equal(boxes[k, 0].numpy(), naive_box(img, x, y, b))
    # the centre pixel sits at index b // 2
    assert boxes[2, 0, b // 2, b // 2] == img[21, 35]


def test_extract_boxes_rejects_far_centres():
    img = np.zeros((40, 40), np.float32)
    with pytest.raises(ValueError, match="outside"):
        extract_boxes(img, [[10, 10], [40 + BOX_SIZE, 5]])
    with pytest.raises(ValueError, match="N x 2"):
        extract_boxes(img, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="2D"):
        extract_boxes(np.zeros((2, 40, 40)), [[1, 1]])
    with pytest.raises(ValueError, match="NaN"):
        extract_boxes(img, [[np.nan, 1]])


# ---------------------------------------------------------------------------------------------- filter


def test_threshold_fom_and_order():
    values = [0.1, 0.9, 0.3, 0.5, 0.2, 0.8, 0.0, 0.45]
    img, xy = blob_image(values)
    net = CentreMean()
    res = filter_candidates(net, img, xy, threshold=0.6)
    assert isinstance(res, FilterResult)
    foms = np.array([expected_fom(v) for v in values])
    keep = np.flatnonzero(foms >= 0.6)
    order = keep[np.argsort(-foms[keep])]
    assert len(keep) not in (0, len(values))  # the threshold does cut
    np.testing.assert_allclose(res.fom, foms[order], rtol=1e-5)
    np.testing.assert_array_equal(res.xy, xy[order])
    assert res.xy.dtype == np.float64 and res.fom.dtype == np.float64
    assert res.probs.shape == (len(order), 3)
    np.testing.assert_allclose(res.probs.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(res.fom, res.probs[:, 1].astype(np.float64))
    assert np.all(np.diff(res.fom) <= 0)
    # threshold 0 keeps all, 1 keeps none of these
    assert len(filter_candidates(net, img, xy, threshold=0.0).xy) == len(values)
    assert len(filter_candidates(net, img, xy, threshold=1.0).xy) == 0
    # a fom equal to the threshold is kept
    t = float(res.fom[-1])
    assert len(filter_candidates(net, img, xy, threshold=t).xy) == len(order)


def test_cap():
    values = np.linspace(0.2, 1.0, 12)
    img, xy = blob_image(values)
    net = CentreMean()
    res = filter_candidates(net, img, xy, threshold=0.0, max_particles=5)
    assert len(res.xy) == 5
    np.testing.assert_array_equal(res.xy, xy[::-1][:5])  # the five highest values
    assert len(filter_candidates(net, img, xy, threshold=0.0, max_particles=0).xy) == 12  # 0 = no cap
    assert len(filter_candidates(net, img, xy, threshold=0.0, max_particles=100).xy) == 12
    # the cap applies after the threshold
    res = filter_candidates(net, img, xy, threshold=0.95, max_particles=5)
    foms = np.array([expected_fom(v) for v in values])
    assert len(res.xy) == min(5, int((foms >= 0.95).sum()))


def test_ties_keep_input_order():
    img, xy = blob_image([0.7, 0.9, 0.7, 0.7])
    res = filter_candidates(CentreMean(), img, xy, threshold=0.0)
    np.testing.assert_array_equal(res.xy, xy[[1, 0, 2, 3]])


def double_fom(box):
    """P(particle) that CentreMean gives for one box (numpy, by hand)."""
    c = box.shape[-1] // 2
    return expected_fom(box[c - 2 : c + 2, c - 2 : c + 2].mean(), np.concatenate([box[:2].ravel(), box[-2:].ravel()]).mean())


def test_edge_boxes_are_zero_padded():
    img = np.full((100, 120), 1.0, np.float32)
    xy = np.array([[60.0, 50.0], [0.0, 0.0], [119.0, 50.0], [60.0, 99.0]])
    res = filter_candidates(CentreMean(), img, xy, threshold=0.0)
    # by hand for the corner (0, 0): box rows/cols -32..31; the central 4 x 4 (rows/cols -2..1) has 4 pixels
    # inside; of the ring (rows -32, -31, 30, 31), rows 30 and 31 have columns 0..31 inside: 64 of 256 pixels
    corner = res.fom[np.flatnonzero((res.xy == [0.0, 0.0]).all(axis=1))[0]]
    assert corner == pytest.approx(expected_fom(4 / 16, 64 / 256), rel=1e-5)
    for (x, y), fom in zip(res.xy, res.fom):
        assert fom == pytest.approx(double_fom(naive_box(img, x, y, BOX_SIZE)), rel=1e-5)
    assert len(set(np.round(res.fom, 6))) == 4  # padding changed each edge box differently


def test_batching_gives_the_same_result(rng):
    img = rng.normal(size=(200, 260)).astype(np.float32)
    xy = rng.uniform([0, 0], [259, 199], size=(37, 2))
    ref = filter_candidates(CentreMean(), img, xy, threshold=0.3, max_particles=0, batch_size=1000)
    assert 0 < len(ref.xy) < len(xy)
    for bs in (1, 7, 36, 37):
        net = CentreMean()
        res = filter_candidates(net, img, xy, threshold=0.3, max_particles=0, batch_size=bs)
        assert max(n for n, _, _ in net.calls) <= bs
        np.testing.assert_array_equal(res.xy, ref.xy)
        np.testing.assert_allclose(res.fom, ref.fom, rtol=1e-6)
        np.testing.assert_allclose(res.probs, ref.probs, rtol=1e-6)


def test_runs_in_eval_and_inference_mode_and_restores_training():
    img, xy = blob_image([0.9, 0.8])
    net = CentreMean()
    net.train()
    filter_candidates(net, img, xy)
    assert net.calls and all(not training and inference for _, training, inference in net.calls)
    assert net.training  # restored
    net.eval()
    filter_candidates(net, img, xy)
    assert not net.training


def test_empty_candidates_do_not_call_the_classifier():
    net = CentreMean()
    res = filter_candidates(net, np.zeros((50, 50), np.float32), np.zeros((0, 2)))
    assert res.xy.shape == (0, 2) and res.fom.shape == (0,) and res.probs.shape == (0, 3)
    assert net.calls == []
    assert len(filter_candidates(net, np.zeros((50, 50), np.float32), []).xy) == 0


def test_torch_image_input():
    img, xy = blob_image([0.9, 0.1, 0.8])
    a = filter_candidates(CentreMean(), img, xy, threshold=0.5)
    b = filter_candidates(CentreMean(), torch.from_numpy(img), xy, threshold=0.5)
    np.testing.assert_array_equal(a.xy, b.xy)
    np.testing.assert_array_equal(a.fom, b.fom)


class WrongShape(torch.nn.Module):
    def forward(self, x):
        return torch.zeros(len(x), 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(threshold=1.5), "threshold"),
        (dict(threshold=-0.1), "threshold"),
        (dict(max_particles=-1), "max_particles"),
        (dict(batch_size=0), "batch_size"),
        (dict(box_size=0), "box_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    img, xy = blob_image([0.9])
    with pytest.raises(ValueError, match=match):
        filter_candidates(CentreMean(), img, xy, **kwargs)


def test_bad_classifier_output_and_device():
    img, xy = blob_image([0.9])
    with pytest.raises(ValueError, match="N x 3"):
        filter_candidates(WrongShape(), img, xy)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="device"):
            filter_candidates(CentreMean(), img, xy, device="cuda")


@pytest.mark.gpu
def test_cuda_gives_the_same_result(rng):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    img = rng.normal(size=(200, 260)).astype(np.float32)
    xy = rng.uniform([0, 0], [259, 199], size=(50, 2))
    cpu = filter_candidates(CentreMean(), img, xy, threshold=0.2)
    gpu = filter_candidates(CentreMean().cuda(), img, xy, threshold=0.2, device="cuda")
    np.testing.assert_array_equal(cpu.xy, gpu.xy)
    np.testing.assert_allclose(cpu.fom, gpu.fom, rtol=1e-5)


def _small_classifier(*layers, channels: int = 1):
    """A Classifier with the given trunk layers (stride 4)."""
    from relion_pixer.models import Classifier

    torch.manual_seed(3)
    trunk = torch.nn.Sequential(*layers)
    trunk.stride, trunk.out_channels = 4, channels
    return Classifier(trunk).eval()


def _pooling_classifier():
    """A Classifier whose trunk is a 4 x 4 average pooling (stride 4, no padding): its features at a stride-aligned
    box equal the box's own, whatever lies around, so the shared pass must give exactly the boxes' results."""
    return _small_classifier(torch.nn.AvgPool2d(4))


@pytest.mark.usefixtures("float32_inference")
def test_context_mode_reads_each_box_window(rng):
    from relion_pixer.classify import classify_candidates

    net = _pooling_classifier()
    img = rng.normal(size=(230, 270)).astype(np.float32)
    # centres whose box corners (centre - 32) are whole strides, some half a box outside the image
    xy = np.c_[rng.integers(-7, 75, 40) * 4, rng.integers(-7, 65, 40) * 4].astype(np.float64)
    boxes = classify_candidates(net, img, xy, context=False)
    np.testing.assert_allclose(classify_candidates(net, img, xy, context=True), boxes, atol=1e-6)
    assert np.ptp(boxes[:, 1]) > 0.01  # the boxes differ, so a wrong window would show
    # off-stride centres read the window of the nearest stride (up to 2 px away)
    np.testing.assert_allclose(classify_candidates(net, img, xy + [1.2, -1.7], context=True), boxes, atol=1e-6)


def test_context_mode_bands_equal_one_pass(rng, monkeypatch):
    from relion_pixer import classify

    net = _small_classifier(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(4), channels=2)
    img = rng.normal(size=(230, 411)).astype(np.float32)
    xy = np.c_[rng.uniform(-30, 440, 60), rng.uniform(-30, 260, 60)]  # some half a box outside
    whole = classify.classify_candidates(net, img, xy, context=True)
    monkeypatch.setattr(classify, "_BAND_PIXELS", 5000)  # bands of a few rows
    np.testing.assert_array_equal(classify.classify_candidates(net, img, xy, context=True), whole)
    # other classifiers (no trunk and head) always get boxes
    a = classify.classify_candidates(CentreMean(), img, xy, context=True)
    np.testing.assert_array_equal(a, classify.classify_candidates(CentreMean(), img, xy, context=False))


@pytest.mark.usefixtures("float32_inference")
def test_a_classifier_trained_with_context_gives_the_same_in_both_modes(rng):
    """Its trunk sees 32 px around each box; one pass over the image gives the box's features the same, so
    candidates at whole strides get the same probabilities either way, and the shared pass is its default."""
    from relion_pixer import classify
    from relion_pixer.models import build_classifier, fuse_batchnorm

    torch.manual_seed(1)
    net = fuse_batchnorm(build_classifier(context=32).eval())
    img = rng.normal(size=(200, 230)).astype(np.float32)
    xy = np.c_[rng.integers(-7, 64, 30) * 4, rng.integers(-7, 57, 30) * 4].astype(np.float64)
    boxes = classify.classify_candidates(net, img, xy, context=False)
    assert np.ptp(boxes[:, 1]) > 1e-3
    np.testing.assert_allclose(classify.classify_candidates(net, img, xy, context=True), boxes, atol=1e-5)
    assert classify._uses_context(net, BOX_SIZE, None) and not classify._uses_context(CentreMean(), BOX_SIZE, None)
    with pytest.raises(ValueError, match="128 x 128"):
        net(torch.zeros(1, 1, BOX_SIZE, BOX_SIZE))
    with pytest.raises(ValueError, match="whole number"):
        build_classifier(context=30)
