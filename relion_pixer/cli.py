"""Command-line entry point ``relion_pixer``.

``relion_pixer [pick] --in_mics ... --o ...`` picks (the default, so that RELION's External job can call
the executable with no subcommand). Other subcommands: ``simulate``, ``evaluate``, ``train``, ``labels``.
Each subcommand's module owns its own argument parser through a ``main(argv)`` function.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "pick": "relion_pixer.job",
    "simulate": "relion_pixer.simulate.cli",
    "evaluate": "relion_pixer.evaluate",
    "train": "relion_pixer.train",
    "labels": "relion_pixer.labels",
}

USAGE = """usage: relion_pixer [SUBCOMMAND] [options]

subcommands:
  pick       pick particles (the default when no subcommand is given; RELION External job)
  simulate   write simulated micrographs with ground truth as a small RELION project
  evaluate   score picks against ground-truth coordinates
  train      train or fine-tune the networks
  labels     make segmentation labels by reprojecting a RELION refinement

Run `relion_pixer SUBCOMMAND --help` for the options of one subcommand.
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help") and len(argv) == 1:
        print(USAGE)
        return 0
    if argv and argv[0] in ("--version", "-V"):
        from relion_pixer import __version__

        print(f"relion_pixer {__version__}")
        return 0
    name = "pick"
    if argv and argv[0] in SUBCOMMANDS:
        name = argv.pop(0)
    elif "--in_parts" in argv:
        # A RELION External job given a refinement (particles + map) makes training labels.
        name = "labels"
    module = importlib.import_module(SUBCOMMANDS[name])
    return int(module.main(argv) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
