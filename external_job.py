#!/usr/bin/env python3
"""RELION External job executable for relion-pixer.

Point the External job's "External executable" at this file. RELION runs it from the project directory as
``external_job.py --o External/jobNNN/ --in_mics <micrographs.star> [--param value ...] --j N``.
"""

import os
import sys

# Works from a source checkout too: the package lies beside this file.
sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

from relion_pixer.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
