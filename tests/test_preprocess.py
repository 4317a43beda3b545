"""Resampling keeps the field of view and maps coordinates exactly; normalisation is robust."""

import numpy as np
import pytest

from relion_pixer import preprocess
from relion_pixer.preprocess import clip_outliers, normalise, prepare, resample, scale_factor, to_network, to_original


def _blob(shape, x, y, sigma):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)).astype(np.float32)


def test_scale_factor():
    assert scale_factor(300, 5.36, 32) == pytest.approx(32 * 5.36 / 300)
    with pytest.raises(ValueError, match="diameter"):
        scale_factor(0, 1.0)
    with pytest.raises(ValueError, match="pixel size"):
        scale_factor(100, -1)


@pytest.mark.parametrize("shape,factor", [((400, 600), 0.37), ((601, 399), 0.5), ((128, 96), 1.6)])
def test_resample_maps_coordinates_exactly(shape, factor):
    x, y = 0.41 * shape[1], 0.63 * shape[0]
    img = _blob(shape, x, y, 12.0)
    out, factors = resample(img, factor)
    assert out.shape == (round(shape[0] * factor), round(shape[1] * factor))
    assert factors == (out.shape[0] / shape[0], out.shape[1] / shape[1])
    # the blob's centroid lands where to_network says
    yy, xx = np.mgrid[0 : out.shape[0], 0 : out.shape[1]]
    w = np.clip(out, 0, None)
    cx, cy = (xx * w).sum() / w.sum(), (yy * w).sum() / w.sum()
    expect = to_network([[x, y]], factors)[0]
    assert cx == pytest.approx(expect[0], abs=0.05)
    assert cy == pytest.approx(expect[1], abs=0.05)
    back = to_original([[cx, cy]], factors)[0]
    assert back == pytest.approx([x, y], abs=0.05 / min(factors) + 1e-6)


def test_resample_keeps_mean_and_band_limited_signal():
    rng = np.random.default_rng(0)
    img = rng.normal(5.0, 1.0, (256, 256)).astype(np.float32)
    out, _ = resample(img, 0.25)
    assert out.mean() == pytest.approx(img.mean(), abs=1e-3)
    # white noise loses power in proportion to the band kept
    assert out.var() == pytest.approx(img.var() * 0.25**2, rel=0.15)


def test_normalise_is_robust_to_gain_offset_gradient_and_8bit():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((300, 300)).astype(np.float32)
    a = normalise(base)
    yy, xx = np.mgrid[0:300, 0:300]
    other = np.round(40 + 7.5 * base + 0.05 * xx + 0.03 * yy).clip(0, 255).astype(np.uint8)
    b = normalise(other)
    assert abs(float(np.median(b))) < 0.1
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95
    assert np.abs(b).max() <= 6.0
    with pytest.raises(ValueError, match="contrast"):
        normalise(np.full((64, 64), 3.0, np.float32))


def test_flat_regions_are_found_exactly_and_noise_or_an_8bit_export_has_none():
    rng = np.random.default_rng(3)
    noise = rng.normal(100.0, 10.0, (600, 500)).astype(np.float32)
    assert preprocess.flat_pixels(noise) is None
    export = np.clip(np.round(rng.normal(128.0, 1.0, (600, 500))), 0, 255).astype(np.float32)  # one grey level of sd
    assert preprocess.flat_pixels(export) is None
    band = noise.copy()
    band[:, :120] = 0.0
    band[400:500, 300:420] = 7.5
    flat = preprocess.flat_pixels(band)
    expected = np.zeros(band.shape, bool)
    expected[:, :120] = True
    expected[400:500, 300:420] = True
    assert np.array_equal(flat, expected)
    filled, mask = preprocess.fill_flat(band)
    assert np.array_equal(mask, expected) and np.all(filled[expected] == np.float32(np.median(noise[~expected])))
    assert preprocess.fill_flat(noise)[0] is noise


def test_a_flat_region_does_not_shrink_the_spread_the_rest_is_normalised_by():
    """Normalised with a flat band over 40 % of it, the rest of a micrograph reads as without the band (before, the
    band made the robust spread a third of the rest's, and the networks saw the rest saturated)."""
    rng = np.random.default_rng(5)
    image = rng.normal(100.0, 10.0, (2048, 2048)).astype(np.float32)
    net, _ = preprocess.prepare(image, 1.0, 128.0)
    banded = image.copy()
    banded[:, :820] = 0.0
    net_b, _ = preprocess.prepare(banded, 1.0, 128.0)
    right = slice(net.shape[1] // 2 + 16, None)
    mad = lambda x: 1.4826 * np.median(np.abs(x - np.median(x)))  # noqa: E731
    assert abs(mad(net_b[:, right]) / mad(net[:, right]) - 1.0) < 0.1


def test_prepare_gives_network_scale():
    img = np.random.default_rng(2).standard_normal((1024, 768)).astype(np.float32)
    net, factors = prepare(img, angpix=2.0, diameter_angstrom=128.0)  # 64 px particles -> 32 px
    assert net.shape == (512, 384)
    assert factors == (0.5, 0.5)
    assert net.dtype == np.float32


def test_clip_outliers_leaves_ordinary_images_alone_and_clips_hot_pixels():
    rng = np.random.default_rng(3)
    img = rng.standard_normal((512, 512)).astype(np.float32)
    assert clip_outliers(img) is img  # nothing to clip: no copy, no change
    eight_bit = np.round(128 + 30 * img).clip(0, 255).astype(np.uint8)
    assert clip_outliers(eight_bit) is eight_bit
    hot = img.copy()
    hot[100, 100], hot[7, 400] = 1e7, -1e6
    out = clip_outliers(hot)
    assert hot[100, 100] == 1e7  # the caller's array is not changed
    assert 10 < out[100, 100] < 25 and -25 < out[7, 400] < -10
    mask = np.ones(img.shape, bool)
    mask[100, 100] = mask[7, 400] = False
    assert np.array_equal(out[mask], img[mask])
    assert out.dtype == np.float32  # not float64: twice the memory on a 4096 px micrograph
    sixteen_bit = eight_bit.astype(np.uint16)
    sixteen_bit[100, 100] = 60000
    assert clip_outliers(sixteen_bit).dtype == np.float32 and clip_outliers(sixteen_bit).max() < 1000


@pytest.mark.parametrize("defect", ["row", "column", "column17", "streak"])
def test_clip_outliers_catches_hot_rows_columns_and_streaks(defect):
    """Defects wider than one pixel must not move the bounds (a 0.01 % percentile did: a hot row is 0.05 % of a
    2048 px image), and the sample must see every column (a stride of 16 saw one column in 16)."""
    img = np.random.default_rng(7).standard_normal((2048, 2048)).astype(np.float32)
    bad = img.copy()
    if defect == "row":
        bad[500, :] = 1e6
    elif defect == "column":
        bad[:, 80] = 1e6
    elif defect == "column17":
        bad[:, 17] = -1e6
    else:
        bad[1000, 300:500] = 1e7
    out = clip_outliers(bad)
    assert np.abs(out).max() < 20


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_a_clear_error(bad):
    img = np.random.default_rng(4).standard_normal((256, 256)).astype(np.float32)
    img[10, 20] = bad
    with pytest.raises(ValueError, match="1 non-finite pixel"):
        prepare(img, angpix=2.0, diameter_angstrom=128.0)


def test_a_hot_pixel_does_not_ring_across_the_micrograph():
    img = np.random.default_rng(5).standard_normal((1024, 1024)).astype(np.float32)
    img += 3 * _blob(img.shape, 300, 500, 20)
    clean, _ = prepare(img, angpix=1.0, diameter_angstrom=128.0)
    hot = img.copy()
    hot[800, 100] = 1e8
    spoilt, _ = prepare(hot, angpix=1.0, diameter_angstrom=128.0)
    # only the hot pixel's neighbourhood may change (before the fix every pixel rang)
    far = np.ones(clean.shape, bool)
    far[200 - 8 : 200 + 8, 25 - 8 : 25 + 8] = False
    assert np.abs(spoilt - clean)[far].max() < 0.2


def test_a_particle_of_a_few_pixels_is_a_clear_error():
    """A diameter typed in nm (18 for 180 A) must not upsample the micrograph 7x and pick noise for minutes."""
    img = np.random.default_rng(6).standard_normal((256, 256)).astype(np.float32)
    with pytest.raises(ValueError, match=r"only 4.5 px wide at 4 A/px .*Angstrom"):
        prepare(img, angpix=4.0, diameter_angstrom=18.0)
    net, _ = prepare(img, angpix=4.0, diameter_angstrom=40.0)  # 10 px: accepted, upsampled 3.2x
    assert net.shape == (819, 819)


def test_an_upsampling_beyond_the_network_size_limit_is_refused():
    """A 10 px particle in a 4096 px micrograph would make a 13107 px image (minutes, gigabytes): refused."""
    from relion_pixer.preprocess import MAX_NETWORK_SIDE, check_particle_width

    check_particle_width(40.0, 4.0, (2048, 2048))  # 6554 px: fine
    with pytest.raises(ValueError, match=r"upsampled to 13107 x 13107 px .*whatever the binning"):
        check_particle_width(40.0, 4.0, (4096, 4096))
    assert MAX_NETWORK_SIDE == 8192


@pytest.mark.parametrize("shape, sigma", [((96, 130), 64.0), ((40, 300), 5.0), ((257, 256), 12.5)])
def test_gaussian_blur_is_scipys_gaussian_filter_to_rounding(shape, sigma):
    """The FFT blur behind density_map equals scipy.ndimage.gaussian_filter (reflect, 4 sigma), also when the kernel
    is wider than the image."""
    import scipy.ndimage

    from relion_pixer.preprocess import gaussian_blur

    img = np.random.default_rng(3).standard_normal(shape)
    np.testing.assert_allclose(gaussian_blur(img, sigma), scipy.ndimage.gaussian_filter(img, sigma), atol=1e-12)


def test_darkness_at_reads_density_maps_measure_at_points():
    """disk_means is density_map's disk average read at points (to rounding, zeros beyond the edge); darkness_at on
    the binned high-pass orders points as density_map does (an affine map of it up to the binned blur)."""
    import scipy.signal
    import scipy.stats

    from relion_pixer.preprocess import darkness_at, density_map, disk_means, highpass, normalise, values_at
    from relion_pixer.simulate import random_config, simulate_micrograph

    rng = np.random.default_rng(3)
    cfg = random_config(rng, snr=0.3, particle_diameter_px=32.0, families="globular", empty=False, n_ice=2,
                        carbon_edge=True, angpix=2.0)
    img = normalise(simulate_micrograph(rng, shape=(300, 420), **cfg).image)
    xy = np.vstack([rng.uniform(0, [419, 299], (400, 2)), [[0, 0], [419, 299]]])
    r = 11.2
    yy, xx = np.mgrid[-11:12, -11:12]
    kernel = (xx**2 + yy**2 <= r * r).astype(np.float64)
    full = scipy.signal.fftconvolve(img.astype(np.float64), kernel / kernel.sum(), mode="same")
    np.testing.assert_allclose(disk_means(img, r, xy), values_at(full, xy), atol=1e-9)
    dark = darkness_at(highpass(img, 64.0), 32.0, xy)
    assert scipy.stats.spearmanr(dark, values_at(density_map(img, 32.0), xy)).correlation > 0.98


@pytest.mark.parametrize("scale, offset", [(1e37, 0.0), (3e37, 0.0), (1e20, 5e21), (1e-30, 0.0), (1e-37, 0.0)])
def test_values_near_the_float32_limits_are_picked_as_the_same_image_in_ordinary_units(scale, offset):
    """A micrograph stored in extreme units (values near 1e38, where float32 sums overflow, or near 1e-38) prepares
    as the same micrograph in ordinary units: it had read as "image has no contrast"."""
    rng = np.random.default_rng(3)
    image = rng.normal(size=(600, 640)).astype(np.float32)
    image[100:140, 200:240] -= 3.0  # a dark particle
    image[5, :] = 9.0  # a hot row (9 sd: at 3e37 it stays below the float32 limit)
    ref, factors = preprocess.prepare(image, 2.0, 150.0)
    extreme = (image.astype(np.float64) * scale + offset).astype(np.float32)
    assert np.isfinite(extreme).all()
    net, extreme_factors = preprocess.prepare(extreme, 2.0, 150.0)
    assert extreme_factors == factors
    assert np.abs(net - ref).max() < 1e-3
