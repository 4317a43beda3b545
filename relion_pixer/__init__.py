"""relion-pixer: PIXER particle picking for cryo-EM, packaged as a RELION External job.

Stages, each in its own module, data flowing one way::

    io (read STAR/MRC) -> preprocess (normalise, resample) -> segment (probability map)
        -> picking (grid local maximum) -> classify (3-way filter) -> io (write STAR)
"""

__version__ = "0.1.0"

#: Particle diameter, in pixels, at which the networks were trained and run.
#: Every micrograph is resampled so that the user's particle diameter becomes this.
NET_DIAMETER_PX = 32

#: Side of the boxes the 3-way classifier sees, in network pixels (2 particle diameters).
BOX_SIZE = 64

#: Class indices shared by label maps, the classifier and the segmentation net.
BACKGROUND, PARTICLE, CONTAMINATION = 0, 1, 2
CLASS_NAMES = ("background", "particle", "contamination")

#: Precisions of inference on the CPU (:data:`relion_pixer.models.CPU_PRECISION`) and the default.
CPU_PRECISIONS = ("auto", "float32", "bfloat16")
DEFAULT_CPU_PRECISION = "auto"
