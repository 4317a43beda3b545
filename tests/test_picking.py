"""Tests of relion_pixer.picking (grid-based local maximum)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

from relion_pixer import picking
from relion_pixer.picking import DEFAULT_THRESHOLD, PickResult, pick_centres, score_map

D = 32  # particle diameter in pixels


def discs(shape, centres, radius=D / 2, values=None):
    """Probability map with filled discs at (x, y) centres."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape, dtype=np.float32)
    for i, (x, y) in enumerate(centres):
        v = 1.0 if values is None else values[i]
        inside = (xx - x) ** 2 + (yy - y) ** 2 <= radius**2
        out[inside] = np.maximum(out[inside], v)
    return out


def assert_same_points(found, expected, tol):
    found = np.asarray(found, dtype=float).reshape(-1, 2)
    expected = np.asarray(expected, dtype=float).reshape(-1, 2)
    assert len(found) == len(expected), f"found {len(found)} picks, expected {len(expected)}:\n{found}"
    d = np.hypot(*(found[:, None, :] - expected[None, :, :]).transpose(2, 0, 1))
    # each expected point has its own pick
    assert np.all(d.min(axis=0) <= tol), f"picks\n{found}\nexpected\n{expected}"
    assert np.all(d.min(axis=1) <= tol)


# ---------------------------------------------------------------------------------------------- interface


def test_result_types_and_order():
    m = discs((200, 260), [(50, 60), (150, 120), (210, 60)], values=[0.7, 1.0, 0.85])
    res = pick_centres(m, D)
    assert isinstance(res, PickResult)
    xy, score = res
    assert xy.dtype == np.float64 and xy.shape == (3, 2)
    assert score.dtype == np.float64 and score.shape == (3,)
    assert np.all(np.diff(score) <= 0)
    assert_same_points(xy[0], [(150, 120)], 0.01)
    assert_same_points(xy[2], [(50, 60)], 0.01)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(diameter_px=0), "diameter"),
        (dict(diameter_px=-5), "diameter"),
        (dict(diameter_px=float("nan")), "diameter"),
        (dict(diameter_px=32, min_distance_px=-1), "min_distance"),
        (dict(diameter_px=32, margin_px=-1), "margin"),
        (dict(diameter_px=32, sigma=-1), "sigma"),
        (dict(diameter_px=32, backend="opencl"), "backend"),
        (dict(diameter_px=32, max_iter=0), "max_iter"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pick_centres(np.zeros((64, 64), np.float32), **kwargs)


@pytest.mark.parametrize("shape", [(64,), (2, 64, 64), ()])
def test_not_2d(shape):
    with pytest.raises(ValueError, match="2D"):
        pick_centres(np.zeros(shape, np.float32), D)


def test_non_finite_map():
    m = discs((100, 100), [(50, 50)])
    m[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pick_centres(m, D)


def test_torch_input_matches_numpy():
    torch = pytest.importorskip("torch")
    m = discs((150, 220), [(40, 40), (150, 100), (182, 100)])
    a = pick_centres(m, D)
    b = pick_centres(torch.from_numpy(m), D)
    c = pick_centres(torch.from_numpy(m).double(), D, backend="numpy")
    np.testing.assert_allclose(a.xy, b.xy, atol=1e-3)
    np.testing.assert_allclose(a.xy, c.xy, atol=1e-4)
    np.testing.assert_allclose(a.score, b.score, atol=1e-3)
    d = pick_centres(torch.from_numpy(m).to(torch.bfloat16).requires_grad_(True), D)  # any float dtype, grad
    assert_same_points(d.xy, a.xy, 0.1)


def test_cupy_backend_without_cupy_is_a_clear_error():
    try:
        import cupy  # noqa: F401

        pytest.skip("cupy is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="cupy"):
        pick_centres(np.zeros((64, 64), np.float32), D, backend="cupy")


# ---------------------------------------------------------------------------------------------- known maxima


def test_single_particle():
    m = discs((128, 128), [(70, 45)])
    xy, score = pick_centres(m, D)
    assert_same_points(xy, [(70, 45)], 1e-3)
    # a whole disc smoothed by the normalised Gaussian (sigma = D/6) scores 1 - exp(-4.5) ~ 0.989 at its centre
    assert score[0] == pytest.approx(1 - np.exp(-4.5), abs=0.01)


def test_subpixel_centre_of_a_gaussian_blob():
    yy, xx = np.mgrid[:120, :140]
    x0, y0 = 71.3, 40.65
    m = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 7.0**2)).astype(np.float32)
    xy, _ = pick_centres(m, D, threshold=0.1)
    assert_same_points(xy, [(x0, y0)], 0.1)
    xy0, _ = pick_centres(m, D, threshold=0.1, subpixel=False)
    assert_same_points(xy0, [(71, 41)], 1e-9)


def test_ellipse_centre():
    yy, xx = np.mgrid[:160, :160]
    m = ((((xx - 80) / 18.0) ** 2 + ((yy - 70) / 10.0) ** 2) <= 1).astype(np.float32)
    xy, _ = pick_centres(m, D)
    assert_same_points(xy, [(80, 70)], 1e-3)


@pytest.mark.parametrize("sep, weak", [(32, 0.8), (36, 0.6), (28, 1.0), (24, 1.0)])
@pytest.mark.parametrize("angle", [0.0, 37.0, 90.0])
def test_touching_and_overlapping_pairs(sep, weak, angle):
    # touching pairs of unequal heights (the weaker one must survive too) and overlapping pairs of equal ones
    # (an overlapping weaker particle has its centre inside the stronger one's disc: not resolvable)
    c = np.array([100.0, 90.0])
    u = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))]) * sep / 2
    centres = [tuple(c - u), tuple(c + u)]
    m = discs((180, 200), centres, values=[1.0, weak])
    xy, score = pick_centres(m, D)
    # overlapping discs pull the smoothed peaks towards each other by up to about 4 px at 25 % overlap
    assert_same_points(xy, centres, 1.0 if sep >= 32 else 4.5)
    if weak < 1:
        assert score[0] > score[1]
        assert_same_points(xy[0], centres[0], 1.0)


def test_cluster_of_touching_particles():
    # a hexagonal patch of 7 touching particles
    c = np.array([120.0, 110.0])
    centres = [tuple(c)] + [tuple(c + 32 * np.array([np.cos(a), np.sin(a)])) for a in np.radians(np.arange(0, 360, 60))]
    m = discs((230, 240), centres)
    xy, _ = pick_centres(m, D)
    assert_same_points(xy, centres, 1.5)


def test_particles_on_edges_and_corners():
    H, W = 150, 210
    centres = [(0, 0), (W - 1, 70), (100, H - 1), (20, 100), (W - 1, H - 1)]
    m = discs((H, W), centres)
    xy, _ = pick_centres(m, D)
    assert_same_points(xy, centres, 1e-3)
    assert np.all((xy >= 0) & (xy <= [W - 1, H - 1]))


def test_particle_cut_by_the_edge_is_picked_inside_the_image():
    # the map is reflected at the edges: a particle whose centre is within about a quarter diameter of the
    # edge is picked on the edge (its box leaves the micrograph in any case)
    for e in (3, 6, 10):
        xy, _ = pick_centres(discs((100, 120), [(60, e)]), D)
        assert len(xy) == 1
        assert abs(xy[0, 0] - 60) < 1e-3
        assert 0 <= xy[0, 1] <= e


def test_margin():
    H, W = 150, 210
    centres = [(0, 0), (16, 70), (100, H - 1 - 20), (120, 60)]
    m = discs((H, W), centres)
    kw = dict(subpixel=False)  # integer positions, to test the boundary exactly
    assert len(pick_centres(m, D, margin_px=0, **kw).xy) == 4
    # a centre exactly `margin` from the edge is kept, closer ones are not
    assert_same_points(pick_centres(m, D, margin_px=16, **kw).xy, [(16, 70), (100, H - 21), (120, 60)], 0)
    assert_same_points(pick_centres(m, D, margin_px=16.5, **kw).xy, [(100, H - 21), (120, 60)], 0)
    assert_same_points(pick_centres(m, D, margin_px=32, **kw).xy, [(120, 60)], 0)
    assert_same_points(pick_centres(m, D, margin_px=19.5).xy, [(100, H - 21), (120, 60)], 0.01)
    assert len(pick_centres(m, D, margin_px=100).xy) == 0


@pytest.mark.parametrize("transpose", [False, True])
def test_non_square_maps_both_orientations(transpose):
    # PIXER's original kernels used the width as the row stride and broke on non-square micrographs
    rng = np.random.default_rng(5)
    H, W = 97, 511
    centres = [(20, 20), (490, 80), (250, 48), (282, 48), (400, 16), (60, 96)]
    m = discs((H, W), centres)
    m = np.clip(scipy.ndimage.gaussian_filter(m, 1.5) + rng.normal(0, 0.05, m.shape), 0, 1).astype(np.float32)
    if transpose:
        m = m.T.copy()
        centres = [(y, x) for x, y in centres]
    xy, _ = pick_centres(m, D)
    assert_same_points(xy, centres, 1.5)


def test_transposed_map_gives_transposed_picks():
    rng = np.random.default_rng(9)
    m = rng.random((123, 301)).astype(np.float32)
    a = pick_centres(m, D, threshold=0.0)
    b = pick_centres(m.T.copy(), D, threshold=0.0)
    assert len(a.xy) > 10
    key = lambda p: np.lexsort((p[:, 1].round(6), p[:, 0].round(6)))  # noqa: E731
    np.testing.assert_allclose(a.xy[key(a.xy)], b.xy[:, ::-1][key(b.xy[:, ::-1])], atol=0.02)


@pytest.mark.parametrize("shape", [(0, 0), (0, 50), (40, 0)])
def test_empty_map(shape):
    xy, score = pick_centres(np.zeros(shape, np.float32), D)
    assert xy.shape == (0, 2) and score.shape == (0,)


@pytest.mark.parametrize("value", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("sigma", [None, 0.0, 2.0])
def test_constant_map_has_no_peak(value, sigma):
    xy, score = pick_centres(np.full((130, 170), value, np.float32), D, sigma=sigma, threshold=None)
    assert len(xy) == 0 and len(score) == 0


def test_ramp_has_one_peak_at_its_corner():
    yy, xx = np.mgrid[:70, :90]
    m = ((xx + 2 * yy) / (89 + 2 * 69)).astype(np.float32)
    xy, score = pick_centres(m, D, sigma=0, threshold=None)
    assert_same_points(xy, [(89, 69)], 1e-9)
    assert score[0] == pytest.approx(1.0)


def test_tiny_map_smaller_than_a_cell():
    m = discs((7, 5), [(2, 3)], radius=2)
    xy, _ = pick_centres(m, D, sigma=0.7)
    assert_same_points(xy, [(2, 3)], 0.5)


# ---------------------------------------------------------------------------------------------- selection


def test_threshold():
    m = discs((128, 256), [(60, 60), (180, 60)], values=[0.4, 0.9])
    assert_same_points(pick_centres(m, D).xy, [(180, 60)], 1e-3)  # default 0.5
    assert_same_points(pick_centres(m, D, threshold=0.3).xy, [(60, 60), (180, 60)], 1e-3)
    assert_same_points(pick_centres(m, D, threshold=None).xy, [(60, 60), (180, 60)], 1e-3)
    assert len(pick_centres(m, D, threshold=0.95).xy) == 0
    s = pick_centres(m, D, threshold=None).score
    # a threshold equal to a pick's score keeps it
    assert len(pick_centres(m, D, threshold=float(s[1])).xy) == 2
    assert DEFAULT_THRESHOLD == 0.5


def test_min_distance_keeps_the_higher_score():
    centres = [(80, 80), (114, 80)]  # 34 px apart
    m = discs((160, 200), centres, values=[0.8, 1.0])
    assert len(pick_centres(m, D).xy) == 2  # default min distance = D/2 = 16
    xy, _ = pick_centres(m, D, min_distance_px=40)
    assert len(xy) == 1
    assert xy[0, 0] > 110  # the brighter particle
    assert len(pick_centres(m, D, min_distance_px=0).xy) == 2


def test_min_distance_default_is_half_the_diameter():
    # two peaks 15 px apart merge by default (min distance 16) but not with min_distance 14
    yy, xx = np.mgrid[:100, :120]
    m = (np.exp(-((xx - 50) ** 2 + (yy - 50) ** 2) / 8.0) + 0.9 * np.exp(-((xx - 65) ** 2 + (yy - 50) ** 2) / 8.0)).astype(
        np.float32
    )
    kw = dict(sigma=0, threshold=0.1)
    assert len(pick_centres(m, D, **kw).xy) == 1
    assert len(pick_centres(m, D, min_distance_px=14, **kw).xy) == 2


def test_greedy_suppression_matches_sequential_rule():
    rng = np.random.default_rng(3)
    for trial in range(20):
        xy = rng.uniform(0, 100, size=(int(rng.integers(2, 80)), 2))
        r = float(rng.uniform(3, 25))
        kept = []
        for i in range(len(xy)):
            if all(np.hypot(*(xy[i] - xy[j])) >= r for j in kept):
                kept.append(i)
        np.testing.assert_array_equal(picking._greedy_suppression(xy, r), kept)


def test_noisy_blurred_random_field_is_found():
    rng = np.random.default_rng(11)
    H, W = 300, 420
    centres = []
    while len(centres) < 40:
        p = rng.uniform([D / 2, D / 2], [W - 1 - D / 2, H - 1 - D / 2])  # (edge particles: see above)
        if all(np.hypot(*(p - q)) >= 40 for q in centres):
            centres.append(p)
    m = discs((H, W), centres)
    m = np.clip(scipy.ndimage.gaussian_filter(m, 2.0) + rng.normal(0, 0.15, m.shape), 0, 1).astype(np.float32)
    xy, _ = pick_centres(m, D)
    assert_same_points(xy, centres, 2.0)


def _kernel_reference(score, starts, half, max_iter):
    """Pure-Python transcription of the CUDA climbing kernel (one candidate at a time)."""
    h, w = score.shape
    out = []
    for s in starts:
        y, x = divmod(int(s), w)
        it = 0
        while it < max_iter:
            best, by, bx = score[y, x], y, x
            for yy in range(max(y - half, 0), min(y + half, h - 1) + 1):
                for xx in range(max(x - half, 0), min(x + half, w - 1) + 1):
                    if score[yy, xx] > best:
                        best, by, bx = score[yy, xx], yy, xx
            if (by, bx) == (y, x):
                break
            y, x = by, bx
            it += 1
        out.append(y * w + x if it < max_iter else -1)
    return np.array(out)


@pytest.mark.parametrize("max_iter", [1000, 2])
def test_vectorised_climb_matches_the_gpu_kernel_logic(max_iter):
    # many exact ties (values quantised to tenths): both must break them the same way
    rng = np.random.default_rng(4)
    score = np.round(scipy.ndimage.gaussian_filter(rng.random((45, 61)), 1.0) * 20) / 10
    score = score.astype(np.float32)
    cell, half = 5, 3
    starts = picking._cell_maxima(score, cell, np)
    ref = np.unique(_kernel_reference(score, starts, half, max_iter))
    ref = ref[ref >= 0]
    rows, cols, *_ = picking._peaks_numpy(score, cell, half, max_iter)
    np.testing.assert_array_equal(np.sort(rows * score.shape[1] + cols), ref)
    assert len(ref) > 3


@pytest.mark.parametrize("edge", picking.EDGES)
def test_score_map_is_the_normalised_gaussian_smoothing(edge):
    rng = np.random.default_rng(2)
    m = rng.random((90, 130)).astype(np.float32)
    for sigma in (1.5, 5.0, 10.0):  # direct and FFT paths
        ref = scipy.ndimage.gaussian_filter(m.astype(np.float64), sigma, mode=edge, truncate=picking.TRUNCATE)
        np.testing.assert_allclose(score_map(m, D, sigma=sigma, edge=edge), ref, atol=2e-6)
    np.testing.assert_array_equal(score_map(m, D, sigma=0, edge=edge), m)


def test_edge_constant_keeps_a_cut_particle_near_its_centre(monkeypatch):
    # reflected, a particle the edge cuts merges with its mirror image and is picked nearer the edge; with zeros
    # beyond the edge it is picked near the centre of its visible part (session 23, tune_defaults.py --edge)
    for e, pull in ((0.3 * D, 0.09 * D), (0.4 * D, 0.04 * D)):
        m = discs((100, 120), [(60, e)])
        (x_r, y_r), = pick_centres(m, D, threshold=0.1).xy
        (x_c, y_c), = pick_centres(m, D, threshold=0.1, edge="constant").xy
        assert abs(x_r - 60) < 1e-3 and abs(x_c - 60) < 1e-3
        assert y_r < e - pull  # pulled outward
        assert e <= y_c <= (e + D / 2) / 2 + 0.5  # inward, at most to the visible part's centre
    # None reads picking.EDGE at each call
    monkeypatch.setattr(picking, "EDGE", "constant")
    np.testing.assert_array_equal(pick_centres(m, D, threshold=0.1).xy, [[x_c, y_c]])
    with pytest.raises(ValueError, match="edge must be one of"):
        pick_centres(m, D, edge="wrap")
    with pytest.raises(ValueError, match="edge must be one of"):
        score_map(m, D, edge="nearest")


# ---------------------------------------------------------------------------------------------- GPU


def _cuda():
    """Skips without a CUDA device; on a CUDA machine a CuPy that cannot compile or launch fails the test."""
    from conftest import cuda_or_skip

    torch, cupy = cuda_or_skip(need_cupy=True)
    return cupy, torch


def separated_centres(rng, shape, n, min_sep=40.0, border=D / 2):
    centres = []
    for _ in range(50 * n):
        p = rng.uniform([border, border], [shape[1] - 1 - border, shape[0] - 1 - border])
        if all(np.hypot(*(p - q)) >= min_sep for q in centres):
            centres.append(p)
        if len(centres) == n:
            break
    return np.array(centres)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(300, 420), (511, 97), (1024, 1024)])
def test_cupy_backend_gives_the_same_picks(shape):
    cupy, torch = _cuda()
    rng = np.random.default_rng(21)
    centres = separated_centres(rng, shape, max(4, shape[0] * shape[1] // 4000))
    m = discs(shape, centres)
    m = np.clip(scipy.ndimage.gaussian_filter(m, 2.0) + rng.normal(0, 0.1, m.shape), 0, 1).astype(np.float32)
    cpu = pick_centres(m, D)
    t = torch.from_numpy(m).cuda()
    gpu = pick_centres(t, D)  # auto -> CuPy, through DLPack
    assert len(cpu.xy) == len(centres)
    assert len(gpu.xy) == len(cpu.xy)
    assert_same_points(gpu.xy, cpu.xy, 0.05)
    np.testing.assert_allclose(np.sort(gpu.score), np.sort(cpu.score), atol=1e-5)
    # the climbing alone (no smoothing, integer positions): exactly the same picks
    cpu0 = pick_centres(m, D, sigma=0, threshold=0.2, subpixel=False)
    gpu0 = pick_centres(t, D, sigma=0, threshold=0.2, subpixel=False)
    np.testing.assert_array_equal(cpu0.xy, gpu0.xy)
    np.testing.assert_array_equal(cpu0.score, gpu0.score)
    # a host map sent to the GPU, a half-precision tensor, and score_map on the GPU
    np.testing.assert_allclose(pick_centres(m, D, backend="cupy").xy, gpu.xy, atol=1e-4)
    assert len(pick_centres(t.half(), D).xy) == len(cpu.xy)
    np.testing.assert_allclose(cupy.asnumpy(score_map(t, D)), score_map(m, D), atol=1e-5)
    for sigma in (1.5, None):  # zeros beyond the edge, direct and FFT paths
        np.testing.assert_allclose(cupy.asnumpy(score_map(t, D, sigma=sigma, edge="constant")),
                                   score_map(m, D, sigma=sigma, edge="constant"), atol=1e-5)
    # a CUDA tensor on the NumPy backend is copied to the host
    np.testing.assert_allclose(pick_centres(t, D, backend="numpy").xy, cpu.xy)


def test_adaptive_threshold_follows_the_typical_score():
    from relion_pixer.picking import adaptive_threshold

    clean = np.array([0.98, 0.97, 0.95, 0.96, 0.2, 0.1])  # particles near 1, two faint specks
    t = adaptive_threshold(clean, floor=0.05, relative=0.3)
    assert t == pytest.approx(0.3 * np.percentile(clean, 75))
    assert (clean >= t).sum() == 4
    noisy = np.array([0.12, 0.1, 0.09, 0.08, 0.06, 0.04])  # every particle faint: the cut falls to the floor
    assert adaptive_threshold(noisy, floor=0.05, relative=0.3) == 0.05
    assert adaptive_threshold(clean, floor=0.05, relative=0.0) == 0.05
    assert adaptive_threshold(np.array([]), floor=0.2, relative=0.3) == 0.2
    assert adaptive_threshold(np.array([0.1]), floor=0.2, relative=0.3) == 0.2  # nothing reaches the floor


def test_adaptive_threshold_odds_cut_is_tight_when_confident_and_loose_when_not():
    from relion_pixer.picking import adaptive_threshold

    clean = np.array([0.98, 0.975, 0.975, 0.97, 0.9, 0.7, 0.4])  # typical score 0.975: odds 39
    t = adaptive_threshold(clean, floor=0.05, relative=0.0, odds=0.05)  # odds 1.95
    assert t == pytest.approx(1.95 / 2.95)
    assert (clean >= t).sum() == 6  # the half-confident 0.4 goes, 0.7 stays
    noisy = np.array([0.35, 0.3, 0.3, 0.25, 0.1, 0.06])  # typical score 0.3: the odds cut falls below the floor
    assert adaptive_threshold(noisy, floor=0.05, relative=0.0, odds=0.05) == 0.05
    # the higher of the two cuts wins
    both = adaptive_threshold(clean, floor=0.05, relative=0.9, odds=0.05)
    assert both == pytest.approx(0.9 * np.percentile(clean, 75))
    assert adaptive_threshold(np.ones(4), floor=0.05, relative=0.0, odds=0.05) == 1.0  # all certain: the cut is 1, which all reach


class _TensorClaimingCuda(torch.Tensor):
    """A CPU tensor that says it lives on cuda:0, to exercise the GPU-without-CuPy path on any machine."""

    @property
    def device(self):
        return torch.device("cuda", 0)


def test_a_cuda_map_without_cupy_is_picked_on_the_cpu(monkeypatch):
    """CuPy is an optional extra: a CUDA machine with only torch must still pick (it used to raise ImportError,
    which stopped the whole job), with one warning, and give the NumPy result."""
    monkeypatch.setattr(picking, "_cupy_available", lambda: False)
    monkeypatch.setattr(picking, "_WARNED", set())
    prob = torch.from_numpy(np.random.default_rng(0).random((128, 128)).astype(np.float32))
    with pytest.warns(RuntimeWarning, match="CuPy is not installed"):
        got = picking.pick_centres(prob.clone().as_subclass(_TensorClaimingCuda), 16.0)
    want = picking.pick_centres(prob.numpy(), 16.0)
    assert np.array_equal(np.asarray(got[0]), np.asarray(want[0]))
    assert np.array_equal(np.asarray(got[1]), np.asarray(want[1]))


def test_a_cupy_that_breaks_on_import_is_named_and_the_map_picked_on_the_cpu(monkeypatch):
    """A CuPy built for another NumPy or CUDA can fail on import with something other than ImportError: the job must
    still pick, on the CPU, saying why (it raised out of the picking stage before)."""
    import builtins

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "cupy":
            raise AttributeError("module 'numpy' has no attribute 'bool8'\nmore lines")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    monkeypatch.setattr(picking, "_WARNED", set())
    picking._cupy_import_error.cache_clear()
    try:
        assert picking._cupy_import_error() == "AttributeError: module 'numpy' has no attribute 'bool8'"
        with pytest.raises(ImportError, match="import cupy failed .AttributeError"):
            picking._import_cupy()
        prob = torch.from_numpy(np.random.default_rng(1).random((96, 96)).astype(np.float32))
        with pytest.warns(RuntimeWarning, match="CuPy is installed but does not import .AttributeError"):
            got = picking.pick_centres(prob.clone().as_subclass(_TensorClaimingCuda), 16.0)
        want = picking.pick_centres(prob.numpy(), 16.0)
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
    finally:
        picking._cupy_import_error.cache_clear()


def test_the_maps_smoothing_is_a_pick_setting_and_its_default_the_pickers():
    """PickParams.sigma_per_diameter: 1/6 picks exactly as the default (None). Two flat discs 0.6 diameters apart
    merge into one pick at 1/6 and stay two at 1/12; at 1/24 the flat tops break into more peaks than particles
    (what ``benchmarks/tune_sigma.py`` measured on real shells)."""
    from dataclasses import replace

    from relion_pixer import NET_DIAMETER_PX
    from relion_pixer.models import load_pretrained
    from relion_pixer.pipeline import PickParams, pick_from_map

    models = load_pretrained()
    d = NET_DIAMETER_PX
    yy, xx = np.mgrid[0:192, 0:192]
    prob = np.zeros((192, 192), np.float32)
    for cx in (80.0, 80.0 + 0.6 * d):
        prob[(xx - cx) ** 2 + (yy - 96) ** 2 <= (d / 2) ** 2] = 0.95
    net = np.random.default_rng(0).standard_normal((192, 192)).astype(np.float32)
    params = PickParams(threshold=0.0, map_relative=0.0, map_odds=0.0)

    def picks(sigma):
        return pick_from_map(net, prob, (1.0, 1.0), 100.0, models, replace(params, sigma_per_diameter=sigma))

    default, same = picks(None), picks(1 / 6)
    assert np.array_equal(default.xy, same.xy) and np.array_equal(default.map_score, same.map_score)
    assert len(default.xy) == 1 and len(picks(1 / 12).xy) == 2 and len(picks(1 / 24).xy) > 2
