"""Segmentation labels by reprojecting a RELION refinement (``relion_pixer labels``, also a RELION External job).

For each refined particle the map is projected at the particle's Euler angles (RELION convention, see
:mod:`relion_pixer.projection`), binarised with the shared definition of a particle mask
(:func:`relion_pixer.masks.binarise_projection`: projected density >= :data:`~relion_pixer.masks.MASK_FRACTION` of
the projection's maximum, holes filled; the simulator uses the same function, so the two kinds of label agree), and
pasted (union, clipped at the edges) into a ``uint8`` label map of its micrograph, centred on
``trunc(coordinate) - origin`` (see :func:`particle_centres`) and at the micrograph's pixel size.

Speed: masks are coarse, so the map is Fourier-cropped to a working box of at most ``max_box`` voxels (never finer
than the micrograph's pixels), projected there in batches (Fourier slices by default, see
:class:`relion_pixer.projection.Projector`), then bilinearly resampled onto the micrograph's grid with the particle's
exact sub-pixel centre, and only then thresholded. Tens of thousands of particles per minute on one CPU core
(``benchmarks/bench_labels.py``).

The mask threshold is relative (a fraction of each projection's own maximum), so the map's scale and offset do not
matter, but noise in an unfiltered map can fragment masks: ``lowpass`` (``--lowpass``, Angstrom) filters the map
first. Only refined particles get a mask: particles discarded earlier (classification) are background in these
labels, and micrographs without refined particles get no label map.

Outputs, in ``--o``:

* ``<micrograph path after its Type/jobNNN/ prefix, without extension>_labels.mrc`` (RELION's naming, e.g.
  ``MotionCorr/job002/Movies/x.mrc`` -> ``Movies/x_labels.mrc``): the label map (MRC mode 0, 8-bit; values
  0 background, 1 particle), with the micrograph's pixel size in the header;
* ``.../<stem>_coords.star``: the particle centres (``_rlnCoordinateX/Y``, 0-based micrograph pixels, float);
* ``labels.star``: table ``data_coordinate_files`` with ``_rlnMicrographName``, ``_rlnMicrographCoordinates``,
  ``_pixerLabelName``, ``_rlnMicrographPixelSize`` and ``_pixerNrParticles``, plus a ``data_pixer_labels`` block
  with the particle diameter measured on the masks as the simulator defines it (``_pixerParticleDiameterAngst``,
  see :meth:`MaskRenderer.diameter_angstrom`) and the settings used;
* ``RELION_OUTPUT_NODES.star`` declaring ``labels.star`` as :data:`NODE_TYPE` (RELION 4 / 5; RELION 3.1 has
  only integer node types, none generic, so none is declared there), and ``RELION_JOB_EXIT_SUCCESS`` (or
  ``RELION_JOB_EXIT_FAILURE`` with the reason on stderr), through :mod:`relion_pixer.relion`.

All paths in ``labels.star`` are relative to the project directory (RELION style) when ``--o`` is.
:func:`read_label_set` reads the set back at network scale for fine-tuning (``relion_pixer train --from-labels``).
The coordinate files are RELION autopick files (``_rlnCoordinateX/Y``, figure of merit 1), and ``labels.star`` is a
valid RELION coordinate-file list (RELION 4/5 keep the unknown ``_pixer*`` columns, with a warning).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from relion_pixer import NET_DIAMETER_PX, PARTICLE
from relion_pixer.io import atomic_output_path, atomic_write, format_star_table, write_coordinates_star
from relion_pixer.masks import MASK_FRACTION, binarise_projection
from relion_pixer.projection import Projector, lowpass_volume, resample_volume
from relion_pixer.relion import MODEL_NODE_LABEL

__all__ = [
    "LabelError",
    "LabelSet",
    "MaskRenderer",
    "paste_mask",
    "read_particles",
    "read_micrograph_pixel_sizes",
    "particle_centres",
    "make_labels",
    "read_label_set",
    "main",
    "LABELS_STAR",
    "LABEL_COLUMN",
    "NODE_TYPE",
]

#: Name of the label set written in the output directory.
LABELS_STAR = "labels.star"
#: Custom STAR column naming each micrograph's label map (RELION 4/5 keep unknown columns, with a warning).
LABEL_COLUMN = "pixerLabelName"
#: Node type of ``labels.star`` in ``RELION_OUTPUT_NODES.star``: RELION 4/5's generic "ProcessData" top-level type
#: (as ``ProcessData.star.relion.postprocess`` for postprocess.star), with our own sub-type.
NODE_TYPE = "ProcessData.star.relion_pixer.labels"
#: Model file a labels job with ``--finetune`` writes in its output directory, and its node type.
FINETUNED_MODEL = "pixer_finetuned.pt"
MODEL_NODE_TYPE = MODEL_NODE_LABEL
#: Default side, in voxels, of the working box the map is projected in.
DEFAULT_MAX_BOX = 64

_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


class LabelError(Exception):
    """A problem with one input file; the message names the file and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


# --------------------------------------------------------------------------------------------------------------
# reading inputs


def _read_star(path) -> dict:
    """The blocks of a STAR file as the picking job reads them (:func:`relion_pixer.io.read_star`: RELION's rules for
    loops, quotes and ``#``; every value a string, read as a number by :func:`_numbers` where one is meant)."""
    from relion_pixer import io

    path = Path(path)
    if not path.is_file():
        raise LabelError(path, "file not found")
    try:
        return io.read_star(path)
    except io.StarError as exc:
        raise LabelError(path, str(exc).removeprefix(f"{path}: ")) from exc


def _numbers(column: pd.Series) -> np.ndarray:
    """A STAR column as float64; a value that is not a number becomes NaN (each caller says which rows are bad)."""
    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)


def _detector_angpix(df: pd.DataFrame) -> np.ndarray | None:
    """RELION <= 3.0's pixel size per row, ``1e4 * _rlnDetectorPixelSize / _rlnMagnification`` (A), or None when the
    table lacks either column."""
    if not {"rlnDetectorPixelSize", "rlnMagnification"} <= set(df.columns):
        return None
    return _numbers(df["rlnDetectorPixelSize"]) * 1e4 / _numbers(df["rlnMagnification"])


def _loop_with(blocks: dict, prefer: str, column: str):
    if isinstance(blocks.get(prefer), pd.DataFrame):
        return blocks[prefer]
    for df in blocks.values():
        if isinstance(df, pd.DataFrame) and column in df.columns:
            return df
    return None


def _optics_column(df: pd.DataFrame, optics, column: str) -> np.ndarray | None:
    """Per-row value of an optics-group column (RELION 3.1+), or None when absent."""
    if column in df.columns:
        return _numbers(df[column])
    if optics is None or column not in optics.columns or "rlnOpticsGroup" not in optics.columns:
        return None
    if "rlnOpticsGroup" not in df.columns:
        if len(optics) == 1:
            return np.full(len(df), _numbers(optics[column])[0])
        return None
    table = dict(zip(_numbers(optics["rlnOpticsGroup"]), _numbers(optics[column])))
    groups = pd.Series(_numbers(df["rlnOpticsGroup"]))
    missing = sorted(set(groups) - set(table))
    if missing:
        raise KeyError(f"optics group(s) {', '.join(f'{g:g}' for g in missing)} missing from data_optics")
    return groups.map(table).to_numpy(dtype=np.float64)


def read_particles(path, particle_angpix: float | None = None) -> pd.DataFrame:
    """Read a refined particles STAR file (RELION 2/3.0 or 3.1+ style).

    Parameters
    ----------
    path : str or Path
        ``run_data.star`` (or any particles STAR with angles, coordinates and micrograph names).
    particle_angpix : float, optional
        Pixel size of the particle images, for RELION 3.0 files whose origins are in pixels and that carry neither
        ``_rlnImagePixelSize`` nor ``_rlnDetectorPixelSize``/``_rlnMagnification``.

    Returns
    -------
    pandas.DataFrame
        Columns ``micrograph``, ``x``, ``y`` (coordinates, micrograph pixels), ``rot``, ``tilt``, ``psi`` (degrees),
        ``origin_x_A``, ``origin_y_A`` (origin offsets in Angstrom; RELION's origin is the shift that centres the
        particle: centre = coordinate - origin), and ``mic_angpix_optics`` (the optics group's
        ``_rlnMicrographPixelSize``, NaN when absent). ``attrs["optics"]``: the first optics group's values
        (``{"rlnImagePixelSize": ..., ...}``; empty without a data_optics table), so that the file is read once.
    """
    blocks = _read_star(path)
    df = _loop_with(blocks, "particles", "rlnAngleRot")
    if df is None:
        df = _loop_with(blocks, "particles", "rlnCoordinateX")
    if df is None:
        raise LabelError(path, "no particles table (data_particles, or a loop with _rlnCoordinateX)")
    optics = blocks.get("optics") if isinstance(blocks.get("optics"), pd.DataFrame) else None
    needed = ["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", *_ANGLES]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        hint = " (labels need a 3D refinement's run_data.star)" if any(c in missing for c in _ANGLES) else ""
        raise LabelError(path, f"missing column(s) {', '.join('_' + c for c in missing)}{hint}")
    if len(df) == 0:
        raise LabelError(path, "no particles")

    n = len(df)
    if "rlnOriginXAngst" in df.columns and "rlnOriginYAngst" in df.columns:
        ox = _numbers(df["rlnOriginXAngst"])
        oy = _numbers(df["rlnOriginYAngst"])
    elif "rlnOriginX" in df.columns and "rlnOriginY" in df.columns:
        # RELION <= 3.0: origins in pixels of the particle images
        try:
            apix = _optics_column(df, optics, "rlnImagePixelSize")
        except KeyError as exc:
            raise LabelError(path, str(exc)) from exc
        if apix is None:
            apix = _detector_angpix(df)
        if particle_angpix:
            apix = np.full(n, float(particle_angpix))
        if apix is None:
            raise LabelError(
                path,
                "origins _rlnOriginX/Y are in pixels but the particles' pixel size is unknown "
                "(no _rlnImagePixelSize or _rlnDetectorPixelSize/_rlnMagnification): give --particle_angpix",
            )
        if not np.all(np.isfinite(apix) & (apix > 0)):
            raise LabelError(path, "non-positive particle pixel size")
        ox = _numbers(df["rlnOriginX"]) * apix
        oy = _numbers(df["rlnOriginY"]) * apix
    else:
        ox = np.zeros(n)
        oy = np.zeros(n)
    try:
        mic_apix = _optics_column(df, optics, "rlnMicrographPixelSize")
    except KeyError as exc:
        raise LabelError(path, str(exc)) from exc
    out = pd.DataFrame(
        {
            "micrograph": df["rlnMicrographName"].astype(str).to_numpy(),
            "x": _numbers(df["rlnCoordinateX"]),
            "y": _numbers(df["rlnCoordinateY"]),
            "rot": _numbers(df["rlnAngleRot"]),
            "tilt": _numbers(df["rlnAngleTilt"]),
            "psi": _numbers(df["rlnAnglePsi"]),
            "origin_x_A": ox,
            "origin_y_A": oy,
            "mic_angpix_optics": mic_apix if mic_apix is not None else np.full(n, np.nan),
        }
    )
    bad = ~np.isfinite(out[["x", "y", "rot", "tilt", "psi", "origin_x_A", "origin_y_A"]].to_numpy()).all(axis=1)
    if bad.any():
        raise LabelError(path, f"{int(bad.sum())} particle(s) with non-numeric coordinates, angles or origins")
    out.attrs["optics"] = optics.iloc[0].to_dict() if optics is not None and len(optics) else {}
    return out


def read_micrograph_pixel_sizes(path) -> dict[str, float | None]:
    """Micrograph name -> pixel size (Angstrom, None when the file does not say) from a micrographs STAR file.

    RELION 3.1+: the optics group's ``_rlnMicrographPixelSize`` (or ``_rlnImagePixelSize``); RELION <= 3.0:
    ``_rlnDetectorPixelSize * 1e4 / _rlnMagnification``.
    """
    blocks = _read_star(path)
    df = _loop_with(blocks, "micrographs", "rlnMicrographName")
    if df is None or "rlnMicrographName" not in df.columns:
        raise LabelError(path, "no micrographs table with _rlnMicrographName")
    optics = blocks.get("optics") if isinstance(blocks.get("optics"), pd.DataFrame) else None
    apix = None
    try:
        for col in ("rlnMicrographPixelSize", "rlnImagePixelSize"):
            apix = _optics_column(df, optics, col)
            if apix is not None:
                break
    except KeyError as exc:
        raise LabelError(path, str(exc)) from exc
    if apix is None:
        apix = _detector_angpix(df)
    names = df["rlnMicrographName"].astype(str).tolist()
    if apix is None:
        return {name: None for name in names}
    return {name: (float(a) if np.isfinite(a) and a > 0 else None) for name, a in zip(names, apix)}


def _mrc_header(path) -> tuple[tuple[int, int], float | None]:
    """``((ny, nx), angpix or None)`` of a 2D MRC micrograph, reading the header only."""
    import mrcfile

    try:
        with mrcfile.open(path, header_only=True, permissive=True) as mrc:
            h = mrc.header
            nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
            vx = float(mrc.voxel_size.x)
    except (OSError, ValueError) as exc:
        raise LabelError(path, f"cannot read MRC header ({exc})") from exc
    if nz != 1 or nx < 1 or ny < 1:
        raise LabelError(path, f"not a 2D micrograph (header size {nx} x {ny} x {nz})")
    return (ny, nx), (vx if vx > 0 else None)


def _read_map(path, map_angpix: float | None) -> tuple[np.ndarray, float | None]:
    import mrcfile

    path = Path(path)
    if not path.is_file():
        raise LabelError(path, "map not found")
    try:
        with mrcfile.open(path, permissive=True) as mrc:
            data = np.asarray(mrc.data, dtype=np.float32).copy()
            vx = float(mrc.voxel_size.x)
    except (OSError, ValueError) as exc:
        raise LabelError(path, f"cannot read MRC map ({exc})") from exc
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise LabelError(path, f"map not cubic (shape {data.shape})")
    if not np.isfinite(data).all():
        raise LabelError(path, "map contains NaN or infinite values")
    apix = float(map_angpix) if map_angpix else (vx if vx > 0 else None)
    return data, apix


def particle_centres(particles: pd.DataFrame, mic_angpix) -> tuple[np.ndarray, np.ndarray]:
    """Particle centres ``(x, y)`` in micrograph pixels (0-based) from :func:`read_particles` rows.

    RELION extracts a particle around micrograph pixel ``(long) coordinate`` (``src/preprocessing.cpp``,
    ``extractParticlesFromOneMicrograph``: truncation, then the box centre ``N//2`` sits on that pixel), and the
    refined origin is the shift that centres the particle in that box, so the centre is
    ``trunc(coordinate) - origin_A / micrograph_angpix``.
    """
    cx = np.trunc(particles["x"].to_numpy(np.float64)) - particles["origin_x_A"].to_numpy(np.float64) / mic_angpix
    cy = np.trunc(particles["y"].to_numpy(np.float64)) - particles["origin_y_A"].to_numpy(np.float64) / mic_angpix
    return cx, cy


# --------------------------------------------------------------------------------------------------------------
# masks and pasting


def paste_mask(label: np.ndarray, mask: np.ndarray, x0: int, y0: int, value: int = PARTICLE) -> np.ndarray:
    """Set ``label`` to ``value`` where ``mask`` is true, with the mask's top-left pixel at column ``x0``, row ``y0``.

    Union with what is already there; parts of the mask outside the label map are clipped. Returns ``label``.
    """
    h, w = mask.shape
    ny, nx = label.shape
    r0, c0 = max(0, y0), max(0, x0)
    r1, c1 = min(ny, y0 + h), min(nx, x0 + w)
    if r0 >= r1 or c0 >= c1:
        return label
    sub = mask[r0 - y0 : r1 - y0, c0 - x0 : c1 - x0]
    label[r0:r1, c0:c1][sub] = value
    return label


class MaskRenderer:
    """Particle masks of one map on the grid of micrographs of one pixel size.

    Parameters
    ----------
    volume : numpy.ndarray
        Cubic map ``[z, y, x]`` (protein positive).
    map_angpix : float
        Voxel size of the map in Angstrom.
    mic_angpix : float
        Pixel size of the micrographs (and of the label maps) in Angstrom.
    fraction : float
        Mask threshold as a fraction of each projection's maximum (:func:`relion_pixer.masks.binarise_projection`).
    lowpass : float, optional
        Low-pass the map to this resolution (Angstrom) first, so that noise in the map does not fragment masks.
    max_box : int
        Largest working box the map is projected in (it is Fourier-cropped to it).
    method : {"fourier", "real"}
        Projection method (:class:`relion_pixer.projection.Projector`): Fourier slice (fast, default) or real-space
        line integrals.
    """

    def __init__(
        self,
        volume: np.ndarray,
        map_angpix: float,
        mic_angpix: float,
        *,
        fraction: float = MASK_FRACTION,
        lowpass: float | None = None,
        max_box: int = DEFAULT_MAX_BOX,
        method: str = "fourier",
    ):
        vol = np.asarray(volume, dtype=np.float32)
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise ValueError(f"volume must be cubic, got shape {vol.shape}")
        if not (map_angpix and map_angpix > 0 and mic_angpix and mic_angpix > 0):
            raise ValueError(f"pixel sizes must be positive (map {map_angpix!r}, micrograph {mic_angpix!r})")
        n = vol.shape[0]
        self.fraction = float(fraction)
        self.mic_angpix = float(mic_angpix)
        if lowpass:
            vol = lowpass_volume(vol, map_angpix, lowpass)
        target = max(float(mic_angpix), float(map_angpix), n * float(map_angpix) / max(8, int(max_box)))
        m = min(n, max(8, int(round(n * map_angpix / target))))
        self.volume = torch.from_numpy(resample_volume(vol, m) if m != n else vol)
        self.projector = Projector(self.volume, method=method)
        self.box = m
        self.work_angpix = n * float(map_angpix) / m
        #: working pixels per micrograph pixel
        self.scale = self.mic_angpix / self.work_angpix
        self.half = int(math.ceil((m // 2 + 1) / self.scale))

    @property
    def mask_box(self) -> int:
        """Side, in micrograph pixels, of the masks :meth:`masks` returns."""
        return 2 * self.half + 1

    def projections(self, rot, tilt, psi) -> torch.Tensor:
        """Projections ``B x M x M`` at the working scale, centred (no shifts)."""
        return self.projector.project(rot, tilt, psi, out_size=self.box)

    def masks(self, rot, tilt, psi, centres_xy, chunk: int = 256):
        """Yield ``(mask, x0, y0)`` per particle: a boolean ``K x K`` mask on the micrograph grid, its top-left pixel.

        ``centres_xy`` (``B x 2``, micrograph pixels, float) is where each particle's centre lies
        (``coordinate - origin``); the projection is resampled bilinearly so that its centre lands exactly there,
        then binarised with :func:`relion_pixer.masks.binarise_projection`.
        """
        rot, tilt, psi = (np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in (rot, tilt, psi))
        xy = np.asarray(centres_xy, dtype=np.float64).reshape(-1, 2)
        nb = xy.shape[0]
        if not (len(rot) == len(tilt) == len(psi) == nb):
            raise ValueError("angles and centres must have the same length")
        m, half, k = self.box, self.half, self.mask_box
        base = torch.arange(k, dtype=torch.float64) - half
        norm = 2.0 / (m - 1)
        per_chunk = max(1, min(chunk, (1 << 22) // (k * k)))
        for s in range(0, nb, per_chunk):
            e = min(nb, s + per_chunk)
            proj = self.projections(rot[s:e], tilt[s:e], psi[s:e])  # b, m, m
            fl = np.floor(xy[s:e])
            frac = torch.from_numpy(xy[s:e] - fl)
            # working-scale coordinate of micrograph pixel (floor(c) + j - half): (j - half - frac) * scale + m//2
            gx = ((base[None, :] - frac[:, :1]) * self.scale + m // 2) * norm - 1.0  # b, k
            gy = ((base[None, :] - frac[:, 1:]) * self.scale + m // 2) * norm - 1.0
            grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1).to(torch.float32)
            up = torch.nn.functional.grid_sample(
                proj[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True
            )[:, 0].numpy()
            for i in range(e - s):
                yield binarise_projection(up[i], self.fraction), int(fl[i, 0]) - half, int(fl[i, 1]) - half

    def render(self, shape, rot, tilt, psi, centres_xy, out: np.ndarray | None = None, value: int = PARTICLE):
        """Paste the masks of these particles into a label map of ``shape`` (new, or ``out``) and return it."""
        label = np.zeros(shape, dtype=np.uint8) if out is None else out
        for mask, x0, y0 in self.masks(rot, tilt, psi, centres_xy):
            paste_mask(label, mask, x0, y0, value)
        return label

    def diameter_angstrom(self, rot, tilt, psi, max_particles: int = 300) -> float:
        """Particle diameter in Angstrom, defined as the simulator defines it, from these particles' masks.

        The simulator's :attr:`relion_pixer.simulate.shapes.ParticleModel.diameter` is the largest Feret diameter
        (width over 8 directions) of the binarised projections in 16 random views. Here the Feret diameter of
        each particle's mask (first ``max_particles``) is measured the same way and the ``16/17`` quantile is
        taken: the expected largest of 16 views, robust to a few odd projections.
        """
        rot, tilt, psi = (np.atleast_1d(np.asarray(a, dtype=np.float64))[:max_particles] for a in (rot, tilt, psi))
        proj = self.projections(rot, tilt, psi).numpy()
        theta = np.arange(8) * (np.pi / 8)
        dirs = np.stack([np.cos(theta), np.sin(theta)])
        sizes = []
        for p in proj:
            rr, cc = np.nonzero(binarise_projection(p, self.fraction))
            if rr.size == 0:
                continue
            t = np.stack([cc, rr], axis=1) @ dirs
            sizes.append(float((t.max(axis=0) - t.min(axis=0)).max()) + 1.0)
        if not sizes:
            return float("nan")
        return float(np.quantile(sizes, 16.0 / 17.0)) * self.work_angpix


# --------------------------------------------------------------------------------------------------------------
# writing


def _write_text(path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:
        fh.write(text)


def _write_label_mrc(path, label: np.ndarray, angpix: float) -> None:
    import mrcfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_path(path) as tmp:
        # mode 0 (8-bit): values 0..2 read the same whether a program takes mode 0 as signed or unsigned
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(label.astype(np.int8, copy=False))
            mrc.voxel_size = angpix


def _star_pairs(name: str, pairs: dict, version: int = 50001) -> str:
    """A key-value (non-loop) STAR block."""

    def fmt(v) -> str:
        if isinstance(v, (float, np.floating)):
            return f"{float(v):.6f}"
        v = str(v)
        return '"' + v + '"' if (v == "" or any(ch.isspace() for ch in v)) else v

    lines = ["", f"# version {int(version)}", "", f"data_{name}", ""]
    lines += [f"_{key} {fmt(val)}" for key, val in pairs.items()]
    return "\n".join(lines) + "\n \n"


def _safe_parts(micrograph: str) -> list[str]:
    return [p for p in Path(micrograph).with_suffix("").parts if p not in ("", ".", "..") and p != os.sep]


def _relative_output(micrograph: str) -> Path:
    """Where a micrograph's outputs go inside the job directory, as RELION names them: the path after its
    ``Type/jobNNN/`` prefix (``decomposePipelineFileName``), else the whole relative path, without extension."""
    from relion_pixer.relion import decompose_pipeline_filename

    _, jobnr, post = decompose_pipeline_filename(micrograph)
    parts = _safe_parts(post if jobnr else micrograph)
    return Path(*parts) if parts else Path("micrograph")


def _output_stems(names: list[str]) -> dict[str, Path]:
    """Relative output stem per micrograph name; the whole (sanitised) path where the short ones would collide."""
    short = {name: _relative_output(name) for name in names}
    counts: dict[Path, int] = {}
    for stem in short.values():
        counts[stem] = counts.get(stem, 0) + 1
    return {name: (stem if counts[stem] == 1 else Path(*(_safe_parts(name) or ["micrograph"])))
            for name, stem in short.items()}


# --------------------------------------------------------------------------------------------------------------
# the pipeline


@dataclass
class LabelSet:
    """What :func:`make_labels` wrote."""

    star: Path
    table: pd.DataFrame
    diameter_angstrom: float
    n_particles: int
    seconds: float


def _resolve(name: str, search: list[Path]) -> Path | None:
    p = Path(name)
    if p.is_absolute():
        return p if p.is_file() else None
    for base in search:
        q = base / p
        if q.is_file():
            return q
    return None


def _check_map_against_particles(optics: dict, in_parts, in_3dref, box: int, vol_apix: float) -> None:
    """Warn when the map has the particles' box but another pixel size (``optics``: the particles' first optics
    group, :func:`read_particles`' ``attrs``): a header that does not describe the map (a refinement's map has the
    particle images' box and pixel size)."""
    if not {"rlnImagePixelSize", "rlnImageSize"} <= set(optics):
        return
    size, apix = int(optics["rlnImageSize"]), float(optics["rlnImagePixelSize"])
    if size == int(box) and abs(apix - float(vol_apix)) > 0.01 * apix:
        print(f"WARNING: {in_3dref} has the particles' box ({box} px) but {vol_apix:g} A/px in its header, the particles "
              f"{apix:g} A/px ({in_parts}); if the header is wrong, give --map_angpix {apix:g}", file=sys.stderr)


def make_labels(
    in_parts,
    in_3dref,
    out_dir,
    *,
    in_mics=None,
    angpix: float | None = None,
    map_angpix: float | None = None,
    particle_angpix: float | None = None,
    fraction: float = MASK_FRACTION,
    lowpass: float | None = None,
    max_box: int = DEFAULT_MAX_BOX,
    method: str = "fourier",
    star_version: int = 50001,
    log=print,
) -> LabelSet:
    """Write label maps, coordinate files and ``labels.star`` for a refinement (see the module docstring).

    Parameters
    ----------
    in_parts : path
        Refined particles STAR (angles, origins, coordinates, micrograph names).
    in_3dref : path
        Refined map (MRC); its pixel size comes from the header unless ``map_angpix`` is given (falling back on the
        particles' ``_rlnImagePixelSize`` with a warning when the header has none).
    out_dir : path
        Output directory (RELION's ``--o``).
    in_mics : path, optional
        Micrographs STAR giving each micrograph's pixel size.
    angpix : float, optional
        Micrograph pixel size, when there is no ``in_mics`` (else: the particles' optics ``_rlnMicrographPixelSize``,
        else the MRC header).
    map_angpix, particle_angpix : float, optional
        Override the map's pixel size; pixel size of RELION 3.0 particle images (origins in pixels).
    fraction, lowpass, max_box, method
        See :class:`MaskRenderer`.
    star_version : int
        ``# version`` of the STAR files written (50001 for RELION 5, 30001 for RELION 3.1 / 4).
    log : callable
        Progress messages.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    parts = read_particles(in_parts, particle_angpix=particle_angpix)
    volume, vol_apix = _read_map(in_3dref, map_angpix)
    optics = parts.attrs.get("optics", {})
    if vol_apix is None:
        if "rlnImagePixelSize" in optics:
            vol_apix = float(optics["rlnImagePixelSize"])
            print(
                f"WARNING: {in_3dref} has no pixel size in its header; using the particles' {vol_apix} A/px "
                "(give --map_angpix to override)",
                file=sys.stderr,
            )
        else:
            raise LabelError(in_3dref, "map has no pixel size in its header: give --map_angpix")
    else:
        _check_map_against_particles(optics, in_parts, in_3dref, volume.shape[0], vol_apix)

    # micrographs: pixel size and shape
    search = [Path.cwd()]
    mic_table: dict[str, float | None] = {}
    if in_mics:
        mic_table = read_micrograph_pixel_sizes(in_mics)
        search.append(Path(in_mics).resolve().parent)
    search.append(Path(in_parts).resolve().parent)
    search = list(dict.fromkeys(search))
    by_base: dict[str, list[str]] = {}
    for name in mic_table:
        by_base.setdefault(Path(name).name, []).append(name)

    mics = []
    for name, group in parts.groupby("micrograph", sort=True):
        apix = None
        if in_mics:
            key = name if name in mic_table else None
            if key is None and len(by_base.get(Path(name).name, [])) == 1:
                key = by_base[Path(name).name][0]
            if key is None:
                raise LabelError(in_mics, f"unknown micrograph {name!r} (used by particles in {in_parts})")
            apix = mic_table[key]
        if apix is None and angpix:
            apix = float(angpix)
        if apix is None:
            opt = group["mic_angpix_optics"].to_numpy()
            if np.isfinite(opt).any():
                apix = float(opt[np.isfinite(opt)][0])
        path = _resolve(name, search)
        if path is None and in_mics and key != name:  # the particles' name differs from the micrographs STAR's
            path = _resolve(key, search)
            name = key if path is not None else name
        if path is None:
            also = f" or as {key!r} in {in_mics}" if in_mics and key != name else ""
            raise LabelError(name, f"micrograph not found{also} (used by particles in {in_parts}; looked relative to "
                             f"{', '.join(str(s) for s in search)})")
        shape, header_apix = _mrc_header(path)
        if apix is None:
            apix = header_apix
        if apix is None:
            raise LabelError(path, "micrograph pixel size unknown: give --in_mics or --angpix")
        mics.append((name, shape, float(apix), group))

    renderers: dict[float, MaskRenderer] = {}

    def renderer(apix: float) -> MaskRenderer:
        key = round(apix, 6)
        if key not in renderers:
            renderers[key] = MaskRenderer(volume, vol_apix, apix, fraction=fraction, lowpass=lowpass,
                                          max_box=max_box, method=method)
            r = renderers[key]
            log(f" + micrographs at {apix:.4g} A/px: projecting the {volume.shape[0]}^3 map at {r.work_angpix:.4g} "
                f"A/px in a {r.box}^3 box, masks {r.mask_box} px")
        return renderers[key]

    first = mics[0]
    diameter = renderer(first[2]).diameter_angstrom(parts["rot"], parts["tilt"], parts["psi"])
    if not (np.isfinite(diameter) and diameter > 0):
        raise LabelError(in_3dref, f"the map's projections give empty masks (no density reaches {fraction:g} of their "
                         "maximum): is it the refined map, with protein positive?")
    log(f" + particle diameter from the masks: {diameter:.1f} A (largest Feret diameter, as the simulator's)")

    rows = {"rlnMicrographName": [], "rlnMicrographCoordinates": [], LABEL_COLUMN: [], "rlnMicrographPixelSize": [],
            "pixerNrParticles": []}
    n_done, n_outside = 0, 0
    stems = _output_stems([m[0] for m in mics])
    for i, (name, shape, apix, group) in enumerate(mics):
        r = renderer(apix)
        cx, cy = particle_centres(group, apix)
        half = 0.5 * diameter / apix  # a particle cut by the edge keeps its visible part in the label map
        inside = (cx >= -half) & (cx <= shape[1] - 1 + half) & (cy >= -half) & (cy <= shape[0] - 1 + half)
        if not inside.all():  # a particle wholly off its micrograph: coordinates in another pixel size?
            n_outside += int((~inside).sum())
            group, cx, cy = group[inside], cx[inside], cy[inside]
        label = r.render(shape, group["rot"], group["tilt"], group["psi"], np.stack([cx, cy], axis=1))
        rel = stems[name]
        label_path = out_dir / rel.parent / f"{rel.name}_labels.mrc"
        coords_path = out_dir / rel.parent / f"{rel.name}_coords.star"
        _write_label_mrc(label_path, label, apix)
        coords_path.parent.mkdir(parents=True, exist_ok=True)
        write_coordinates_star(coords_path, np.stack([cx, cy], axis=1), fom=np.ones(len(cx)), version=star_version)
        rows["rlnMicrographName"].append(name)
        rows["rlnMicrographCoordinates"].append(str(coords_path))
        rows[LABEL_COLUMN].append(str(label_path))
        rows["rlnMicrographPixelSize"].append(apix)
        rows["pixerNrParticles"].append(len(group))
        n_done += len(group)
        if (i + 1) % 50 == 0 or i + 1 == len(mics):
            log(f" + {i + 1}/{len(mics)} micrographs, {n_done} particles, {time.perf_counter() - t_start:.1f} s")

    if n_outside:
        print(f"WARNING: {n_outside} of {len(parts)} particles in {in_parts} lie wholly off their micrograph and are "
              "left out (coordinates in another pixel size, e.g. of unbinned movies?)", file=sys.stderr)
        if n_done == 0:
            raise LabelError(in_parts, "no particle lies on its micrograph: check the micrographs' pixel size against "
                             "the particles' coordinates")
    general = {
        "pixerParticleDiameterAngst": diameter,
        "pixerMaskFraction": float(fraction),
        "pixerLowpassAngst": float(lowpass or 0.0),
        "pixerProjector": method,
        "pixerReferenceMap": str(in_3dref),
        "pixerReferenceMapPixelSize": float(vol_apix),
        "pixerParticles": str(in_parts),
    }
    star_path = out_dir / LABELS_STAR
    _write_text(star_path, _star_pairs("pixer_labels", general, star_version)
                + format_star_table("coordinate_files", rows, star_version))
    return LabelSet(star_path, pd.DataFrame(rows), diameter, n_done, time.perf_counter() - t_start)


# --------------------------------------------------------------------------------------------------------------
# reading a label set back (fine-tuning)


def _find(name: str, bases: list[Path], what: str, star) -> Path:
    p = Path(name)
    if p.is_absolute():
        if p.is_file():
            return p
    else:
        for base in bases:
            if (base / p).is_file():
                return base / p
    looked = ", ".join(str(b) for b in bases[:3])
    raise LabelError(star, f"{what} {name!r} not found (looked relative to {looked}, ...)")


def read_label_set(
    path,
    *,
    diameter_angstrom: float | None = None,
    project_dir=None,
    background_within: float | None = None,
    ignore: int = 255,
):
    """Read what :func:`make_labels` wrote, at network scale, as a :class:`relion_pixer.train.LabelledSet`.

    Each micrograph is read and brought to network scale exactly as the picker does
    (:func:`relion_pixer.preprocess.prepare` with the particle diameter, so that a particle is
    :data:`relion_pixer.NET_DIAMETER_PX` pixels wide); its label map is resampled onto the same grid
    (nearest neighbour) and its particle centres are mapped with the same factors.

    Parameters
    ----------
    path : path
        ``labels.star`` written by ``relion_pixer labels``.
    diameter_angstrom : float, optional
        Particle diameter for the resampling (default: ``_pixerParticleDiameterAngst`` of the file, measured on
        the masks as the simulator defines a particle's diameter).
    project_dir : path, optional
        Directory the file names are relative to (default: the current directory, then the ancestors of ``path``,
        so that ``External/jobNNN/labels.star`` works from inside or outside the project).
    background_within : float, optional
        Only refined particles are labelled, so background far from them may hide unrefined particles: when given,
        background pixels farther than this many particle diameters from every labelled centre become ``ignore``.
    ignore : int
        Label value for pixels the loss should ignore.
    """
    import mrcfile

    from relion_pixer.io import read_coordinates_star, read_micrograph
    from relion_pixer.preprocess import nearest_resample, prepare, to_network
    from relion_pixer.train import LabelledSet

    path = Path(path)
    blocks = _read_star(path)
    table = blocks.get("coordinate_files")
    if not isinstance(table, pd.DataFrame):
        raise LabelError(path, "no data_coordinate_files table (not written by relion_pixer labels?)")
    missing = [c for c in ("rlnMicrographName", LABEL_COLUMN, "rlnMicrographCoordinates") if c not in table.columns]
    if missing:
        raise LabelError(path, f"missing column(s) {', '.join('_' + c for c in missing)}")
    if diameter_angstrom is None:
        general = blocks.get("pixer_labels")
        value = (_numbers(general["pixerParticleDiameterAngst"])[0] if isinstance(general, pd.DataFrame)
                 and "pixerParticleDiameterAngst" in general.columns and len(general) else None)
        if value is None or not np.isfinite(value) or value <= 0:
            raise LabelError(path, "no particle diameter (_pixerParticleDiameterAngst): give --particle_diameter")
        diameter_angstrom = float(value)
    bases = [Path(project_dir)] if project_dir else [Path.cwd()]
    bases += list(path.resolve().parent.parents)
    bases.insert(1, path.resolve().parent)
    bases = list(dict.fromkeys(bases))
    if len(table) and not Path(str(table[LABEL_COLUMN].iloc[0])).is_absolute():
        # one project for every file: the one that holds this file's own label maps. Micrograph names such as
        # MotionCorr/job002/Movies/x.mrc recur across projects, and another project's (the current directory's)
        # must not be paired with these labels.
        own = [b for b in bases if (b / str(table[LABEL_COLUMN].iloc[0])).is_file()]
        bases = own[:1] or bases

    images, labels, coords, names = [], [], [], []
    for _, row in table.iterrows():
        mic = _find(str(row["rlnMicrographName"]), bases, "micrograph", path)
        image, header_apix = read_micrograph(mic)
        apix = float(row["rlnMicrographPixelSize"]) if "rlnMicrographPixelSize" in table.columns else header_apix
        if not apix:
            raise LabelError(path, f"no pixel size for {mic}")
        label_file = _find(str(row[LABEL_COLUMN]), bases, "label map", path)
        try:
            label = np.asarray(mrcfile.read(label_file)).astype(np.uint8)
        except (ValueError, OSError) as exc:
            raise LabelError(label_file, f"cannot read the label map ({exc}); make the labels again") from None
        if label.shape != image.shape:
            raise LabelError(path, f"label map of {mic} is {label.shape[::-1]} px, the micrograph {image.shape[::-1]}")
        table_xy = read_coordinates_star(_find(str(row["rlnMicrographCoordinates"]), bases, "coordinates", path))
        net, factors = prepare(image, apix, diameter_angstrom)
        lab = nearest_resample(label, net.shape)
        xy = to_network(table_xy[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(np.float64), factors)
        if background_within is not None:
            from scipy.spatial import cKDTree

            far = np.ones(net.shape, dtype=bool)
            if len(xy):
                yy, xx = np.mgrid[0 : net.shape[0], 0 : net.shape[1]]
                dist, _ = cKDTree(xy).query(np.stack([xx.ravel(), yy.ravel()], 1), k=1)
                far = dist.reshape(net.shape) > background_within * NET_DIAMETER_PX
            lab = lab.copy()
            lab[far & (lab == 0)] = ignore
        images.append(net)
        labels.append(lab)
        coords.append(xy.astype(np.float32))
        names.append(Path(str(row["rlnMicrographName"])).stem)
    return LabelledSet(images, labels, coords, None, names)


# --------------------------------------------------------------------------------------------------------------
# command line / RELION External job


#: Known options of ``relion_pixer labels``: name -> kind for :func:`relion_pixer.relion.parse_tolerant`.
SPEC = {
    "o": "value",
    "in_parts": "value",
    "in_3dref": "value",
    "in_mics": "value",
    "angpix": "value",
    "map_angpix": "value",
    "particle_angpix": "value",
    "mask_fraction": "value",
    "lowpass": "value",
    "max_box": "value",
    "projector": "value",
    "finetune": "flag",
    "particle_diameter": "value",
    "init": "value",
    "cls_steps": "value",
    "seg_steps": "value",
    "sim_train": "value",
    "relion_version": "value",
    "j": "value",
    "pipeline_control": "value",
    "help": "flag",
    # inputs of RELION's External job that labels do not use
    "in_movies": "ignored",
    "in_coords": "ignored",
    "in_mask": "ignored",
}

HELP = f"""relion_pixer labels: segmentation labels by reprojecting a RELION refinement (also a RELION External job)

usage: relion_pixer labels --in_parts run_data.star --in_3dref run_class001.mrc --o External/jobNNN/ [options]

In RELION: External job with "Input particles" = the refinement's run_data.star, "Input 3D reference" = its
run_class001.mrc, optionally "Input micrographs" = a micrographs STAR file (pixel sizes), and parameters as
label / value pairs (label without dashes):

  in_mics FILE          micrographs STAR file giving the micrographs' pixel size
  angpix A/PX           micrograph pixel size when there is no in_mics (else: optics _rlnMicrographPixelSize of the
                        particles, else the MRC header)
  map_angpix A/PX       pixel size of the map (default: its MRC header, else the particles' _rlnImagePixelSize)
  particle_angpix A/PX  pixel size of RELION 3.0 particle images (origins in pixels), when the STAR file lacks it
  mask_fraction F       mask threshold, fraction of each projection's maximum (default {MASK_FRACTION})
  lowpass A             low-pass the map to this resolution first (default 0: off)
  max_box N             largest working box the map is projected in (default {DEFAULT_MAX_BOX})
  projector P           fourier (default) or real
  finetune [Yes/No]     then fine-tune the picker on these labels (`relion_pixer train --from-labels`) and write
                        {FINETUNED_MODEL}: give it as the picking job's `model` parameter
  particle_diameter A   particle diameter for fine-tuning (default: as measured on the reprojection masks)
  init FILE             model to fine-tune (default: the shipped weights)
  cls_steps N, seg_steps N, sim_train N
                        fine-tuning length and simulated replay (defaults: those of `relion_pixer train`)
  relion_version V      3, 4 or 5 for RELION_OUTPUT_NODES.star (default: from default_pipeline.star, else 5)
  j N                   CPU threads

Writes, in --o: <micrograph>_labels.mrc (8-bit, 1 = particle), <micrograph>_coords.star, {LABELS_STAR}
(for `relion_pixer train --from-labels`), RELION_OUTPUT_NODES.star and RELION_JOB_EXIT_SUCCESS / _FAILURE;
with finetune also {FINETUNED_MODEL} and the training run (checkpoints, log.jsonl) in finetune/.
"""


#: The job's numeric parameters checked before any work: name -> (type, test, the test in words).
_RANGES = {
    "mask_fraction": (float, lambda v: 0 < v < 1, "between 0 and 1"),
    "lowpass": (float, lambda v: v >= 0, "0 (none) or positive"),
    "max_box": (int, lambda v: v >= 16, "at least 16"),
    "angpix": (float, lambda v: v > 0, "positive"),
    "map_angpix": (float, lambda v: v > 0, "positive"),
    "particle_angpix": (float, lambda v: v > 0, "positive"),
}
#: The same for the fine-tuning's parameters (with ``finetune``).
_FINETUNE_RANGES = {
    "cls_steps": (int, lambda v: v >= 0, "at least 0"),
    "seg_steps": (int, lambda v: v >= 0, "at least 0"),
    "sim_train": (int, lambda v: v >= 1, "at least 1"),
    "particle_diameter": (float, lambda v: v >= 1, "at least 1"),
}


def _number(values: dict, key: str, kind=float, default=None):
    raw = values.get(key)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise ValueError(f"--{key}: expected a number, got {raw!r}") from None


def _finetune(values: dict, labels_star: Path, out_dir: Path, threads: int | None, stop=None) -> Path:
    """Fine-tune the picker on the labels just written (the job's ``--finetune``); returns the model file. ``stop``:
    RELION's Abort, polled after every training step (:func:`relion_pixer.train.train`)."""
    from relion_pixer import train as training

    cfg = training.load_config(
        None,
        finetune=True,
        from_labels=str(labels_star),
        init=values.get("init") or None,
        particle_diameter=_number(values, "particle_diameter"),
        cls_steps=_number(values, "cls_steps", int),
        seg_steps=_number(values, "seg_steps", int),
        sim_train=_number(values, "sim_train", int),
        threads=threads,
    )
    model = out_dir / FINETUNED_MODEL
    print(f" + fine-tuning {cfg.init} on {labels_star}: {cfg.cls_steps} classifier and {cfg.seg_steps} "
          f"segmenter steps", flush=True)
    training.train(cfg, out_dir / "finetune", model, stop=stop)
    print(f" + wrote {model}: pick with it by giving the picking job the parameter `model {model}`", flush=True)
    return model


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (RELION External job); returns the exit status.

    Parsing is tolerant (:func:`relion_pixer.relion.parse_tolerant`): unknown options are ignored with a warning,
    as RELION appends its own (``--j``, ``--pipeline_control``) and the user's label / value pairs.
    """
    from relion_pixer import relion

    argv = list(sys.argv[1:] if argv is None else argv)
    parsed = relion.parse_tolerant(argv, SPEC)
    values = parsed.values
    if values.get("help"):
        print(HELP)
        return 0
    out = values.get("o")
    control = values.get("pipeline_control") or out
    if control:
        with contextlib.suppress(OSError):
            Path(control).mkdir(parents=True, exist_ok=True)
            relion.clear_exit_markers(control)
    import signal
    import threading

    from relion_pixer.train import TrainingStopped

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, relion.raise_terminated)
    try:
        problem = relion.option_problem(parsed, [k for k, kind in SPEC.items() if kind != "ignored" and k != "help"])
        if problem:  # a misspelt parameter (fine_tune) would leave its default in force unnoticed
            raise ValueError(f"{problem} (relion_pixer labels --help lists the parameters)")
        for line in parsed.warnings:
            print(f"WARNING: relion_pixer labels: {line}", file=sys.stderr)
        if parsed.positional:
            print(f"WARNING: relion_pixer labels: ignoring stray arguments: {' '.join(parsed.positional)}",
                  file=sys.stderr)
        missing = [f"--{k}" for k in ("o", "in_parts", "in_3dref") if not values.get(k)]
        if missing:
            raise ValueError(f"missing {', '.join(missing)} (see relion_pixer labels --help)")
        projector = values.get("projector") or "fourier"
        if projector not in ("fourier", "real"):
            raise ValueError(f"--projector: expected fourier or real, got {projector!r}")
        version = values.get("relion_version")
        version = relion.parse_relion_version(version) if version else (relion.detect_relion_version(".") or 5)
        threads = _number(values, "j", int)
        # every number before any work (the fine-tuning's too: they would otherwise wait for the labels)
        for key, (kind, ok, bound) in {**(_FINETUNE_RANGES if values.get("finetune") else {}), **_RANGES}.items():
            value = _number(values, key, kind)
            if value is not None and not ok(value):
                raise ValueError(f"--{key} must be {bound}, got {value:g}")
        if threads:
            torch.set_num_threads(max(1, threads))
        out_dir = Path(out)
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"--o {out}: a file is there; give the job's output folder")
        out_dir.mkdir(parents=True, exist_ok=True)
        # an earlier run's output nodes (its model among them) are declared again only if this run succeeds
        (out_dir / relion.OUTPUT_NODES).unlink(missing_ok=True)
        result = make_labels(
            values["in_parts"],
            values["in_3dref"],
            out_dir,
            in_mics=values.get("in_mics") or None,
            angpix=_number(values, "angpix"),
            map_angpix=_number(values, "map_angpix"),
            particle_angpix=_number(values, "particle_angpix"),
            fraction=_number(values, "mask_fraction", default=MASK_FRACTION),
            lowpass=_number(values, "lowpass") or None,
            max_box=_number(values, "max_box", int, DEFAULT_MAX_BOX),
            method=projector,
            star_version=relion.star_version(version),
        )
        print(f" + wrote {result.star}: {len(result.table)} micrographs, {result.n_particles} particles "
              f"in {result.seconds:.1f} s", flush=True)
        nodes = [(str(result.star), NODE_TYPE)]
        if values.get("finetune"):
            stop = (lambda: relion.abort_requested(control)) if control else None
            nodes.append((str(_finetune(values, result.star, out_dir, threads, stop)), MODEL_NODE_TYPE))
        if version >= 4:
            relion.write_output_nodes(out_dir, nodes, version)
        else:
            # RELION 3.1 has only integer node types, none of them generic: declare no output node
            print(" + RELION 3.1: no output node declared (RELION 3.1 has no generic node type)")
    except (KeyboardInterrupt, relion.Terminated, TrainingStopped) as exc:
        print(f"ERROR: relion_pixer labels: stopped by {relion.stopped_by(exc)}; the labels written and the fine-tuning's last "
              "checkpoint are kept: run the job again to continue", file=sys.stderr)
        if control:
            with contextlib.suppress(OSError):
                relion.write_exit_marker(control, "aborted")
        return 2
    except (LabelError, ValueError, OSError) as exc:
        print(f"ERROR: relion_pixer labels: {exc}", file=sys.stderr)
        if control:
            with contextlib.suppress(OSError):
                relion.write_exit_marker(control, "failure")
        return 1
    except Exception as exc:  # an unexpected failure must still tell RELION the job failed
        import traceback

        traceback.print_exc()
        print(f"ERROR: relion_pixer labels failed unexpectedly: {exc!r}", file=sys.stderr)
        if control:
            with contextlib.suppress(OSError):
                relion.write_exit_marker(control, "failure")
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    relion.write_exit_marker(control, "success")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
