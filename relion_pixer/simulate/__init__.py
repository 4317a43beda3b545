"""Micrograph simulator with full ground truth (particle centres, label and instance maps, noise-free image).

Public API::

    simulate_micrograph(rng, shape=(H, W), angpix=..., particle_diameter_px=None, snr=..., **options)
        -> SimulatedMicrograph
    random_config(rng, **overrides) -> dict          # domain-randomised options for training
    simulate_project(out_dir, n, seed, ...)          # RELION-looking project on disk
    make_shape(rng, family, diameter=None), load_atomic_model(path)

See ``docs/simulator.md`` for what is modelled and what is not.
"""

from relion_pixer.simulate.micrograph import (
    SimulatedMicrograph,
    ctf_2d,
    electron_wavelength,
    interaction_constant,
    random_config,
    simulate_micrograph,
)
from relion_pixer.simulate.shapes import (
    ALL_FAMILIES,
    SHAPE_FAMILIES,
    ModelFileError,
    ParticleModel,
    load_atomic_model,
    make_shape,
)

__all__ = [
    "SimulatedMicrograph",
    "simulate_micrograph",
    "random_config",
    "simulate_project",
    "SHAPE_FAMILIES",
    "ALL_FAMILIES",
    "ParticleModel",
    "ModelFileError",
    "make_shape",
    "load_atomic_model",
    "ctf_2d",
    "electron_wavelength",
    "interaction_constant",
]


def __getattr__(name):
    # the project writer pulls in mrcfile/starfile/pandas: import it on first use
    if name == "simulate_project":
        from relion_pixer.simulate.project import simulate_project

        return simulate_project
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
