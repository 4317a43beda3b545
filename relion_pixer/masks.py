"""Binary particle masks from projections, shared by the simulator and the reprojection labels.

One definition of "the particle's extent", so that simulated label maps and labels made by reprojecting a
RELION refinement agree.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

#: A pixel belongs to the particle where its projected density reaches this fraction of the projection's maximum.
MASK_FRACTION = 0.15


def binarise_projection(projection: np.ndarray, fraction: float = MASK_FRACTION) -> np.ndarray:
    """Binary mask of a (positive-density) projection: ``projection >= fraction * max``, holes filled.

    Parameters
    ----------
    projection : numpy.ndarray
        2D projection of a density (protein positive, solvent about zero).
    fraction : float
        Threshold as a fraction of the projection's maximum.

    Returns
    -------
    numpy.ndarray of bool
    """
    proj = np.asarray(projection, dtype=np.float32)
    peak = float(proj.max()) if proj.size else 0.0
    if peak <= 0:
        return np.zeros(proj.shape, dtype=bool)
    return scipy.ndimage.binary_fill_holes(proj >= fraction * peak)
