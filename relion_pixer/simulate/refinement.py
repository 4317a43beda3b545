"""A simulated RELION refinement of one particle type: micrographs, ``run_data.star`` and ``run_class001.mrc``.

What ``relion_pixer labels`` needs, with the ground truth it should reproduce (for tests and the fine-tuning
benchmark). Layout of ``out_dir``::

    Micrographs/mic_0000.mrc               micrographs (as :func:`relion_pixer.simulate.simulate_project`)
    Labels/mic_0000_labels.mrc             the simulator's own label maps (the truth the reprojection should match)
    Labels/mic_0000_instances.mrc          instance maps
    Coordinates/mic_0000.star              true particle centres
    micrographs.star                       data_optics (_rlnMicrographPixelSize) + data_micrographs
    Refine3D/job001/run_data.star          RELION 3.1+ particles: data_optics + data_particles with
                                           _rlnCoordinateX/Y, _rlnAngleRot/Tilt/Psi, _rlnOriginX/YAngst,
                                           _rlnMicrographName, _rlnOpticsGroup (optics: _rlnImagePixelSize)
    Refine3D/job001/run_class001.mrc       the particle as a 3D map (:func:`model_map`), header pixel size set

The particles' angles are the simulator's own orientations (:attr:`SimulatedMicrograph.rotations`) turned into
RELION Euler angles (:func:`relion_pixer.projection.euler_angles`). Their coordinates are what a picker and
``relion_preprocess`` would leave: whole pixels up to ``pick_error_px`` away from the true centre, with the refined
origin (in Angstrom) making up the difference, so that RELION's ``centre = trunc(coordinate) - origin`` is the true
centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from relion_pixer.simulate.micrograph import SimulatedMicrograph, simulate_micrograph
from relion_pixer.simulate.shapes import ParticleModel, check_family, make_shape

__all__ = ["SimulatedRefinement", "model_map", "simulate_refinement"]

REFINE_DIR = "Refine3D/job001"


def model_map(model: ParticleModel, angpix: float, box: int | None = None) -> np.ndarray:
    """The particle model as a 3D density map ``[z, y, x]``, centroid on voxel ``box // 2``.

    Each pseudo-atom's volume is splatted trilinearly onto voxels of ``angpix`` Angstrom and the map is blurred by
    the model's point size (:attr:`ParticleModel.blob_sigma`), as the simulator's projections are, so that the
    map's projections are the simulator's (up to the sampling).

    Parameters
    ----------
    model : ParticleModel
        The particle (coordinates in Angstrom, centroid at the origin).
    angpix : float
        Voxel size in Angstrom.
    box : int, optional
        Side of the cubic map (default: the model's extent plus a 25 % margin, even).

    Returns
    -------
    numpy.ndarray
        ``box^3`` float32 map, protein positive.
    """
    import scipy.ndimage

    if not angpix > 0:
        raise ValueError(f"angpix must be positive, got {angpix}")
    if box is None:
        box = 2 * int(math.ceil(0.5 * 1.25 * model.extent / angpix)) + 2
    box = int(box)
    g = model.xyz.astype(np.float64) / angpix + box // 2  # (x, y, z) voxel coordinates
    if len(g) and (g.min() < 0 or g.max() > box - 2):
        raise ValueError(f"a {box}^3 box of {angpix} A voxels is too small for a {model.extent:.0f} A particle")
    vol = np.zeros((box,) * 3, np.float64)
    i0 = np.floor(g).astype(np.int64)
    f = g - i0
    w0 = model.weight.astype(np.float64)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = w0 * np.abs(1 - dx - f[:, 0]) * np.abs(1 - dy - f[:, 1]) * np.abs(1 - dz - f[:, 2])
                np.add.at(vol, (i0[:, 2] + dz, i0[:, 1] + dy, i0[:, 0] + dx), w)
    sigma = model.blob_sigma / angpix
    if sigma > 0.3:
        vol = scipy.ndimage.gaussian_filter(vol, sigma, truncate=3.0)
    return (vol / angpix**3).astype(np.float32)


@dataclass
class SimulatedRefinement:
    """What :func:`simulate_refinement` wrote (paths relative to ``out_dir``, which is the project directory)."""

    out_dir: Path
    particles_star: str
    map_mrc: str
    micrographs_star: str
    micrographs: list = field(default_factory=list)
    model: ParticleModel | None = None
    angpix: float = 1.0
    n_particles: int = 0
    sims: list = field(default_factory=list)


def simulate_refinement(
    out_dir,
    n: int,
    seed: int = 0,
    *,
    model: ParticleModel | None = None,
    family: str = "elongated",
    diameter_A: float = 300.0,
    shape: tuple[int, int] = (1024, 1024),
    angpix: float = 3.75,
    snr: float | tuple[float, float] = 0.02,
    map_angpix: float | None = None,
    pick_error_px: int = 3,
    keep_fraction: float = 1.0,
    defocus_um: tuple[float, float] = (1.0, 3.0),
    contamination: float = 0.3,
    keep_sims: bool = False,
    **options,
) -> SimulatedRefinement:
    """Simulate micrographs of one particle type and write them with a refinement of their particles.

    Parameters
    ----------
    out_dir : str or Path
        Project directory (created). All paths in the STAR files are relative to it.
    n : int
        Number of micrographs.
    seed : int
        Seed: micrograph ``i`` is drawn from its own generator (``SeedSequence(seed).spawn``), and the particle
        model (when not given) from another.
    model : ParticleModel, optional
        The particle; default ``make_shape(family, diameter_A)`` drawn from the seed.
    family, diameter_A : str, float
        Shape family and particle diameter (Angstrom) of the default model.
    shape : tuple of int
        Micrograph shape ``(H, W)``.
    angpix : float
        Micrograph pixel size (Angstrom).
    snr : float or (low, high)
        SNR of each micrograph (see :func:`simulate_micrograph`), or a log-uniform range.
    map_angpix : float, optional
        Voxel size of the refined map (default: ``angpix``).
    pick_error_px : int
        Largest error of the picked (whole-pixel) coordinates; the origins make up for it.
    keep_fraction : float
        Fraction of the particles that "survived classification" and are in ``run_data.star`` (the others are in
        the micrographs but not in the refinement, as in real data).
    defocus_um : tuple of float
        Range the defocus of each micrograph is drawn from.
    contamination : float
        Mean number of ice blobs per micrograph (Poisson).
    keep_sims : bool
        Keep the :class:`SimulatedMicrograph` objects in the result (memory).
    **options
        Further :func:`simulate_micrograph` options (``density``, ``size_jitter`` (default 0: one particle type),
        ``quantise_8bit``, ...).

    Returns
    -------
    SimulatedRefinement
    """
    import mrcfile
    import pandas as pd
    import starfile

    from relion_pixer.projection import euler_angles
    from relion_pixer.simulate.project import write_micrograph_files

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    children = np.random.SeedSequence(int(seed)).spawn(int(n) + 1)
    if model is None:
        check_family(family)
        model = make_shape(np.random.default_rng(children[0]), family, diameter=diameter_A,
                           n_points=options.pop("n_points", 4000))
    options.setdefault("size_jitter", 0.0)
    map_angpix = float(map_angpix or angpix)

    particles, mic_rows, sims, names = [], [], [], []
    for i in range(int(n)):
        rng = np.random.default_rng(children[i + 1])
        snr_i = float(np.exp(rng.uniform(*np.log(snr)))) if isinstance(snr, (tuple, list)) else float(snr)
        kw = dict(defocus_um=float(rng.uniform(*defocus_um)), astigmatism_um=float(rng.uniform(0.0, 0.1)),
                  n_ice=int(rng.poisson(contamination)), ice_thickness_A=float(rng.uniform(300.0, 600.0)),
                  ice_gradient=float(rng.uniform(0.05, 0.3)))
        kw.update(options)
        sim = simulate_micrograph(rng, shape=shape, angpix=angpix, snr=snr_i, models=[model], **kw)
        name = f"mic_{i:04d}"
        rel = write_micrograph_files(out_dir, name, sim, angpix)
        names.append(rel["micrograph"])
        mic_rows.append({"rlnMicrographName": rel["micrograph"], "rlnOpticsGroup": 1,
                         "rlnDefocusU": sim.meta["defocus_u"], "rlnDefocusV": sim.meta["defocus_v"],
                         "rlnDefocusAngle": sim.meta["defocus_angle"]})
        centres = sim.coords
        keep = rng.random(len(centres)) < keep_fraction
        err = rng.integers(-int(pick_error_px), int(pick_error_px) + 1, size=centres.shape) if pick_error_px else 0
        coords = np.clip(np.round(centres) + err, 0, [shape[1] - 1, shape[0] - 1]).astype(np.float64)
        origin_A = (np.trunc(coords) - centres) * angpix  # centre = trunc(coordinate) - origin / angpix
        angles = euler_angles(sim.rotations)
        for j in np.flatnonzero(keep):
            particles.append({"rlnCoordinateX": coords[j, 0], "rlnCoordinateY": coords[j, 1],
                              "rlnAngleRot": angles[j, 0], "rlnAngleTilt": angles[j, 1], "rlnAnglePsi": angles[j, 2],
                              "rlnOriginXAngst": origin_A[j, 0], "rlnOriginYAngst": origin_A[j, 1],
                              "rlnMicrographName": rel["micrograph"], "rlnOpticsGroup": 1})
        if keep_sims:
            sims.append(sim)

    voltage, cs, ac = (float(options.get(k, d)) for k, d in (("voltage", 300.0), ("cs", 2.7),
                                                              ("amplitude_contrast", 0.1)))
    vol = model_map(model, map_angpix)
    optics = {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [voltage],
              "rlnSphericalAberration": [cs], "rlnAmplitudeContrast": [ac]}
    starfile.write({"optics": pd.DataFrame({**optics, "rlnMicrographPixelSize": [float(angpix)]}),
                    "micrographs": pd.DataFrame(mic_rows)}, out_dir / "micrographs.star", overwrite=True)
    refine = out_dir / REFINE_DIR
    refine.mkdir(parents=True, exist_ok=True)
    part_optics = pd.DataFrame({**optics, "rlnImagePixelSize": [map_angpix], "rlnImageSize": [vol.shape[0]],
                                "rlnImageDimensionality": [2]})
    starfile.write({"optics": part_optics, "particles": pd.DataFrame(particles)}, refine / "run_data.star",
                   overwrite=True)
    with mrcfile.new(refine / "run_class001.mrc", overwrite=True) as mrc:
        mrc.set_data(vol)
        mrc.voxel_size = map_angpix
    return SimulatedRefinement(out_dir, f"{REFINE_DIR}/run_data.star", f"{REFINE_DIR}/run_class001.mrc",
                               "micrographs.star", names, model, float(angpix), len(particles), sims)
