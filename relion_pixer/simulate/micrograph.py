"""Synthetic cryo-EM micrographs with full ground truth.

Image formation (all in :func:`simulate_micrograph`)
----------------------------------------------------
1. **Specimen.** Particles are pseudo-atomic models (:mod:`relion_pixer.simulate.shapes`) in uniformly random
   orientations; each is projected by rotating its points and splatting them bilinearly onto the pixel grid, then
   blurring by the point size. That gives the projected protein thickness ``t_p`` (Angstrom). Ice contamination
   (clusters of dense spheres, 1-5 particle diameters), protein aggregates (packed clumps of particles) and a carbon
   film edge (amorphous texture, thicker) are rendered the same way into their own thickness maps. The vitreous ice
   has a smooth thickness gradient.
2. **Exit wave, weak-phase approximation.** Phase ``phi = sigma(V) * dV * t`` with the relativistic interaction
   constant ``sigma`` and a contrast potential ``dV`` per material. Amplitude loss (inelastic / high-angle
   scattering removed from the image) is a transmission ``A = exp(-sum t_m / lambda_m)``.
3. **CTF.** ``I = A * (1 - 2 F^-1[CTF * E * F[phi]])`` with
   ``CTF = sqrt(1 - w^2) sin(chi) + w cos(chi)``, ``chi = pi lambda dz k^2 - pi/2 Cs lambda^3 k^4``, astigmatic
   defocus ``dz`` (RELION convention, underfocus positive) and an envelope ``E = exp(-B k^2 / 4)``.
   Under focus, the low-frequency CTF is positive, so dense objects come out **dark** as in real data.
4. **Detector.** Expected counts ``D a^2 I`` (dose ``D`` e/A^2, pixel ``a`` A), Poisson shot noise, then the
   detector MTF (pixel-integration sinc times a Gaussian charge-spread) applied to signal and noise alike.
5. **Export.** Optionally an 8-bit export like real JPEG/8-bit micrographs: affine to a mean and standard
   deviation, rounded and clipped to 0..255. ``clean`` goes through the same affine without rounding.

Signal-to-noise ratio
---------------------
``snr = P_signal / P_noise`` and ``snr_db = 10 log10(snr)`` (PIXER's definition), where

* ``P_signal`` is the mean, over the particle pixels (label 1), of ``S**2``; ``S`` is the particles' part of the
  noise-free image: the noise-free image minus the same noise-free image rendered without the particles
  (same ice, carbon, contamination, CTF, dose and MTF). Because the weak-phase image is linear in the phase,
  ``S = MTF * [D a^2 A (-2 F^-1[CTF E F[phi_particles]])]`` exactly.
* ``P_noise`` is the variance of ``image - clean`` (shot noise after the MTF) over the same pixels.

When ``snr`` is given, the dose is chosen so that the expected ratio equals it exactly (the measured ratio,
``meta["snr_measured"]``, scatters around it by the noise realisation). When ``snr`` is None the dose
``dose`` (e/A^2) is used and the resulting SNR is reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.fft
import scipy.ndimage
from scipy.spatial.transform import Rotation

from relion_pixer import CONTAMINATION, PARTICLE
from relion_pixer.masks import binarise_projection
from relion_pixer.simulate.shapes import (
    ASSEMBLY_FAMILIES,
    FAMILY_SIZE_A,
    SHAPE_FAMILIES,
    ParticleModel,
    check_family,
    load_atomic_model,
    make_shape,
    project_model,
)

__all__ = [
    "SimulatedMicrograph",
    "simulate_micrograph",
    "random_config",
    "electron_wavelength",
    "interaction_constant",
    "ctf_2d",
]

# contrast potentials (V) relative to the surrounding medium, and amplitude-loss lengths (A)
_DV_PROTEIN = 2.6  # protein vs vitreous ice
_DV_CARBON = 5.0  # amorphous carbon vs ice
_DV_ICE = 4.5  # ice blob in vacuum
_LAMBDA_ICE = 3500.0  # inelastic mean free path of vitreous ice at 300 kV
_LAMBDA_CARBON = 1500.0
_LAMBDA_CONTAM = 700.0  # crystalline ice scatters strongly out of the aperture


@dataclass
class SimulatedMicrograph:
    """A simulated micrograph and its ground truth.

    Attributes
    ----------
    image : numpy.ndarray
        ``H x W`` float32 noisy micrograph (counts, or 0..255 when ``quantise_8bit``); particles dark.
    clean : numpy.ndarray
        ``H x W`` float32 noise-free image in the same units (``image - clean`` is the noise).
    labels : numpy.ndarray
        ``H x W`` uint8: 0 background, 1 particle, 2 contamination (ice, carbon film, aggregates).
    instances : numpy.ndarray
        ``H x W`` int32: particle index + 1 where the label is 1 (the most recently placed particle wins where
        masks overlap), 0 elsewhere.
    coords : numpy.ndarray
        ``N x 2`` float64 particle centres ``(x, y)`` = (column, row), 0-based pixels.
    diameters_px : numpy.ndarray
        ``N`` float64 particle diameters in pixels (see :attr:`ParticleModel.diameter`).
    meta : dict
        Parameters and measured figures: ``snr``, ``snr_db``, ``snr_measured``, ``snr_measured_db``,
        ``signal_power``, ``noise_power``, ``angpix``, ``voltage``, ``cs``, ``amplitude_contrast``,
        ``defocus_u``, ``defocus_v`` (Angstrom), ``defocus_angle`` (degrees), ``dose``, ``families``,
        ``particle_diameter_px``, ``particle_diameter_A``, ``n_particles``, ...
    rotations : numpy.ndarray
        ``N x 3 x 3`` float64 rotation matrix of each particle: a point ``q`` of its model (Angstrom, centroid at
        the origin) lands at in-plane position ``(R q)[:2] / angpix`` pixels from the particle's centre. ``R`` is
        RELION's matrix of the particle's Euler angles (:func:`relion_pixer.projection.euler_matrix`), so
        :func:`relion_pixer.projection.euler_angles` gives them.
    scales : numpy.ndarray
        ``N`` float64 isotropic scale of each particle's model (size jitter; 1 = the species' nominal size).
    species : numpy.ndarray
        ``N`` int64 index of each particle's species (order of ``meta["families"]``).
    particle_signal : numpy.ndarray or None
        ``H x W`` float32 particles' part ``S`` of ``clean`` (see the module docstring), in the image's units
        (exact wherever the weak-phase intensity is not clipped at 0, which is practically everywhere); only with
        ``keep_particle_signal=True``, else None.
    """

    image: np.ndarray
    clean: np.ndarray
    labels: np.ndarray
    instances: np.ndarray
    coords: np.ndarray
    diameters_px: np.ndarray
    meta: dict = field(default_factory=dict)
    rotations: np.ndarray = field(default_factory=lambda: np.zeros((0, 3, 3)))
    scales: np.ndarray = field(default_factory=lambda: np.zeros(0))
    species: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    particle_signal: np.ndarray | None = None


# ----------------------------------------------------------------------------------------------- physics helpers


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Angstrom for an acceleration voltage in kV."""
    v = float(voltage_kv) * 1e3
    return 12.2643247 / math.sqrt(v * (1.0 + 0.978466e-6 * v))


def interaction_constant(voltage_kv: float) -> float:
    """Relativistic interaction constant ``sigma`` in rad / (V A)."""
    v = float(voltage_kv) * 1e3
    lam = electron_wavelength(voltage_kv)
    mc2 = 510998.95  # eV
    return 2.0 * math.pi / (lam * v) * (mc2 + v) / (2.0 * mc2 + v)


def _freq_grids(shape: tuple[int, int], angpix: float):
    ky = scipy.fft.fftfreq(shape[0], d=angpix).astype(np.float32)
    kx = scipy.fft.rfftfreq(shape[1], d=angpix).astype(np.float32)
    return ky[:, None], kx[None, :]


def ctf_2d(
    shape: tuple[int, int],
    angpix: float,
    voltage: float,
    cs: float,
    amplitude_contrast: float,
    defocus_u: float,
    defocus_v: float,
    defocus_angle: float,
    bfactor: float = 0.0,
    phase_shift: float = 0.0,
) -> np.ndarray:
    """CTF on the ``rfft2`` grid of an image, times the envelope ``exp(-B k^2 / 4)``.

    Parameters
    ----------
    shape : tuple of int
        Real-space image shape ``(H, W)``.
    angpix : float
        Pixel size in Angstrom.
    voltage, cs, amplitude_contrast : float
        kV, mm, fraction.
    defocus_u, defocus_v, defocus_angle : float
        Angstrom (underfocus positive) and degrees, RELION convention.
    bfactor : float
        Envelope B-factor in A^2.
    phase_shift : float
        Additional phase shift in degrees (phase plate).

    Returns
    -------
    numpy.ndarray
        ``H x (W//2+1)`` float32; positive at low frequency under focus (dense objects dark).
    """
    ky, kx = _freq_grids(shape, angpix)
    k2 = kx**2 + ky**2
    ang = np.arctan2(ky, kx)
    dz = np.float32(0.5 * (defocus_u + defocus_v)) + np.float32(0.5 * (defocus_u - defocus_v)) * np.cos(
        2.0 * (ang - np.float32(math.radians(defocus_angle)))
    )
    lam = electron_wavelength(voltage)
    cs_a = cs * 1e7
    chi = np.float32(math.pi * lam) * dz * k2 - np.float32(0.5 * math.pi * cs_a * lam**3) * k2 * k2
    if phase_shift:
        chi += np.float32(math.radians(phase_shift))
    w = float(amplitude_contrast)
    ctf = np.float32(math.sqrt(1.0 - w * w)) * np.sin(chi) + np.float32(w) * np.cos(chi)
    if bfactor:
        ctf *= np.exp(np.float32(-0.25 * bfactor) * k2)
    return ctf.astype(np.float32)


def _mtf_2d(shape: tuple[int, int], blur_px: float) -> np.ndarray:
    """Detector MTF on the rfft2 grid: pixel-integration sinc times a Gaussian of ``blur_px`` pixels."""
    fy = scipy.fft.fftfreq(shape[0]).astype(np.float32)[:, None]
    fx = scipy.fft.rfftfreq(shape[1]).astype(np.float32)[None, :]
    mtf = np.sinc(fx) * np.sinc(fy)
    if blur_px > 0:
        mtf = mtf * np.exp(np.float32(-2.0 * (math.pi * blur_px) ** 2) * (fx**2 + fy**2))
    return mtf.astype(np.float32)


def _workers(n: int) -> int:
    # threads only pay off for large transforms; training tiles run single-threaded (no oversubscription in loaders)
    return -1 if n >= 1 << 20 else 1


def _rfft(a: np.ndarray) -> np.ndarray:
    return scipy.fft.rfft2(a, workers=_workers(a.size))


def _irfft(a: np.ndarray, shape) -> np.ndarray:
    return scipy.fft.irfft2(a, s=shape, workers=_workers(shape[0] * shape[1])).astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------ rendering primitives


def _slices(shape, r0: int, c0: int, n: int):
    """Destination and source slices to paste an ``n x n`` patch with top-left ``(r0, c0)``; None if outside."""
    H, W = shape
    rs, cs = max(r0, 0), max(c0, 0)
    re, ce = min(r0 + n, H), min(c0 + n, W)
    if rs >= re or cs >= ce:
        return None
    return (slice(rs, re), slice(cs, ce)), (slice(rs - r0, re - r0), slice(cs - c0, ce - c0))


def _smooth_field(rng, shape, n_waves: int = 4, max_cycles: float = 1.5) -> np.ndarray:
    """Smooth random field of unit-order amplitude: a sum of low-frequency plane waves.

    ``cos(a x + b y + p) = cos(a x + p) cos(b y) - sin(a x + p) sin(b y)``, so the sum is one small matrix product.
    """
    H, W = shape
    y = np.arange(H, dtype=np.float64) / max(H, W)
    x = np.arange(W, dtype=np.float64) / max(H, W)
    fx, fy = rng.uniform(-max_cycles, max_cycles, (2, n_waves))
    ph = rng.uniform(0, 2 * np.pi, n_waves)
    a = 2 * np.pi * fx[:, None] * x[None, :] + ph[:, None]  # (K, W)
    b = 2 * np.pi * fy[:, None] * y[None, :]  # (K, H)
    left = np.concatenate([np.cos(b), -np.sin(b)]).T.astype(np.float32)  # (H, 2K)
    right = np.concatenate([np.cos(a), np.sin(a)]).astype(np.float32)  # (2K, W)
    return (left @ right) / np.float32(math.sqrt(n_waves))


def _sphere_cluster(rng, diameter_px: float, n_spheres: int):
    """Projected thickness (in pixels) of a cluster of overlapping spheres, on a square patch."""
    R = diameter_px / 2.0
    radii = R * rng.uniform(0.35, 0.7, n_spheres)
    radii[0] = R * rng.uniform(0.55, 0.75)
    offs = rng.normal(scale=0.35 * R, size=(n_spheres, 2))
    offs[0] = 0.0
    half = int(math.ceil(R * 1.6)) + 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    t = np.zeros_like(xx)
    for r, (ox, oy) in zip(radii, offs):
        d2 = r * r - (xx - ox) ** 2 - (yy - oy) ** 2
        t = np.maximum(t, 2.0 * np.sqrt(np.clip(d2, 0, None)))
    return t, half


# ------------------------------------------------------------------------------------------------ the simulator


def _build_species(rng, n_species, families, model_files, diameter_A, n_points) -> list[ParticleModel]:
    models = []
    for _ in range(n_species):
        if model_files and (not families or rng.random() < 0.5):
            path = model_files[int(rng.integers(len(model_files)))]
            atom = load_atomic_model(path, max_points=n_points, rng=rng)
            assemblies = [f for f in (families or ASSEMBLY_FAMILIES) if f in ASSEMBLY_FAMILIES]
            if assemblies and rng.random() < 0.5:  # an assembly of copies of the atomic model
                fam = assemblies[int(rng.integers(len(assemblies)))]
                m = make_shape(rng, fam, diameter=diameter_A, n_points=n_points, subunit=atom)
            else:
                m = atom.scaled(diameter_A) if diameter_A is not None else atom
        else:
            fam = families[int(rng.integers(len(families)))]
            m = make_shape(rng, fam, diameter=diameter_A, n_points=n_points)
        models.append(m)
    return models


def simulate_micrograph(
    rng: np.random.Generator,
    shape: tuple[int, int] = (1024, 1024),
    angpix: float = 5.36,
    particle_diameter_px: float | None = None,
    snr: float | None = 0.1,
    *,
    families: tuple[str, ...] | str = SHAPE_FAMILIES,
    model_files: tuple | list = (),
    models: list | None = None,
    diameter_A: float | None = None,
    n_species: int = 1,
    size_jitter: float = 0.05,
    n_particles: int | None = None,
    density: float = 0.25,
    min_separation: float = 1.0,
    empty: bool = False,
    voltage: float = 300.0,
    cs: float = 2.7,
    amplitude_contrast: float = 0.1,
    phase_shift: float = 0.0,
    defocus_um: float = 2.0,
    astigmatism_um: float = 0.05,
    astigmatism_angle: float | None = None,
    bfactor: float = 250.0,
    dose: float = 40.0,
    structural_noise: float = 0.6,
    mtf_blur_px: float = 0.45,
    ice_thickness_A: float = 400.0,
    ice_gradient: float = 0.1,
    n_ice: int = 0,
    ice_size: tuple[float, float] = (1.0, 5.0),
    n_aggregates: int = 0,
    carbon_edge: bool = False,
    carbon_fraction: tuple[float, float] = (0.1, 0.4),
    carbon_hole: bool = False,
    quantise_8bit: bool = False,
    export_mean: float = 90.0,
    export_sd: float = 7.0,
    n_points: int = 4000,
    keep_particle_signal: bool = False,
) -> SimulatedMicrograph:
    """Simulate one micrograph with ground truth.

    Parameters
    ----------
    rng : numpy.random.Generator
        The only random source: the same seed and options give the same micrograph.
    shape : tuple of int
        ``(H, W)`` in pixels.
    angpix : float
        Pixel size in Angstrom (used for the CTF, the dose and the particle scale).
    particle_diameter_px : float, optional
        Scale every particle model so that its diameter is this many pixels (before per-particle jitter). The
        diameter is the longest extent of the particle's binarised projection (the label-1 mask) over
        orientations (:attr:`~relion_pixer.simulate.shapes.ParticleModel.diameter`): the length of a rod, the
        diameter of a sphere. None: the model's own size (``diameter_A``, or the family's natural range).
    snr : float or None
        Wanted linear SNR (see the module docstring for the exact definition); None: use ``dose``.
    families : tuple of str or str
        Procedural shape families to draw species from (:data:`~relion_pixer.simulate.shapes.ALL_FAMILIES`).
    model_files : sequence of path
        Atomic models (PDB/mmCIF) to draw species from as well (half of the draws when ``families`` is not
        empty); half of those become assemblies (dimer, ring, cylinder, cage, filament among ``families``, or
        any when ``families`` is empty) of copies of the model.
    models : list of ParticleModel, optional
        Use these particle models (e.g. the same species across a data set) instead of drawing species.
    diameter_A : float, optional
        Particle diameter in Angstrom when ``particle_diameter_px`` is None.
    n_species : int
        Number of different particle models in the micrograph (1 for a typical single-particle data set).
    size_jitter : float
        Relative standard deviation of the per-particle diameter (conformational / size spread).
    n_particles : int, optional
        Number of particles to place; default from ``density``.
    density : float
        Fraction of the free area covered by particle discs (0.02 sparse .. 0.5 crowded).
    min_separation : float
        Least centre distance, in diameters (1.0: touching allowed; below 1: overlapping).
    empty : bool
        No particles (the dose is still calibrated as if ``density`` particles were there, so the noise level
        matches a micrograph of the same SNR).
    voltage, cs, amplitude_contrast : float
        kV, mm, fraction.
    phase_shift : float
        Extra phase shift in degrees, as a Volta phase plate gives (about 90): strong low-frequency contrast,
        particles as dark blobs without the CTF's light fringes.
    defocus_um, astigmatism_um, astigmatism_angle : float
        Mean defocus and astigmatism ``(dU - dV)`` in micrometres; angle in degrees (None: random).
    bfactor : float
        Envelope B-factor (A^2): coherence, drift and detector losses.
    dose : float
        Electrons per A^2, used when ``snr`` is None.
    structural_noise : float
        Fraction (0..0.95) of the noise power that comes from the vitreous ice's amorphous structure (a random
        phase field imaged through the CTF: Thon rings in the background); the rest is shot noise.
    mtf_blur_px : float
        Gaussian charge-spread of the detector MTF in pixels (0: sinc only).
    ice_thickness_A, ice_gradient : float
        Mean vitreous ice thickness and the relative amplitude of its smooth variation.
    n_ice : int
        Number of ice contamination blobs (label 2).
    ice_size : tuple of float
        Range of their sizes in particle diameters.
    n_aggregates : int
        Number of protein aggregates (packed clumps of 4-12 particles; label 2).
    carbon_edge : bool
        Add a curved carbon film edge (the carbon side is label 2 and holds no particles).
    carbon_fraction : tuple of float
        Range of the fraction of the image covered by carbon (``carbon_edge``).
    carbon_hole : bool
        Show a whole hole instead: a circular hole of radius 0.25-0.45 image sizes near the centre, carbon all
        around it (label 2, no particles), as at low magnification.
    quantise_8bit : bool
        Export like an 8-bit micrograph: mean ``export_mean``, standard deviation ``export_sd``, rounded to
        integers in 0..255 (stored as float32).
    n_points : int
        Points per procedural model (speed vs detail).
    keep_particle_signal : bool
        Also return the particles' part of the noise-free image (``particle_signal``), for detectability
        analyses; it changes nothing else (no extra random draws).

    Returns
    -------
    SimulatedMicrograph
    """
    H, W = (int(shape[0]), int(shape[1]))
    if H < 8 or W < 8:
        raise ValueError(f"shape must be at least 8 x 8, got {shape}")
    if angpix <= 0:
        raise ValueError(f"angpix must be positive, got {angpix}")
    if snr is not None and not snr > 0:
        raise ValueError(f"snr must be positive or None, got {snr}")
    if isinstance(families, str):
        families = (families,)
    families = tuple(families)
    for f in families:
        check_family(f)
    model_files = list(model_files or ())
    if not families and not model_files:
        raise ValueError("no particle source: give families and/or model_files")

    # ---- particle species, scaled to the wanted size
    if particle_diameter_px is not None:
        diameter_A = float(particle_diameter_px) * angpix
    if models:
        species = list(models)
    else:
        species = _build_species(rng, max(1, int(n_species)), families, model_files, diameter_A, n_points)
    if diameter_A is not None:
        species = [m.scaled(diameter_A) for m in species]
    d_nominal_px = float(np.mean([m.diameter for m in species])) / angpix

    labels = np.zeros((H, W), dtype=np.uint8)
    forbidden = np.zeros((H, W), dtype=bool)  # contamination / carbon: no particle centres here
    t_particles = np.zeros((H, W), dtype=np.float32)
    t_aggr = np.zeros((H, W), dtype=np.float32)
    t_carbon = np.zeros((H, W), dtype=np.float32)
    t_contam = np.zeros((H, W), dtype=np.float32)
    contam_mask = np.zeros((H, W), dtype=bool)

    # ---- vitreous ice with a smooth thickness gradient
    t_ice = ice_thickness_A * (1.0 + ice_gradient * _smooth_field(rng, (H, W)))
    np.clip(t_ice, 0.0, None, out=t_ice)

    # ---- carbon film: a large circular hole whose rim crosses the image, or a whole hole in view
    carbon_info = None
    if carbon_edge or carbon_hole:
        cy, cx = (H - 1) / 2.0, (W - 1) / 2.0
        if carbon_hole:
            R = rng.uniform(0.25, 0.45) * min(H, W)
            hx, hy = cx + rng.uniform(-0.1, 0.1) * W, cy + rng.uniform(-0.1, 0.1) * H
        else:
            frac = rng.uniform(*carbon_fraction)
            theta = rng.uniform(0, 2 * np.pi)
            R = rng.uniform(0.8, 3.0) * max(H, W)
            # distance of the rim from the image centre along theta so that about `frac` of the image is carbon
            offset = (0.5 - frac) * (abs(np.cos(theta)) * W + abs(np.sin(theta)) * H)
            hx, hy = cx - np.cos(theta) * (R - offset), cy - np.sin(theta) * (R - offset)
        yy = np.arange(H, dtype=np.float32)[:, None] - hy
        xx = np.arange(W, dtype=np.float32)[None, :] - hx
        dist = np.sqrt(xx * xx + yy * yy) - R  # > 0 on carbon
        carbon = dist > 0
        thick = rng.uniform(100.0, 250.0)
        tex = rng.standard_normal((H, W), dtype=np.float32) * np.float32(0.25)
        edge_soft = np.clip(dist + 0.5, 0.0, 1.0)
        t_carbon = (thick * edge_soft * (1.0 + tex)).astype(np.float32)
        # thicker ice at the rim of the hole
        t_ice += (0.6 * ice_thickness_A * np.exp(-np.clip(-dist, 0, None) / (2.0 * d_nominal_px))).astype(np.float32) * (~carbon)
        contam_mask |= carbon
        carbon_info = {
            "kind": "hole" if carbon_hole else "edge",
            "fraction": float(carbon.mean()),
            "thickness_A": float(thick),
            "hole_radius_px": float(R),
        }

    # ---- ice contamination: dense sphere clusters
    for _ in range(int(n_ice)):
        size = rng.uniform(*ice_size) * d_nominal_px
        t_px, half = _sphere_cluster(rng, size, int(rng.integers(1, 5)))
        t = t_px * angpix * rng.uniform(0.3, 1.0)
        r, c = int(rng.integers(0, H)), int(rng.integers(0, W))
        sl = _slices((H, W), r - half, c - half, 2 * half + 1)
        if sl is None:
            continue
        dst, src = sl
        t_contam[dst] += t[src]
        contam_mask[dst] |= t[src] > 0.02 * t.max()

    # ---- protein aggregates: packed clumps of particles, one label-2 mask each
    for _ in range(int(n_aggregates)):
        k = int(rng.integers(4, 13))
        m = species[int(rng.integers(len(species)))]
        d_px = m.diameter / angpix
        rots = Rotation.random(k, rng=rng).as_matrix()
        # grow a connected clump: each member touches (overlaps) a random earlier one
        offs = np.zeros((k, 2))
        for j in range(1, k):
            a = rng.uniform(0, 2 * np.pi)
            offs[j] = offs[int(rng.integers(j))] + rng.uniform(0.45, 0.7) * d_px * np.array([np.cos(a), np.sin(a)])
        offs -= offs.mean(axis=0)
        box = int(math.ceil(np.abs(offs).max() + m.diameter / angpix)) + 4
        n_box = 2 * box + 1
        acc = np.zeros((n_box, n_box), dtype=np.float32)
        for rot, (ox, oy) in zip(rots, offs):
            patch, half = project_model(m, rot, angpix)
            r0, c0 = int(round(box + oy)) - half, int(round(box + ox)) - half
            sl = _slices(acc.shape, r0, c0, 2 * half + 1)
            if sl is not None:
                acc[sl[0]] += patch[sl[1]]
        r, c = int(rng.integers(0, H)), int(rng.integers(0, W))
        sl = _slices((H, W), r - box, c - box, n_box)
        if sl is None:
            continue
        dst, src = sl
        t_aggr[dst] += acc[src]
        contam_mask[dst] |= binarise_projection(acc, fraction=0.05)[src]  # whole clump, not only its dense core

    forbidden |= contam_mask

    # ---- particles
    area_free = float((~forbidden).sum())
    if empty:
        n_target = 0
    elif n_particles is None:
        n_target = int(round(density * area_free / (math.pi * 0.25 * d_nominal_px**2)))
    else:
        n_target = int(n_particles)
    coords, diam, inst_masks, poses = _place_particles(
        rng, species, n_target, (H, W), angpix, size_jitter, min_separation, forbidden
    )
    instances = np.zeros((H, W), dtype=np.int32)
    for i, (dst, src, patch, mask) in enumerate(inst_masks):
        t_particles[dst] += patch[src]
        m = mask[src]
        labels[dst][m] = PARTICLE
        instances[dst][m] = i + 1
    labels[contam_mask] = CONTAMINATION
    instances[labels != PARTICLE] = 0

    # ---- image formation
    sigma = interaction_constant(voltage)
    if astigmatism_angle is None:
        astigmatism_angle = float(rng.uniform(0.0, 180.0))
    dfu = (defocus_um + 0.5 * astigmatism_um) * 1e4
    dfv = (defocus_um - 0.5 * astigmatism_um) * 1e4
    ctf = ctf_2d((H, W), angpix, voltage, cs, amplitude_contrast, dfu, dfv, astigmatism_angle, bfactor, phase_shift)
    mtf = _mtf_2d((H, W), mtf_blur_px)

    transmission = np.exp(-(t_ice / _LAMBDA_ICE + t_carbon / _LAMBDA_CARBON + t_contam / _LAMBDA_CONTAM)).astype(np.float32)
    if t_aggr.any() or t_carbon.any() or t_contam.any():
        contam_t_eff = 250.0 * np.tanh(t_contam / 250.0)  # strong phase objects: keep the linear CTF sane
        phi_other = sigma * (_DV_PROTEIN * t_aggr + _DV_CARBON * t_carbon + _DV_ICE * contam_t_eff)
        c_other = _irfft(ctf * _rfft(phi_other), (H, W))
    else:  # nothing but particles in the ice: skip an FFT pair
        c_other = np.zeros((H, W), dtype=np.float32)
    c_part = _irfft(ctf * _rfft(sigma * _DV_PROTEIN * t_particles), (H, W))
    # per unit of D a^2: intensity before the detector, and the particles' part of it
    intensity = transmission * (1.0 - 2.0 * (c_other + c_part))
    np.clip(intensity, 0.0, None, out=intensity)
    sig_part = _irfft(mtf * _rfft(-2.0 * transmission * c_part), (H, W))

    pmask = labels == PARTICLE
    region = pmask if pmask.any() else np.ones((H, W), dtype=bool)
    mtf_power = _mean_power_rfft(mtf, W)
    mean_int = float(intensity[region].mean())
    unit_signal = float(np.mean(sig_part[pmask].astype(np.float64) ** 2)) if pmask.any() else 0.0
    # vitreous-ice structure: an amorphous random phase field seen through the CTF and MTF; it puts Thon rings
    # into the background as in real micrographs. Part of the noise, not of the clean image.
    f_struct = float(np.clip(structural_noise, 0.0, 0.95))
    struct_unit = None
    if f_struct > 0:
        spec = rng.standard_normal((H, W // 2 + 1), dtype=np.float32) + 1j * rng.standard_normal(
            (H, W // 2 + 1), dtype=np.float32
        )
        struct_unit = -2.0 * transmission * _irfft(ctf * mtf * spec, (H, W))
        u_struct = float(np.mean(struct_unit[region].astype(np.float64) ** 2))
    if snr is not None:
        if unit_signal <= 0:
            # no particles here: calibrate on virtual particles so the noise level matches the requested SNR
            unit_signal, mean_int = _virtual_calibration(
                rng, species, (H, W), angpix, size_jitter, density, ctf, mtf, transmission, sigma
            )
        # shot-noise power (1 - f) P_noise = mean_int * c * mtf_power, with P_noise = unit_signal c^2 / snr
        counts_per_px = snr * mean_int * mtf_power / ((1.0 - f_struct) * unit_signal)
        dose_used = counts_per_px / (angpix * angpix)
    else:
        dose_used = float(dose)
        counts_per_px = dose_used * angpix * angpix
    expected = counts_per_px * intensity
    clean = _irfft(mtf * _rfft(expected), (H, W))
    shot = rng.poisson(expected).astype(np.float32) - expected
    noise = _irfft(mtf * _rfft(shot), (H, W))
    shot_power = mean_int * counts_per_px * mtf_power
    struct_power = 0.0
    if struct_unit is not None:
        struct_power = f_struct / (1.0 - f_struct) * shot_power
        noise += (math.sqrt(struct_power / u_struct) * struct_unit).astype(np.float32)
    image = clean + noise

    signal_power = unit_signal * counts_per_px**2
    noise_power = shot_power + struct_power
    snr_expected = signal_power / noise_power if signal_power > 0 else float("nan")
    if pmask.any():
        noise_measured = float(np.var(noise[pmask].astype(np.float64)))
        sig_meas = float(np.mean((sig_part[pmask].astype(np.float64) * counts_per_px) ** 2))
        snr_measured = sig_meas / noise_measured if noise_measured > 0 else float("nan")
    else:
        snr_measured = float("nan")

    export = None
    if quantise_8bit:
        mu = float(image.mean())
        sd = float(image.std()) or 1.0
        gain = export_sd / sd
        image = np.clip(np.rint((image - mu) * gain + export_mean), 0, 255).astype(np.float32)
        clean = ((clean - mu) * gain + export_mean).astype(np.float32)
        signal_power *= gain * gain
        noise_power *= gain * gain
        export = {"mean": float(export_mean), "sd": float(export_sd), "gain": gain}
    particle_signal = None
    if keep_particle_signal:
        particle_signal = (sig_part * (counts_per_px * (export["gain"] if export else 1.0))).astype(np.float32)

    d_px = np.asarray(diam, dtype=np.float64)
    meta = {
        "shape": [H, W],
        "angpix": float(angpix),
        "snr": float(snr_expected) if snr is None or not pmask.any() else float(snr),
        "snr_db": _db(snr_expected if snr is None or not pmask.any() else snr),
        "snr_requested": None if snr is None else float(snr),
        "snr_measured": snr_measured,
        "snr_measured_db": _db(snr_measured),
        "signal_power": float(signal_power),
        "noise_power": float(noise_power),
        "dose": float(dose_used),
        "counts_per_px": float(counts_per_px),
        "structural_noise": f_struct,
        "voltage": float(voltage),
        "cs": float(cs),
        "amplitude_contrast": float(amplitude_contrast),
        "phase_shift": float(phase_shift),
        "defocus_u": float(dfu),
        "defocus_v": float(dfv),
        "defocus_angle": float(astigmatism_angle),
        "bfactor": float(bfactor),
        "mtf_blur_px": float(mtf_blur_px),
        "families": [m.family for m in species],
        "particle_diameter_px": float(d_nominal_px),
        "particle_diameter_A": float(d_nominal_px * angpix),
        "n_particles": int(len(coords)),
        "n_requested": int(0 if empty else n_target),
        "empty": bool(empty),
        "ice_thickness_A": float(ice_thickness_A),
        "ice_gradient": float(ice_gradient),
        "n_ice": int(n_ice),
        "n_aggregates": int(n_aggregates),
        "carbon": carbon_info,
        "contamination_fraction": float((labels == CONTAMINATION).mean()),
        "quantise_8bit": export,
    }
    return SimulatedMicrograph(
        image=image.astype(np.float32, copy=False),
        clean=clean.astype(np.float32, copy=False),
        labels=labels,
        instances=instances,
        coords=np.asarray(coords, dtype=np.float64).reshape(-1, 2),
        diameters_px=d_px,
        meta=meta,
        rotations=poses["rotations"],
        scales=poses["scales"],
        species=poses["species"],
        particle_signal=particle_signal,
    )


def _place_particles(rng, species, n_target, shape, angpix, size_jitter, min_separation, forbidden):
    """Random sequential placement with a least centre distance; renders each accepted particle.

    Returns centres, diameters (px), per particle (dst slices, src slices, thickness patch, mask patch), and the
    poses: a dict of ``rotations`` (N x 3 x 3), ``scales`` (N) and ``species`` (N, index into ``species``).
    The poses are recorded, not drawn, so the random stream is the same as without them.
    """
    H, W = shape
    coords = np.zeros((max(n_target, 0), 2))
    diam = np.zeros(max(n_target, 0))
    rots = np.zeros((max(n_target, 0), 3, 3))
    scales = np.zeros(max(n_target, 0))
    which = np.zeros(max(n_target, 0), dtype=np.int64)
    rendered = []
    n = 0
    tries = 0
    max_tries = 30 * n_target + 50
    ring = np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], axis=1)
    while n < n_target and tries < max_tries:
        tries += 1
        x, y = rng.uniform(0, W - 1), rng.uniform(0, H - 1)
        k = int(rng.integers(len(species)))
        m = species[k]
        scale = float(np.clip(1.0 + size_jitter * rng.normal(), 0.6, 1.4))
        d = m.diameter * scale / angpix
        if forbidden[int(round(y)), int(round(x))]:
            continue
        pts = np.array([x, y]) + 0.5 * d * ring
        px = np.clip(np.rint(pts[:, 0]).astype(int), 0, W - 1)
        py = np.clip(np.rint(pts[:, 1]).astype(int), 0, H - 1)
        if forbidden[py, px].any():
            continue
        if n:
            d2 = (coords[:n, 0] - x) ** 2 + (coords[:n, 1] - y) ** 2
            if np.any(d2 < (min_separation * 0.5 * (diam[:n] + d)) ** 2):
                continue
        rot = Rotation.random(rng=rng).as_matrix()
        fx, fy = x - math.floor(x), y - math.floor(y)
        patch, half = project_model(m, rot, angpix, (fx, fy), scale)
        sl = _slices(shape, math.floor(y) - half, math.floor(x) - half, 2 * half + 1)
        if sl is None:  # cannot happen for a centre inside the image; kept for safety
            continue
        coords[n] = (x, y)
        diam[n] = d
        rots[n] = rot
        scales[n] = scale
        which[n] = k
        rendered.append((sl[0], sl[1], patch, binarise_projection(patch)))
        n += 1
    return coords[:n], diam[:n], rendered, {"rotations": rots[:n], "scales": scales[:n], "species": which[:n]}


def _virtual_calibration(rng, species, shape, angpix, size_jitter, density, ctf, mtf, transmission, sigma):
    """Signal power per unit dose of particles that are not drawn (empty micrographs)."""
    H, W = shape
    d_px = float(np.mean([m.diameter for m in species])) / angpix
    n = max(1, int(round(max(density, 0.05) * H * W / (math.pi * 0.25 * d_px**2))))
    sub = np.random.default_rng(rng.integers(2**63))  # keep the main stream independent of this step's length
    coords, _, rendered, _ = _place_particles(sub, species, n, shape, angpix, size_jitter, 1.0, np.zeros(shape, bool))
    t = np.zeros(shape, dtype=np.float32)
    mask = np.zeros(shape, dtype=bool)
    for dst, src, patch, m in rendered:
        t[dst] += patch[src]
        mask[dst] |= m[src]
    c = _irfft(ctf * _rfft(sigma * _DV_PROTEIN * t), shape)
    s = _irfft(mtf * _rfft(-2.0 * transmission * c), shape)
    intensity = transmission * (1.0 - 2.0 * c)
    return float(np.mean(s[mask].astype(np.float64) ** 2)), float(intensity[mask].mean())


def _mean_power_rfft(h: np.ndarray, width: int) -> float:
    """Mean of ``|h|^2`` over the full 2D frequency grid, given ``h`` on the rfft2 half grid."""
    w = np.full(h.shape[1], 2.0)
    w[0] = 1.0
    if width % 2 == 0:
        w[-1] = 1.0
    col = np.einsum("ij,ij->j", h, h, dtype=np.float64) if not np.iscomplexobj(h) else (np.abs(h) ** 2).sum(axis=0)
    return float((col * w).sum() / (h.shape[0] * width))


def _db(x) -> float:
    x = float(x)
    return 10.0 * math.log10(x) if x > 0 and math.isfinite(x) else float("nan")


# ------------------------------------------------------------------------------------- domain randomisation


def random_config(rng: np.random.Generator, **overrides) -> dict:
    """Draw a domain-randomised set of :func:`simulate_micrograph` options.

    Every option is drawn from ``rng``; ``overrides`` replace draws (and may add any other option, e.g.
    ``shape``). The result can be passed on as ``simulate_micrograph(rng, **random_config(rng, ...))``.

    Drawn: ``snr`` log-uniform 0.01..0.5 (-20..-3 dB), ``voltage`` 200 or 300 kV with ``cs`` 2.0-2.7 mm,
    ``amplitude_contrast`` 0.07-0.1, ``defocus_um`` 0.5-3.5, ``astigmatism_um`` 0-0.3, ``bfactor`` 20-400,
    ``mtf_blur_px`` 0-1.2, ``structural_noise`` 0.2-0.8, one shape family (``families``), ``n_species`` 1 (10 %: 2), ``size_jitter`` 0-0.12,
    ``density`` log-uniform 0.02-0.5, ``min_separation`` 0.7-1.1 (touching and overlapping particles),
    ``empty`` (5 %), ``n_ice`` (40 %: 1-4), ``n_aggregates`` (25 %: 1-3), ``carbon_edge`` (15 %), ``carbon_hole`` (4 %),
    ``ice_thickness_A`` 200-900, ``ice_gradient`` 0-0.5, ``quantise_8bit`` (50 %, with ``export_sd`` 5-10) and
    ``angpix``: when ``particle_diameter_px`` is in ``overrides`` the particle is given a physical diameter drawn
    from its family's size range and ``angpix = diameter_A / particle_diameter_px``; otherwise 1-6 A/px.

    Parameters
    ----------
    rng : numpy.random.Generator
    **overrides
        Options to fix instead of drawing.

    Returns
    -------
    dict
    """
    cfg: dict = {}
    cfg["snr"] = float(np.exp(rng.uniform(np.log(0.01), np.log(0.5))))
    cfg["voltage"] = float(rng.choice([200.0, 300.0]))
    cfg["cs"] = float(rng.uniform(2.0, 2.7))
    cfg["amplitude_contrast"] = float(rng.uniform(0.07, 0.1))
    cfg["defocus_um"] = float(rng.uniform(0.5, 3.5))
    cfg["astigmatism_um"] = float(rng.uniform(0.0, 0.3))
    cfg["bfactor"] = float(rng.uniform(20.0, 400.0))
    cfg["mtf_blur_px"] = float(rng.uniform(0.0, 1.2))
    cfg["structural_noise"] = float(rng.uniform(0.2, 0.8))
    fam = str(rng.choice(SHAPE_FAMILIES))
    cfg["families"] = (fam,)
    cfg["n_species"] = 2 if rng.random() < 0.1 else 1
    cfg["size_jitter"] = float(rng.uniform(0.0, 0.12))
    cfg["density"] = float(np.exp(rng.uniform(np.log(0.02), np.log(0.5))))
    cfg["min_separation"] = float(rng.uniform(0.7, 1.1))
    cfg["empty"] = bool(rng.random() < 0.05)
    cfg["n_ice"] = int(rng.integers(1, 5)) if rng.random() < 0.4 else 0
    cfg["n_aggregates"] = int(rng.integers(1, 4)) if rng.random() < 0.25 else 0
    cfg["carbon_edge"] = bool(rng.random() < 0.15)
    cfg["carbon_hole"] = bool(rng.random() < 0.04)
    cfg["ice_thickness_A"] = float(rng.uniform(200.0, 900.0))
    cfg["ice_gradient"] = float(rng.uniform(0.0, 0.5))
    cfg["quantise_8bit"] = bool(rng.random() < 0.5)
    cfg["export_sd"] = float(rng.uniform(5.0, 10.0))
    fixed = overrides.get("families")
    if fixed:  # size the particle for the family that will actually be drawn
        fixed = (fixed,) if isinstance(fixed, str) else tuple(fixed)
        fam = check_family(fixed[int(rng.integers(len(fixed)))])
    lo, hi = FAMILY_SIZE_A[fam]
    diameter_A = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    if overrides.get("particle_diameter_px") is not None:
        cfg["angpix"] = diameter_A / float(overrides["particle_diameter_px"])
    else:
        cfg["angpix"] = float(rng.uniform(1.0, 6.0))
        cfg["diameter_A"] = diameter_A
    cfg.update(overrides)
    return cfg
