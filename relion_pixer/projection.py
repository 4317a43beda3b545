"""Projections of a 3D map in RELION's conventions, batched in torch (Fourier slice or real space, CPU or GPU).

Conventions (checked against RELION's source and against images made by ``relion_project``; see
``tests/test_projection.py``):

* Euler angles ``(rot, tilt, psi)`` in degrees, ZYZ, as RELION's ``Euler_angles2matrix`` (``src/euler.cpp``)::

      A = [[ cg*cb*ca - sg*sa,   cg*cb*sa + sg*ca,  -cg*sb],
           [-sg*cb*ca - cg*sa,  -sg*cb*sa + cg*ca,   sg*sb],
           [ sb*ca,              sb*sa,              cb   ]]      (a=rot, b=tilt, g=psi)

* The projection of a particle with these angles samples the map at ``A^T r``: RELION's
  ``Projector::project`` (``src/projector.cpp``) reads the 3D Fourier transform at ``A.inv() * (x, y, 0)``, and by the
  projection-slice theorem the real-space image is ``P(x, y) = integral V(A^T (x, y, z)) dz``.
* Map voxel ``[z, y, x]`` (MRC section, row, column) has coordinates ``(x, y, z) - N//2``: the centre of an ``N`` box is
  voxel ``N//2`` (RELION's ``setXmippOrigin`` / ``CenterFFT(..., true)``), and image pixel ``[row, col]`` of an
  ``M`` box has in-plane coordinates ``(col - M//2, row - M//2)``.
* Origin offsets ``(ox, oy)`` (``_rlnOriginX/Y``, in pixels; RELION 3.1+ ``_rlnOriginX/YAngst`` divided by the pixel
  size) are the shift that centres the particle: the particle centre lies at ``box centre - origin``, so the image is
  ``I(u) = P(u + origin)`` (``relion_project`` shifts its projections by ``-origin``, ``src/apps/project.cpp``;
  re-extraction with ``--recenter`` moves the coordinate to ``coordinate - origin``, ``src/preprocessing.cpp``).

Note on odd boxes: ``relion_project`` ends with ``CenterFFT(img, false)``, which for an odd size ``M`` puts the
projection centre at pixel ``M//2 + 1`` instead of ``M//2``, so its odd-box images are one pixel off (down and
right) from the convention RELION itself uses when refining. Even boxes (the only ones RELION extracts) agree exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["euler_matrix", "euler_angles", "project", "Projector", "resample_volume", "lowpass_volume", "DEFAULT_MAX_POINTS"]

#: Sample points (rays x depth) per chunk of :func:`project`; bounds the memory of the sampling grid (~12 bytes each).
DEFAULT_MAX_POINTS = 1 << 22


def euler_matrix(rot, tilt, psi):
    """RELION's rotation matrix for Euler angles (degrees), batched.

    Exactly ``Euler_angles2matrix`` of RELION's ``src/euler.cpp`` (ZYZ; ``rot`` about z, then ``tilt`` about the
    new y, then ``psi`` about the new z). A projection of the map with these angles samples the map at ``A^T r``.

    Parameters
    ----------
    rot, tilt, psi : float, array_like or torch.Tensor
        Angles in degrees; broadcast against each other.

    Returns
    -------
    numpy.ndarray (float64) or torch.Tensor
        Shape ``broadcast_shape + (3, 3)``; a torch tensor when any input is one (dtype and device of that tensor,
        at least float32), otherwise numpy.
    """
    if any(isinstance(a, torch.Tensor) for a in (rot, tilt, psi)):
        ref = next(a for a in (rot, tilt, psi) if isinstance(a, torch.Tensor))
        dtype = ref.dtype if ref.is_floating_point() else torch.float32
        a, b, g = (torch.as_tensor(v, dtype=dtype, device=ref.device) for v in (rot, tilt, psi))
        a, b, g = torch.broadcast_tensors(torch.deg2rad(a), torch.deg2rad(b), torch.deg2rad(g))
        lib_stack = torch.stack
        ca, sa, cb, sb, cg, sg = torch.cos(a), torch.sin(a), torch.cos(b), torch.sin(b), torch.cos(g), torch.sin(g)
    else:
        a, b, g = np.broadcast_arrays(*(np.deg2rad(np.asarray(v, dtype=np.float64)) for v in (rot, tilt, psi)))
        lib_stack = np.stack
        ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        lib_stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
        lib_stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
        lib_stack([sc, ss, cb], -1),
    ]
    return lib_stack(rows, -2)


def euler_angles(matrix) -> np.ndarray:
    """RELION Euler angles ``(rot, tilt, psi)`` in degrees of rotation matrices; the inverse of :func:`euler_matrix`.

    As RELION's ``Euler_matrix2angles`` (``src/euler.cpp``): ``tilt`` in ``[0, 180]``, ``rot`` and ``psi`` in
    ``(-180, 180]``; at ``tilt`` 0 or 180 (gimbal lock) ``rot`` is 0 and the whole in-plane angle goes to ``psi``.

    Parameters
    ----------
    matrix : array_like
        ``(..., 3, 3)`` proper rotation matrices (orthonormal, determinant +1).

    Returns
    -------
    numpy.ndarray
        ``(..., 3)`` float64 angles such that ``euler_matrix(*angles.T)`` gives back ``matrix``.
    """
    a = np.asarray(matrix, dtype=np.float64)
    if a.shape[-2:] != (3, 3):
        raise ValueError(f"expected (..., 3, 3) rotation matrices, got shape {a.shape}")
    abs_sb = np.hypot(a[..., 0, 2], a[..., 1, 2])
    regular = abs_sb > 16 * np.finfo(np.float32).eps
    # regular case: sin(tilt) > 0, so A[0,2] = -cos(psi) sin(tilt), A[1,2] = sin(psi) sin(tilt), A[2,0..1] = sin(tilt) (cos, sin)(rot)
    rot = np.where(regular, np.arctan2(a[..., 2, 1], a[..., 2, 0]), 0.0)
    tilt = np.where(regular, np.arctan2(abs_sb, a[..., 2, 2]), np.where(a[..., 2, 2] > 0, 0.0, np.pi))
    psi_lock = np.where(a[..., 2, 2] > 0, np.arctan2(-a[..., 1, 0], a[..., 0, 0]), np.arctan2(a[..., 1, 0], -a[..., 0, 0]))
    psi = np.where(regular, np.arctan2(a[..., 1, 2], -a[..., 0, 2]), psi_lock)
    return np.degrees(np.stack([rot, tilt, psi], axis=-1))


class Projector:
    """Projections of one cubic map at batches of orientations (RELION conventions), real space or Fourier slice.

    Parameters
    ----------
    volume : numpy.ndarray or torch.Tensor
        Cubic map ``[z, y, x]`` (``N x N x N``). A torch tensor keeps its device.
    method : {"fourier", "real"}
        ``"fourier"`` (default): central slices of the map's 3D Fourier transform (zero-padded ``padding`` times,
        trilinear interpolation with the matching real-space gridding correction, as RELION's ``Projector``), one
        2D inverse FFT per image: ``O(M^2 log M)`` per projection. ``"real"``: line integrals of the map sampled
        trilinearly on the rotated grid (``torch.nn.functional.grid_sample``): ``O(M^3)`` per projection, exact
        in the limit of fine sampling; the reference the Fourier method is tested against.
    padding : int
        Zero-padding factor of the Fourier method (memory: ``8 * (padding * N)^3`` bytes).
    """

    def __init__(self, volume, *, method: str = "fourier", padding: int = 2):
        if method not in ("fourier", "real"):
            raise ValueError(f"method must be 'fourier' or 'real', got {method!r}")
        self.is_torch = isinstance(volume, torch.Tensor)
        vol = volume if self.is_torch else torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
        vol = vol.to(torch.float32)
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise ValueError(f"volume must be a cubic 3D array, got shape {tuple(vol.shape)}")
        self.method = method
        self.n = vol.shape[0]
        self.device = vol.device
        if method == "real":
            self._input = vol[None, None]
            return
        n = self.n
        pad = max(1, int(padding)) * n
        self.pad = pad
        # gridding correction: trilinear interpolation in Fourier space multiplies real space by sinc^2(x / pad)
        x = (torch.arange(n, dtype=torch.float64, device=self.device) - n // 2) / pad
        s = torch.sinc(x) ** 2
        corr = (s[:, None, None] * s[None, :, None] * s[None, None, :]).to(torch.float32)
        padded = torch.zeros((pad, pad, pad), dtype=torch.float32, device=self.device)
        o = pad // 2 - n // 2  # the map's centre voxel n//2 lands on pad//2
        padded[o : o + n, o : o + n, o : o + n] = vol / corr
        spec = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(padded)))  # zero frequency at pad//2
        self._input = torch.stack([spec.real, spec.imag])[None].contiguous()  # 1, 2, pad, pad, pad

    def project(
        self,
        rot,
        tilt,
        psi,
        shifts=None,
        *,
        out_size: int | None = None,
        pixel_ratio: float = 1.0,
        depth: int | None = None,
        max_points: int = DEFAULT_MAX_POINTS,
    ):
        """Project at a batch of orientations; see :func:`project` for the parameters and the result."""
        n, device = self.n, self.device
        if not pixel_ratio or pixel_ratio <= 0:
            raise ValueError(f"pixel_ratio must be positive, got {pixel_ratio!r}")
        m = int(out_size) if out_size is not None else max(1, int(round(n / pixel_ratio)))
        mats = euler_matrix(*np.broadcast_arrays(*(np.atleast_1d(np.asarray(a, dtype=np.float64))
                                                   for a in (rot, tilt, psi))))
        mats = torch.as_tensor(mats, dtype=torch.float32, device=device).reshape(-1, 3, 3)
        nb = mats.shape[0]
        if shifts is None:
            sh = torch.zeros(nb, 2, dtype=torch.float32, device=device)
        else:
            sh = torch.as_tensor(np.asarray(shifts, dtype=np.float32).reshape(-1, 2), device=device)
            if sh.shape[0] == 1 and nb > 1:
                sh = sh.expand(nb, 2)
            if sh.shape[0] != nb:
                raise ValueError(f"got {sh.shape[0]} shifts for {nb} orientations")
        if self.method == "real":
            out = self._project_real(mats, sh, m, pixel_ratio, depth, max_points)
        else:
            out = self._project_fourier(mats, sh, m, pixel_ratio, max_points)
        return out if self.is_torch else out.cpu().numpy()

    def _project_real(self, mats, sh, m, pixel_ratio, depth, max_points):
        n, device = self.n, self.device
        nz = int(depth) if depth is not None else max(1, int(math.ceil(n / pixel_ratio)))
        nb = mats.shape[0]
        # in-plane and depth coordinates, in map voxels, relative to the centres
        u = (torch.arange(m, dtype=torch.float32, device=device) - m // 2) * pixel_ratio
        w = (torch.arange(nz, dtype=torch.float32, device=device) - (nz - 1) / 2.0) * pixel_ratio
        # voxel coordinate -> grid_sample's [-1, 1] (align_corners=True): (r + N//2) * 2/(N-1) - 1
        norm = 2.0 / (n - 1) if n > 1 else 1.0
        offset = (n // 2) * norm - 1.0
        out = torch.empty(nb, m, m, dtype=torch.float32, device=device)
        chunk = max(1, int(max_points) // (m * m * nz))
        for s in range(0, nb, chunk):
            a = mats[s : s + chunk] * norm  # rows A[0], A[1], A[2], pre-scaled
            b = a.shape[0]
            su = sh[s : s + chunk, 0] * pixel_ratio  # shift in voxels
            sv = sh[s : s + chunk, 1] * pixel_ratio
            # (A^T q)_j = sum_i A[i, j] q_i with q = (u + ox, v + oy, w)
            cu = (u[None, :] + su[:, None])[:, :, None] * a[:, None, 0, :]  # b, m(x), 3
            cv = (u[None, :] + sv[:, None])[:, :, None] * a[:, None, 1, :]  # b, m(y), 3
            cw = w[None, :, None] * a[:, None, 2, :] + offset  # b, nz, 3
            grid = cw[:, :, None, None, :] + cv[:, None, :, None, :] + cu[:, None, None, :, :]  # b, nz, m, m, 3
            samples = torch.nn.functional.grid_sample(
                self._input, grid.reshape(1, b * nz, m, m, 3), mode="bilinear", padding_mode="zeros",
                align_corners=True,
            )
            out[s : s + b] = samples.reshape(b, nz, m, m).sum(dim=1) * pixel_ratio
        return out

    def _project_fourier(self, mats, sh, m, pixel_ratio, max_points):
        pad, device = self.pad, self.device
        nb = mats.shape[0]
        mh = m // 2 + 1
        ky = torch.fft.fftfreq(m, d=1.0 / m, device=device).to(torch.float32)  # 0, 1, ..., -1 (integers)
        kx = torch.arange(mh, dtype=torch.float32, device=device)
        step = pad / (m * pixel_ratio)  # padded-spectrum samples per output frequency step
        norm = 2.0 / (pad - 1)
        offset = (pad // 2) * norm - 1.0
        out = torch.empty(nb, m, m, dtype=torch.float32, device=device)
        chunk = max(1, int(max_points) // (m * mh))
        for s in range(0, nb, chunk):
            a = mats[s : s + chunk] * (step * norm)
            b = a.shape[0]
            # 3D frequency of output frequency (kx, ky): A^T (kx, ky, 0) = kx A[0] + ky A[1]
            grid = (kx[None, None, :, None] * a[:, None, None, 0, :] + ky[None, :, None, None] * a[:, None, None, 1, :]
                    + offset)  # b, m(ky), mh(kx), 3
            samples = torch.nn.functional.grid_sample(
                self._input, grid.reshape(1, 1, b * m, mh, 3), mode="bilinear", padding_mode="zeros",
                align_corners=True,
            )[0, :, 0].reshape(2, b, m, mh)
            spec = torch.complex(samples[0], samples[1])
            # origin (ox, oy): I(u) = P(u + o), i.e. multiply the spectrum by exp(+2 pi i k.o / M)
            phase = kx[None, None, :] * sh[s : s + b, 0, None, None] + ky[None, :, None] * sh[s : s + b, 1, None, None]
            spec = spec * torch.polar(torch.ones_like(phase), phase * (2.0 * math.pi / m))
            img = torch.fft.irfft2(spec, s=(m, m))
            out[s : s + b] = torch.fft.fftshift(img, dim=(-2, -1)) / (pixel_ratio * pixel_ratio)
        return out


def project(
    volume,
    rot,
    tilt,
    psi,
    shifts=None,
    *,
    method: str = "fourier",
    out_size: int | None = None,
    pixel_ratio: float = 1.0,
    depth: int | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
):
    """Project a cubic map at a batch of orientations (line integrals along z of the rotated map).

    The map is sampled at ``A^T (u, v, w)`` (RELION's convention, see the module docstring) and integrated over
    ``w``; :class:`Projector` holds the two methods (Fourier slice by default, or real space) and is the thing to
    keep when projecting the same map many times.

    Parameters
    ----------
    volume : numpy.ndarray or torch.Tensor
        Cubic map ``[z, y, x]`` (``N x N x N``). A torch tensor stays on its device.
    rot, tilt, psi : float or array_like
        Euler angles in degrees, RELION convention (see :func:`euler_matrix`), broadcast to ``B`` orientations.
    shifts : array_like, optional
        ``B x 2`` RELION origin offsets ``(ox, oy)`` in output pixels; the particle centre lands at
        ``(M//2 - ox, M//2 - oy)`` (column, row). Default: no shift.
    method : {"fourier", "real"}
        See :class:`Projector`.
    out_size : int, optional
        Side ``M`` of the output images (default: ``round(N / pixel_ratio)``). The Fourier method's images are
        periodic with period ``M * pixel_ratio`` voxels and want ``M * pixel_ratio <= padding * N``.
    pixel_ratio : float
        Output pixel size over map voxel size (> 1 for coarser output). The Fourier method then keeps only the
        frequencies the output can hold; for the real method, low-pass the map first (e.g. :func:`resample_volume`).
    depth : int, optional
        Real method: number of samples along the projection direction, one output pixel apart and centred
        (default ``ceil(N / pixel_ratio)``, covering the sphere inscribed in the box).
    max_points : int
        Sample points per chunk (memory bound).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``B x M x M`` float32 projections (torch when ``volume`` is torch), indexed ``[row, col]``, in units of
        density times voxel length.
    """
    return Projector(volume, method=method).project(
        rot, tilt, psi, shifts, out_size=out_size, pixel_ratio=pixel_ratio, depth=depth, max_points=max_points
    )


def resample_volume(volume: np.ndarray, size: int) -> np.ndarray:
    """Fourier-crop (or zero-pad) a cubic map to ``size^3``, keeping the centre voxel ``N//2`` at ``size//2``.

    The field of view is kept, so the voxel size becomes ``voxel * N / size``; cropping low-passes the map to the new
    Nyquist frequency, which makes it safe to sample at the coarser spacing.
    """
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ValueError(f"volume must be a cubic 3D array, got shape {vol.shape}")
    n = vol.shape[0]
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if size == n:
        return vol.copy()
    # centre -> index 0, so that the Fourier resampling keeps it fixed, then back to size//2
    spec = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(vol)))
    k = min(n, size)
    lo_in = n // 2 - k // 2
    lo_out = size // 2 - k // 2
    out_spec = np.zeros((size, size, size), dtype=spec.dtype)
    out_spec[lo_out : lo_out + k, lo_out : lo_out + k, lo_out : lo_out + k] = spec[
        lo_in : lo_in + k, lo_in : lo_in + k, lo_in : lo_in + k
    ]
    out = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(out_spec))).real
    out *= (size / n) ** 3
    return out.astype(np.float32)


def lowpass_volume(volume: np.ndarray, angpix: float, resolution: float, edge_width: float = 2.0) -> np.ndarray:
    """Low-pass a map to ``resolution`` Angstrom with a raised-cosine edge ``edge_width`` Fourier shells wide.

    Parameters
    ----------
    volume : numpy.ndarray
        3D map.
    angpix : float
        Voxel size in Angstrom.
    resolution : float
        Cut-off resolution in Angstrom (no-op when at or below Nyquist, ``2 * angpix``).
    edge_width : float
        Width of the soft edge, in Fourier shells.
    """
    vol = np.asarray(volume, dtype=np.float32)
    if not resolution or resolution <= 2.0 * angpix:
        return vol.copy()
    shape = vol.shape
    freqs = np.meshgrid(*[np.fft.fftfreq(s) * s for s in shape[:-1]], np.fft.rfftfreq(shape[-1]) * shape[-1],
                        indexing="ij")
    # radius in shells of the largest dimension
    r = np.sqrt(sum((f * (max(shape) / s)) ** 2 for f, s in zip(freqs, shape)))
    r_cut = max(shape) * angpix / resolution
    filt = np.clip((r_cut + edge_width / 2.0 - r) / edge_width, 0.0, 1.0)
    filt = 0.5 - 0.5 * np.cos(np.pi * filt)
    axes = tuple(range(vol.ndim))
    out = np.fft.irfftn(np.fft.rfftn(vol, axes=axes) * filt, s=shape, axes=axes)
    return out.astype(np.float32)
