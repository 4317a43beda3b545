"""Particle models for the simulator: pseudo-atomic point clouds, procedural or from atomic models.

A model is a :class:`ParticleModel`: ``N x 3`` coordinates in Angstrom centred on the centroid and a weight per
point, the protein volume (cubic Angstrom) the point stands for. Projecting a model sums the weights per pixel and
divides by the pixel area, which gives the projected protein thickness in Angstrom; the image formation turns that
into a phase shift. No 3D volume is ever built.

Procedural families (no data needed at run time): ``globular``, ``dimer``, ``ring``, ``cylinder``, ``cage``,
``elongated`` and ``ribosome`` (two unequal lobes); outside the default mix, ``smooth`` and ``shell``. Atomic models (PDB / mmCIF, gzipped or not) are read with
:func:`load_atomic_model` (``gemmi``, imported lazily); one heavy atom becomes one point.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "ParticleModel",
    "SHAPE_FAMILIES",
    "EXTRA_FAMILIES",
    "ALL_FAMILIES",
    "check_family",
    "ASSEMBLY_FAMILIES",
    "make_shape",
    "project_model",
    "load_atomic_model",
    "ModelFileError",
]

#: Procedural shape families of the default mix (``random_config`` draws one of these).
SHAPE_FAMILIES = ("globular", "dimer", "ring", "cylinder", "cage", "elongated", "ribosome")

#: Families :func:`make_shape` also draws that the default mix leaves out (so that sets drawn before they existed
#: are reproduced exactly): ``smooth``, featureless particles of uniform density (balls, ellipsoids, thick shells),
#: and ``shell``, thin-walled hollow shells tiled with small subunits (apoferritin, capsids): in projection a dark ring
#: round a light centre, which no family of the default mix gives (``cage`` walls are a third to all of the radius).
EXTRA_FAMILIES = ("smooth", "shell")

#: Every family :func:`make_shape` can draw.
ALL_FAMILIES = SHAPE_FAMILIES + EXTRA_FAMILIES


def check_family(family: str) -> str:
    """``family`` itself when :func:`make_shape` can draw it; otherwise a ValueError listing those it can."""
    if family not in ALL_FAMILIES:
        raise ValueError(f"unknown shape family {family!r}; choose from {', '.join(ALL_FAMILIES)}")
    return family


#: Families that are assemblies of subunits (can be built from an atomic model with ``make_shape(subunit=...)``).
ASSEMBLY_FAMILIES = ("dimer", "ring", "cylinder", "cage", "elongated")

#: Typical size range of each family (longest extent, Angstrom) when no size is given.
FAMILY_SIZE_A = {
    "globular": (100.0, 400.0),
    "dimer": (150.0, 500.0),
    "ring": (150.0, 450.0),
    "cylinder": (150.0, 500.0),
    "cage": (250.0, 800.0),
    "elongated": (250.0, 800.0),
    "ribosome": (220.0, 350.0),
    "smooth": (100.0, 500.0),
    "shell": (100.0, 600.0),
}

#: Protein volume per heavy atom in Angstrom^3 (1.35 g/cm^3 protein, ~14 Da per heavy atom incl. hydrogens).
ATOM_VOLUME_A3 = 17.0

#: Most points a procedural model carries (projection cost is linear in it).
MAX_POINTS = 6000


class ModelFileError(ValueError):
    """An atomic model file could not be read or holds no atoms; the message names the file and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass
class ParticleModel:
    """Pseudo-atomic particle model.

    Attributes
    ----------
    xyz : numpy.ndarray
        ``N x 3`` float32 coordinates in Angstrom, centroid at the origin.
    weight : numpy.ndarray
        ``N`` float32 protein volume (cubic Angstrom) per point; the sum is the particle's protein volume.
    blob_sigma : float
        Gaussian standard deviation (Angstrom) each point is blurred with when projected.
    family : str
        Shape family (or ``"atomic:<file name>"``).
    """

    xyz: np.ndarray
    weight: np.ndarray
    blob_sigma: float
    family: str

    _diameter: float | None = field(default=None, repr=False, compare=False)

    @property
    def extent(self) -> float:
        """Geometric extent in Angstrom: twice the largest distance of a point from the centroid, plus 2 blob sigmas."""
        r = float(np.sqrt((self.xyz.astype(np.float64) ** 2).sum(axis=1).max())) if len(self.xyz) else 0.0
        return 2.0 * r + 2.0 * self.blob_sigma

    @property
    def diameter(self) -> float:
        """Particle diameter in Angstrom: the longest extent of its binarised projection, over orientations.

        The particle is projected in :data:`DIAMETER_VIEWS` fixed orientations at a sampling of
        ``extent / 64``; each projection is binarised with :func:`relion_pixer.masks.binarise_projection`
        (the label-map definition of the particle) and its Feret diameter is measured (largest width over
        8 directions). The diameter is the largest of these: the length of a rod, the diameter of a sphere,
        the visible size a user would type as "particle diameter". Computed once and cached.
        """
        if self._diameter is None:
            self._diameter = _mask_diameter(self)
        return self._diameter

    def scaled(self, diameter: float) -> "ParticleModel":
        """Copy scaled isotropically so that :attr:`diameter` becomes ``diameter`` (Angstrom).

        Weights scale with the cube of the factor (the protein volume grows with the particle).
        """
        f = float(diameter) / self.diameter
        return ParticleModel(
            (self.xyz * f).astype(np.float32),
            (self.weight * f**3).astype(np.float32),
            self.blob_sigma * f,
            self.family,
            float(diameter),
        )


#: Orientations over which :attr:`ParticleModel.diameter` takes the largest mask extent.
DIAMETER_VIEWS = 16


def project_model(
    model: "ParticleModel", rot: np.ndarray, angpix: float, frac_xy=(0.0, 0.0), scale: float = 1.0
) -> tuple[np.ndarray, int]:
    """Project a model along z after rotating it: the projected protein thickness (Angstrom) on a square patch.

    Points are rotated (``rot @ xyz``), splatted bilinearly onto pixels of ``angpix`` Angstrom and blurred by the
    point size. The centroid lands at patch position ``(half + frac_x, half + frac_y)`` (x = column).

    Parameters
    ----------
    model : ParticleModel
    rot : numpy.ndarray
        3 x 3 rotation matrix.
    angpix : float
        Pixel size in Angstrom.
    frac_xy : tuple of float
        Sub-pixel offset of the centroid.
    scale : float
        Isotropic scale applied on the fly (size jitter), as :meth:`ParticleModel.scaled` would.

    Returns
    -------
    patch : numpy.ndarray
        ``(2 half + 1)`` square float32 thickness map.
    half : int
    """
    import scipy.ndimage

    p = (model.xyz @ (np.asarray(rot, dtype=np.float32).T * np.float32(scale / angpix)))[:, :2]
    sig = model.blob_sigma * scale / angpix
    ext = float(np.abs(p).max()) if len(p) else 1.0
    half = int(math.ceil(ext + 3.0 * sig)) + 2
    n = 2 * half + 1
    x = p[:, 0] + np.float32(half + frac_xy[0])
    y = p[:, 1] + np.float32(half + frac_xy[1])
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = x - x0
    fy = y - y0
    idx = y0.astype(np.int64) * n + x0.astype(np.int64)
    w = model.weight * np.float32(scale**3)
    size = n * n + n + 2
    acc = np.bincount(idx, w * (1 - fx) * (1 - fy), minlength=size)
    acc += np.bincount(idx + 1, w * fx * (1 - fy), minlength=size)
    acc += np.bincount(idx + n, w * (1 - fx) * fy, minlength=size)
    acc += np.bincount(idx + n + 1, w * fx * fy, minlength=size)
    patch = acc[: n * n].reshape(n, n).astype(np.float32)
    if sig > 0.3:
        patch = scipy.ndimage.gaussian_filter(patch, sig, truncate=3.0)
    patch *= np.float32(1.0 / (angpix * angpix))  # volume per pixel area -> thickness in Angstrom
    return patch, half


def _feret(mask: np.ndarray) -> float:
    """Largest width of a binary mask over 8 directions, in pixels."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return 0.0
    best = 0.0
    for a in np.arange(8) * (np.pi / 8):
        proj = xs * np.cos(a) + ys * np.sin(a)
        best = max(best, float(proj.max() - proj.min()) + 1.0)
    return best


def _mask_diameter(model: "ParticleModel") -> float:
    from scipy.spatial.transform import Rotation

    from relion_pixer.masks import binarise_projection

    px = model.extent / 64.0
    if px <= 0:
        return 0.0
    rots = Rotation.random(DIAMETER_VIEWS, rng=np.random.default_rng(20240601)).as_matrix()
    return max(_feret(binarise_projection(project_model(model, r, px)[0])) for r in rots) * px


def _centre(xyz: np.ndarray) -> np.ndarray:
    return (xyz - xyz.mean(axis=0)).astype(np.float32)


def _ball(rng: np.random.Generator, n: int, radii) -> np.ndarray:
    """``n`` points uniform in an ellipsoid with semi-axes ``radii``."""
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    r = rng.random(n) ** (1.0 / 3.0)
    return v * r[:, None] * np.asarray(radii, dtype=np.float64)


def _lumpy_blob(rng: np.random.Generator, n: int, radius: float, lumps: int = 6) -> np.ndarray:
    """Globular domain made of a few overlapping sub-domains (domains, not a smooth ball)."""
    n_core = int(0.3 * n)  # a continuous core, so domains touch as in a folded protein
    centres = _ball(rng, lumps, (0.45 * radius,) * 3)
    sizes = rng.uniform(0.45, 0.7, lumps) * radius
    # domains differ in density (protein vs nucleic acid, packing): uneven point densities give internal texture
    dens = rng.lognormal(0.0, 0.8, lumps)
    counts = rng.multinomial(n - n_core, sizes**3 * dens / (sizes**3 * dens).sum())
    parts = [c + _ball(rng, k, (s * rng.uniform(0.8, 1.2), s * rng.uniform(0.8, 1.2), s)) for c, s, k in zip(centres, sizes, counts)]
    parts.append(_ball(rng, n_core, (0.85 * radius,) * 3))
    xyz = np.concatenate(parts)
    # keep the domains inside the envelope: no stray points that would inflate the diameter
    return xyz[(xyz**2).sum(axis=1) <= radius * radius]


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _subunit(rng: np.random.Generator, n: int, radius: float, template: "ParticleModel | None" = None) -> np.ndarray:
    """One subunit of an assembly: a lumpy blob, or ``template`` (e.g. an atomic model) turned at random and
    scaled so that the sphere with its radius of gyration has radius ``radius``."""
    if template is None:
        return _lumpy_blob(rng, n, radius, lumps=int(rng.integers(2, 5)))
    from scipy.spatial.transform import Rotation

    xyz = template.xyz.astype(np.float64)
    if len(xyz) > n:
        xyz = xyz[rng.choice(len(xyz), size=n, replace=False)]
    xyz = xyz @ Rotation.random(rng=rng).as_matrix().T
    # the radius of the uniform sphere with the same radius of gyration: irregular subunits still touch
    r = float(np.sqrt(5.0 / 3.0 * (xyz**2).sum(axis=1).mean())) or 1.0
    return xyz * (radius / r)


def _ring(rng, n, size, layers=1, template=None):
    k = int(rng.integers(5, 15))  # fold
    R = size / 2.0
    r_sub = R * np.sin(np.pi / k) * rng.uniform(1.3, 1.7)
    R_c = R - r_sub
    per = max(8, n // (k * layers))
    unit = _subunit(rng, per, r_sub, template)
    height = 1.2 * r_sub
    parts = []
    for layer in range(layers):
        z = (layer - (layers - 1) / 2.0) * height
        twist = rng.uniform(0, 2 * np.pi / k) if layer % 2 else 0.0
        for i in range(k):
            a = 2 * np.pi * i / k + twist
            parts.append(unit @ _rot_z(a).T + np.array([R_c * np.cos(a), R_c * np.sin(a), z]))
    return np.concatenate(parts)


def _sphere_directions(k: int) -> np.ndarray:
    """``k`` quasi-uniform unit vectors on a sphere (Fibonacci lattice), ``k x 3``."""
    i = np.arange(k) + 0.5
    phi = np.arccos(1 - 2 * i / k)
    theta = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)


def _cage(rng, n, size, template=None):
    k = int(rng.choice([12, 24, 32, 60]))
    R = size / 2.0
    dirs = _sphere_directions(k)
    r_sub = R * np.sqrt(4.0 / k) * rng.uniform(0.9, 1.1)
    per = max(8, n // k)
    unit = _subunit(rng, per, r_sub, template)
    return np.concatenate([unit + d * (R - r_sub) for d in dirs])


def _shell(rng, n, size):
    """Thin-walled hollow shell: small lumpy subunits tiling a sphere of diameter ``size``, the wall 20-50 % of the
    radius thick (apoferritin's is about 35 %, a capsid's less), enough subunits to close it."""
    R = size / 2.0
    wall = rng.uniform(0.2, 0.5) * R
    r_sub = wall / 2.0
    k = int(np.clip(round(1.3 * 4.0 * ((R - r_sub) / r_sub) ** 2), 24, 480))
    per = max(8, n // k)
    return np.concatenate([_lumpy_blob(rng, per, r_sub, lumps=int(rng.integers(2, 4))) + d * (R - r_sub)
                           for d in _sphere_directions(k)])


def _elongated(rng, n, size, template=None):
    """Helical filament segment or rod: subunits along a helix, length ``size``, width 20-40 % of it."""
    width = rng.uniform(0.2, 0.4) * size
    k = max(4, int(size / (0.35 * width)))
    r_sub = 0.35 * width
    per = max(8, n // k)
    unit = _subunit(rng, per, r_sub, template)
    rise = (size - 2 * r_sub) / (k - 1)
    twist = rng.uniform(0.5, 3.0)
    R_h = 0.15 * width
    parts = [unit + np.array([R_h * np.cos(i * twist), R_h * np.sin(i * twist), i * rise]) for i in range(k)]
    return np.concatenate(parts)


def _smooth(rng, n, size):
    """Featureless particle of uniform density: a ball or ellipsoid, or a thick spherical shell (as apoferritin
    or a capsid look at low resolution), points spread evenly through the volume."""
    R = size / 2.0
    inner = rng.uniform(0.5, 0.8) if rng.random() < 0.5 else 0.0
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    r = R * (inner**3 + (1.0 - inner**3) * rng.random(n)) ** (1.0 / 3.0)
    axes = np.array([1.0, *rng.uniform(0.7, 1.0, 2)])
    # the exact volume: the voxel count of make_shape underestimates it for points spread this evenly
    volume = 4.0 / 3.0 * np.pi * R**3 * (1.0 - inner**3) * float(np.prod(axes))
    return v * r[:, None] * axes, volume


#: Blur of a particle's points, as a fraction of its size: narrow enough to leave domain texture on purpose.
POINT_BLOB = 1.0 / 70.0

#: Blur of a ``smooth`` particle's points: wide enough that its projection shows no point texture.
SMOOTH_BLOB = 1.0 / 12.0


def make_shape(
    rng: np.random.Generator,
    family: str,
    diameter: float | None = None,
    n_points: int | None = None,
    subunit: "ParticleModel | None" = None,
) -> ParticleModel:
    """Draw a procedural pseudo-atomic model.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random source.
    family : str
        One of :data:`ALL_FAMILIES`.
    diameter : float, optional
        Wanted diameter (see :attr:`ParticleModel.diameter`) in Angstrom; default drawn from
        :data:`FAMILY_SIZE_A`.
    n_points : int, optional
        Number of points (default :data:`MAX_POINTS`).
    subunit : ParticleModel, optional
        Build the assembly (families in :data:`ASSEMBLY_FAMILIES`) from copies of this model, e.g. an atomic
        model from :func:`load_atomic_model`, instead of procedural blobs.

    Returns
    -------
    ParticleModel
        ``family`` is the family name, or ``"<family>:<subunit family>"`` when built from ``subunit``.
    """
    check_family(family)
    if subunit is not None and family not in ASSEMBLY_FAMILIES:
        raise ValueError(f"family {family!r} is not an assembly; subunits work with {', '.join(ASSEMBLY_FAMILIES)}")
    if diameter is None:
        lo, hi = FAMILY_SIZE_A[family]
        diameter = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    if diameter <= 0:
        raise ValueError(f"diameter must be positive, got {diameter!r}")
    n = int(n_points or MAX_POINTS)
    size = 100.0  # build at a reference size, then scale
    blob = size * POINT_BLOB
    volume = None  # protein volume, when the family knows it exactly
    if family == "globular":
        aspect = rng.uniform(0.6, 1.0, 2)
        xyz = _lumpy_blob(rng, n, size / 2, lumps=int(rng.integers(4, 14))) * np.array([1.0, aspect[0], aspect[1]])
    elif family == "dimer":
        r1 = size / 4
        r2 = r1 * rng.uniform(0.7, 1.0)
        n1 = int(n * r1**3 / (r1**3 + r2**3))
        if subunit is None:
            a = _lumpy_blob(rng, n1, r1, 4) - np.array([r1 * 0.7, 0, 0])
            b = _lumpy_blob(rng, n - n1, r2, 4) + np.array([r2 * 0.7, 0, 0])
        else:  # homodimer
            a = _subunit(rng, n // 2, r1, subunit) - np.array([r1 * 0.45, 0, 0])
            b = _subunit(rng, n // 2, r1, subunit) + np.array([r1 * 0.45, 0, 0])
        xyz = np.concatenate([a, b])
    elif family == "ring":
        xyz = _ring(rng, n, size, layers=1, template=subunit)
    elif family == "cylinder":
        xyz = _ring(rng, n, size * 0.6, layers=int(rng.integers(3, 6)), template=subunit)
    elif family == "cage":
        xyz = _cage(rng, n, size, template=subunit)
    elif family == "elongated":
        xyz = _elongated(rng, n, size, template=subunit)
    elif family == "shell":
        xyz = _shell(rng, n, size)
    elif family == "smooth":
        xyz, volume = _smooth(rng, n, size)
        blob = size * SMOOTH_BLOB  # wide, so that no point texture is left
    else:  # ribosome: large subunit and a smaller one sitting on it, slightly offset
        r_l = size * 0.3
        r_s = r_l * rng.uniform(0.7, 0.85)
        n_l = int(n * 0.65)
        large = _lumpy_blob(rng, n_l, r_l, 14) * np.array([1.0, 0.9, 0.8])
        small = _lumpy_blob(rng, n - n_l, r_s, 8) * np.array([1.15, 0.8, 0.85]) + np.array([0.0, 0.15 * r_l, r_l * 0.6])
        xyz = np.concatenate([large, small])
    xyz = _centre(xyz)
    # otherwise the protein volume is the voxels (two point sizes wide) that hold points; shared evenly over them
    if volume is None:
        volume = _approx_volume(xyz, 2.0 * size * POINT_BLOB)
    weight = np.full(len(xyz), volume / len(xyz), dtype=np.float32)
    name = family if subunit is None else f"{family}:{subunit.family}"
    model = ParticleModel(xyz, weight, blob, name)
    return model.scaled(diameter)


def _approx_volume(xyz: np.ndarray, voxel: float) -> float:
    """Occupied volume of a point cloud, counting voxels of side ``voxel`` that hold a point."""
    idx = np.floor(xyz / voxel).astype(np.int64)
    idx -= idx.min(axis=0)
    key = (idx[:, 0] * 100003 + idx[:, 1]) * 100003 + idx[:, 2]
    return float(len(np.unique(key))) * voxel**3


@functools.lru_cache(maxsize=128)
def _read_heavy_atoms(path: str, mtime_ns: int, size: int) -> np.ndarray:
    """Heavy-atom coordinates of the first model of a PDB/mmCIF file (cached by path, mtime and size)."""
    try:
        import gemmi
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelFileError(path, "reading atomic models needs the 'gemmi' package (pip install gemmi)") from exc
    try:
        st = gemmi.read_structure(path)
    except Exception as exc:  # gemmi raises RuntimeError / ValueError with a message
        raise ModelFileError(path, f"cannot parse atomic model ({type(exc).__name__}: {exc})") from exc
    if len(st) == 0:
        raise ModelFileError(path, "no models in file")
    st.remove_hydrogens()
    st.remove_waters()
    coords = [a.pos.tolist() for ch in st[0] for res in ch for a in res]
    if not coords:
        raise ModelFileError(path, "no atoms in the first model")
    xyz = np.asarray(coords, dtype=np.float64)
    if not np.all(np.isfinite(xyz)):
        raise ModelFileError(path, "non-finite atom coordinates")
    return xyz


def load_atomic_model(path, max_points: int | None = None, rng: np.random.Generator | None = None) -> ParticleModel:
    """Read a PDB / mmCIF file (optionally gzipped) as a pseudo-atomic model, one point per heavy atom.

    Only the first model is used; hydrogens and waters are dropped.

    Parameters
    ----------
    path : str or Path
        Atomic model file.
    max_points : int, optional
        Keep at most this many atoms (a random subset, weights scaled so the total volume is kept).
    rng : numpy.random.Generator, optional
        Random source for the subset.

    Returns
    -------
    ParticleModel
        ``family`` is ``"atomic:<file name>"``, ``blob_sigma`` 1.5 A.

    Raises
    ------
    ModelFileError
        If the file is missing, unreadable or holds no atoms; the message names the file and the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "no such file")
    stat = path.stat()
    # parsed files are cached (training draws the same models again and again); the copy keeps the cache intact
    xyz = _read_heavy_atoms(str(path.resolve()), stat.st_mtime_ns, stat.st_size).copy()
    weight = np.full(len(xyz), ATOM_VOLUME_A3, dtype=np.float32)
    if max_points is not None and len(xyz) > max_points:
        rng = rng if rng is not None else np.random.default_rng(0)
        keep = rng.choice(len(xyz), size=max_points, replace=False)
        weight = np.full(max_points, ATOM_VOLUME_A3 * len(xyz) / max_points, dtype=np.float32)
        xyz = xyz[keep]
    return ParticleModel(_centre(xyz), weight, 1.5, f"atomic:{path.name}")
