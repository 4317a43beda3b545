"""Realism check: simulated micrographs beside the real EMPIAR-10028 ones, at the same scale.

Writes ``docs/simulator_gallery.png`` (full micrographs and 256 px crops, real top row, simulated below) and
``docs/simulator_spectra.png`` (radially averaged power spectra and intensity histograms, real vs simulated).

Usage::

    python3 benchmarks/simulator_gallery.py [--data ../shared/data] [--out docs] [--snr 0.1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from relion_pixer.simulate import simulate_micrograph  # noqa: E402

ANGPIX = 5.36
DIAMETER_A = 300.0


def radial_power(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of a mean-subtracted, unit-variance image; frequencies in 1/A."""
    a = (img - img.mean()) / (img.std() or 1.0)
    n = min(a.shape)
    a = a[:n, :n]
    p = np.abs(np.fft.fftshift(np.fft.fft2(a))) ** 2 / a.size
    y, x = np.indices(p.shape) - n // 2
    r = np.sqrt(x * x + y * y).astype(int)
    prof = np.bincount(r.ravel(), p.ravel()) / np.maximum(np.bincount(r.ravel()), 1)
    k = np.arange(len(prof)) / (n * ANGPIX)
    keep = (k > 0) & (np.arange(len(prof)) <= n // 2)
    return k[keep], prof[keep]


def _save_small(fig, path: Path, dpi: int) -> None:
    """Save a figure as a 256-colour PNG (a third of the RGBA size; the images are grey anyway)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    buf.seek(0)
    img = Image.open(buf).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    img.save(path, optimize=True)


def simulated(seed: int, snr: float, **kw):
    rng = np.random.default_rng(seed)
    opts = dict(
        shape=(1024, 1024),
        angpix=ANGPIX,
        snr=snr,
        families="ribosome",
        diameter_A=DIAMETER_A,
        density=0.2,
        defocus_um=float(rng.uniform(1.5, 3.0)),
        quantise_8bit=True,
        export_mean=float(rng.uniform(80, 100)),
        export_sd=float(rng.uniform(6.0, 7.5)),
    )
    opts.update(kw)
    return simulate_micrograph(rng, **opts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(REPO / "docs"))
    ap.add_argument("--snr", type=float, default=0.5)
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mrcfile

    real_dir = Path(args.data) / "real" / "empiar10028_ribosome80S" / "micrographs"
    real_files = sorted(real_dir.glob("*.mrc"))[:3]
    if not real_files:
        print(f"no real micrographs under {real_dir}", file=sys.stderr)
        return 1
    real = [np.asarray(mrcfile.open(f, permissive=True).data, dtype=np.float32) for f in real_files]
    sims = [
        simulated(1, args.snr),
        simulated(2, args.snr, n_ice=2, n_aggregates=1),
        simulated(3, args.snr, carbon_edge=True, carbon_fraction=(0.2, 0.3), n_ice=1),
    ]
    crop = (slice(300, 556), slice(300, 556))

    fig, axes = plt.subplots(4, 3, figsize=(13, 17.5))
    for j, img in enumerate(real):
        axes[0, j].imshow(img, cmap="gray")
        axes[0, j].set_title(f"real {real_files[j].stem} (5.36 A/px)", fontsize=9)
        axes[1, j].imshow(img[crop], cmap="gray")
        axes[1, j].set_title("real, 256 px crop", fontsize=9)
    for j, s in enumerate(sims):
        m = s.meta
        axes[2, j].imshow(s.image, cmap="gray")
        axes[2, j].set_title(
            f"simulated: SNR {m['snr']:.2g} ({m['snr_db']:.1f} dB), df {m['defocus_u'] / 1e4:.1f} um, "
            f"{m['n_particles']} particles",
            fontsize=9,
        )
        axes[3, j].imshow(s.image[crop], cmap="gray")
        axes[3, j].contour(s.labels[crop] == 1, levels=[0.5], colors="yellow", linewidths=0.4)
        axes[3, j].contour(s.labels[crop] == 2, levels=[0.5], colors="red", linewidths=0.4)
        axes[3, j].set_title("simulated crop (yellow: label 1, red: label 2)", fontsize=9)
    for a in axes.ravel():
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _save_small(fig, out / "simulator_gallery.png", dpi=62)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for j, img in enumerate(real):
        k, p = radial_power(img)
        a1.semilogy(k, p, color="black", alpha=0.7, lw=1, label="real" if j == 0 else None)
        a2.hist(img.ravel(), bins=np.arange(0, 256), histtype="step", color="black", alpha=0.7,
                label="real" if j == 0 else None)
    for j, s in enumerate(sims):
        k, p = radial_power(s.image)
        a1.semilogy(k, p, color="tab:orange", alpha=0.8, lw=1, label="simulated" if j == 0 else None)
        a2.hist(s.image.ravel(), bins=np.arange(0, 256), histtype="step", color="tab:orange", alpha=0.8,
                label="simulated" if j == 0 else None)
    a1.set_xlabel("spatial frequency (1/A)")
    a1.set_ylabel("radially averaged power (normalised image)")
    a1.set_title("power spectra, real EMPIAR-10028 vs simulated (5.36 A/px)")
    a1.legend()
    a2.set_xlim(20, 180)
    a2.set_xlabel("pixel value (8-bit export)")
    a2.set_ylabel("pixels")
    a2.set_title("intensity histograms")
    a2.legend()
    fig.tight_layout()
    _save_small(fig, out / "simulator_spectra.png", dpi=80)
    plt.close(fig)
    for s in sims:
        print({k: s.meta[k] for k in ("snr", "snr_db", "snr_measured", "defocus_u", "n_particles", "counts_per_px")})
    print(f"wrote {out / 'simulator_gallery.png'} and {out / 'simulator_spectra.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
