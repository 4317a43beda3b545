"""Write simulated micrographs as a RELION-looking project with ground truth.

Layout of ``out_dir``::

    Micrographs/mic_0000.mrc            float32 micrographs, header pixel size set
    Labels/mic_0000_labels.mrc          int8 label maps (0 background, 1 particle, 2 contamination)
    Labels/mic_0000_instances.mrc       int16 instance maps (particle index + 1, 0 elsewhere; float32 if > 32767)
    Coordinates/mic_0000.star           ground-truth centres, _rlnCoordinateX/Y (0-based pixels, x = column)
    micrographs.star                    data_optics + data_micrographs (with CTF columns), RELION 3.1+ style
    truth.json                          settings, seed and per-micrograph meta (SNR, particle diameter, ...)

Every file is written to a temporary name in its folder and renamed into place, so an interrupted run leaves
no half-written file. Micrograph ``i`` is drawn from its own generator (``SeedSequence(seed).spawn``), so the
same seed gives the same files, and micrograph ``i`` does not depend on ``n``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from relion_pixer.simulate.micrograph import SimulatedMicrograph, simulate_micrograph
from relion_pixer.simulate.shapes import check_family, load_atomic_model, make_shape

__all__ = ["simulate_project", "write_micrograph_files"]


def _atomic(path: Path):
    """Temporary path beside ``path`` that replaces it when the block succeeds (:func:`relion_pixer.io.atomic_output_path`)."""
    from relion_pixer.io import atomic_output_path

    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_output_path(path)


def _write_mrc(path: Path, data: np.ndarray, angpix: float) -> None:
    import mrcfile

    with _atomic(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(data))
            mrc.voxel_size = float(angpix)


def _write_star(path: Path, blocks: dict) -> None:
    import starfile

    with _atomic(path) as tmp:
        starfile.write(blocks, tmp, overwrite=True)


def write_micrograph_files(
    out_dir, name: str, sim: SimulatedMicrograph, angpix: float, dtype=np.float32, labels: bool = True
) -> dict:
    """Write one simulated micrograph, its label and instance maps and its coordinate STAR.

    ``dtype`` is the micrograph's MRC data type (float32, or float16 for small files); ``labels=False`` skips
    the label and instance maps. Returns the paths written, relative to ``out_dir``.
    """
    import pandas as pd

    out_dir = Path(out_dir)
    rel = {
        "micrograph": f"Micrographs/{name}.mrc",
        "labels": f"Labels/{name}_labels.mrc",
        "instances": f"Labels/{name}_instances.mrc",
        "coordinates": f"Coordinates/{name}.star",
    }
    with np.errstate(over="ignore", invalid="ignore"):
        image = sim.image.astype(dtype)
    if not np.isfinite(image).all():
        raise ValueError(f"{name}: pixel values up to {np.abs(sim.image).max():.4g} do not fit in {np.dtype(dtype).name} "
                         "(float16 holds up to 65504): store float32 (no --float16), or lower the dose or pixel size")
    _write_mrc(out_dir / rel["micrograph"], image, angpix)
    if labels:
        _write_mrc(out_dir / rel["labels"], sim.labels.astype(np.int8), angpix)
        inst = sim.instances.astype(np.int16) if sim.instances.max(initial=0) < 32767 else sim.instances.astype(np.float32)
        _write_mrc(out_dir / rel["instances"], inst, angpix)
    else:
        del rel["labels"], rel["instances"]
    df = pd.DataFrame(
        {
            "rlnCoordinateX": sim.coords[:, 0].astype(float),
            "rlnCoordinateY": sim.coords[:, 1].astype(float),
        }
    )
    _write_star(out_dir / rel["coordinates"], {"": df})
    return rel


def simulate_project(
    out_dir,
    n: int,
    seed: int = 0,
    shape: tuple[int, int] = (1024, 1024),
    angpix: float = 5.36,
    snr: float | tuple[float, float] | None = 0.05,
    diameter_A: float | None = None,
    family: str | None = None,
    model_file=None,
    defocus_um: tuple[float, float] = (0.8, 3.5),
    voltage: float = 300.0,
    cs: float = 2.7,
    amplitude_contrast: float = 0.1,
    contamination: float = 0.5,
    carbon_probability: float = 0.1,
    quantise_8bit: bool = True,
    progress: bool = False,
    float16: bool = False,
    labels: bool = True,
    **options,
) -> Path:
    """Simulate ``n`` micrographs of one particle species and write them as a RELION-looking project.

    Parameters
    ----------
    out_dir : str or Path
        Project folder (created; existing files of the same names are replaced).
    n : int
        Number of micrographs.
    seed : int
        Seed; the same seed and settings give the same project.
    shape : tuple of int
        Micrograph shape ``(H, W)``.
    angpix : float
        Pixel size in Angstrom (written to the MRC headers and the optics table).
    snr : float, (low, high) or None
        Linear SNR of every micrograph, a log-uniform range drawn per micrograph, or None for the dose in
        ``options`` (default 40 e/A^2).
    diameter_A : float, optional
        Particle diameter in Angstrom (default: the family's own size range; 300 A for ``ribosome``-like).
    family : str, optional
        Procedural shape family (:data:`~relion_pixer.simulate.shapes.ALL_FAMILIES`); default ``ribosome``
        unless ``model_file`` is given.
    model_file : str or Path, optional
        Atomic model (PDB / mmCIF) to use as the particle instead of a procedural shape.
    defocus_um : tuple of float
        Range the defocus of each micrograph is drawn from (uniform).
    voltage, cs, amplitude_contrast : float
        Optics, written to ``data_optics``.
    contamination : float
        Mean number of ice blobs per micrograph (Poisson); aggregates get a third of it.
    carbon_probability : float
        Probability that a micrograph shows a carbon film edge.
    quantise_8bit : bool
        Export the micrographs like 8-bit images (as the EMPIAR-10028 exports).
    progress : bool
        Show a progress bar (tqdm).
    float16 : bool
        Store micrographs as float16 (MRC mode 12; half the size) instead of float32.
    labels : bool
        Also write the label and instance maps.
    **options
        Further fixed :func:`simulate_micrograph` options (e.g. ``density``, ``mtf_blur_px``).

    Returns
    -------
    Path
        The project folder.
    """
    import pandas as pd

    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    out_dir = Path(out_dir)
    children = np.random.SeedSequence(int(seed)).spawn(int(n) + 1)
    species_rng = np.random.default_rng(children[0])
    if model_file is not None:
        model = load_atomic_model(model_file, max_points=options.get("n_points", 4000), rng=species_rng)
        if diameter_A is not None:
            model = model.scaled(diameter_A)
    else:
        family = family or "ribosome"
        check_family(family)
        if diameter_A is None and family == "ribosome":
            diameter_A = 300.0
        model = make_shape(species_rng, family, diameter=diameter_A, n_points=options.get("n_points", 4000))
    options.pop("n_points", None)
    width_px = float(model.diameter) / float(angpix)
    if width_px > min(shape):
        raise ValueError(f"a {model.diameter:.4g} A particle is {width_px:.0f} px wide at {angpix:g} A/px, wider than "
                         f"the {shape[1]} x {shape[0]} px micrograph: check --angpix, --diameter and --size")
    out_dir.mkdir(parents=True, exist_ok=True)

    rows, truth = [], []
    iterator = range(int(n))
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="simulate", unit="mic")
    for i in iterator:
        rng = np.random.default_rng(children[i + 1])
        if isinstance(snr, (tuple, list)):
            snr_i = float(np.exp(rng.uniform(np.log(snr[0]), np.log(snr[1]))))
        else:
            snr_i = snr
        kw = dict(
            defocus_um=float(rng.uniform(*defocus_um)),
            astigmatism_um=float(rng.uniform(0.0, 0.1)),
            n_ice=int(rng.poisson(contamination)),
            n_aggregates=int(rng.poisson(contamination / 3.0)),
            carbon_edge=bool(rng.random() < carbon_probability),
            ice_gradient=float(rng.uniform(0.05, 0.3)),
            ice_thickness_A=float(rng.uniform(300.0, 700.0)),
            quantise_8bit=quantise_8bit,
            export_mean=float(rng.uniform(80.0, 100.0)),
            export_sd=float(rng.uniform(6.0, 8.0)),
            voltage=voltage,
            cs=cs,
            amplitude_contrast=amplitude_contrast,
        )
        kw.update(options)
        sim = simulate_micrograph(rng, shape=shape, angpix=angpix, snr=snr_i, models=[model], **kw)
        name = f"mic_{i:04d}"
        rel = write_micrograph_files(out_dir, name, sim, angpix, np.float16 if float16 else np.float32, labels)
        meta = dict(sim.meta)
        rows.append(
            {
                "rlnMicrographName": rel["micrograph"],
                "rlnOpticsGroup": 1,
                "rlnDefocusU": meta["defocus_u"],
                "rlnDefocusV": meta["defocus_v"],
                "rlnDefocusAngle": meta["defocus_angle"],
            }
        )
        truth.append({"name": name, **rel, **meta})

    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnMicrographPixelSize": [float(angpix)],
            "rlnVoltage": [float(voltage)],
            "rlnSphericalAberration": [float(cs)],
            "rlnAmplitudeContrast": [float(amplitude_contrast)],
        }
    )
    mics = pd.DataFrame(
        rows, columns=["rlnMicrographName", "rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]
    )
    _write_star(out_dir / "micrographs.star", {"optics": optics, "micrographs": mics})
    settings = {
        "n": int(n),
        "seed": int(seed),
        "shape": [int(shape[0]), int(shape[1])],
        "angpix": float(angpix),
        "snr": list(snr) if isinstance(snr, (tuple, list)) else snr,
        "particle": model.family,
        "particle_diameter_A": float(model.diameter),
        "coordinate_convention": "0-based pixel positions, x = column, y = row",
        "options": {k: v for k, v in options.items() if isinstance(v, (int, float, str, bool, type(None)))},
    }
    with _atomic(out_dir / "truth.json") as tmp:
        tmp.write_text(json.dumps(_finite({"settings": settings, "micrographs": truth}), indent=1, default=_json_default))
    return out_dir


def _finite(obj):
    """Replace NaN / inf by None, recursively (strict JSON)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not np.isfinite(obj):
        return None
    return obj


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
