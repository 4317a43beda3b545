#!/usr/bin/env python3
"""RELION External job executable for relion-pixer.

Point the External job's "External executable" at this file. RELION runs it from the project directory as
``external_job.py --o External/jobNNN/ --in_mics <micrographs.star> [--param value ...] --j N``.

RELION runs it with the first ``python3`` on its PATH. When that Python lacks relion-pixer's packages and the checkout
has the ``.venv`` that ``make demo`` / ``make test`` set up, the job runs with that environment's Python instead;
otherwise it fails with the reason in run.err and ``RELION_JOB_EXIT_FAILURE`` in the job directory, so that RELION
does not wait for it.
"""

import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.realpath(__file__))
#: What the package needs at run time (pyproject.toml's dependencies).
NEEDED = ("numpy", "scipy", "pandas", "mrcfile", "starfile", "torch")
#: Set when this file re-runs itself with the checkout's environment, so that it does so once at most.
REEXEC = "RELION_PIXER_REEXEC"


def _job_dir(argv):
    """Where RELION looks for the exit markers: ``--pipeline_control``, else ``--o`` (None without either), read as
    the job reads options (two or more dashes, any case, ``-`` for ``_``; ``relion_pixer.cli._job_dir``, which this
    file cannot import: it must work when the package does not)."""
    found = {}
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        name, eq, value = arg.partition("=")
        key = name.lstrip("-").strip().lower().replace("-", "_")
        if key in ("o", "pipeline_control"):
            if eq:
                found[key] = value
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                found[key] = argv[i + 1]
    return found.get("pipeline_control") or found.get("o")


def _fail(why):
    """Say why on stderr (run.err) and leave RELION's failure marker in the job directory."""
    print(f"ERROR: {why}", file=sys.stderr, flush=True)
    out = _job_dir(sys.argv[1:])
    if out:
        try:
            os.makedirs(out, exist_ok=True)
            open(os.path.join(out, "RELION_JOB_EXIT_FAILURE"), "a").close()
        except OSError:
            pass
    sys.exit(1)


missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
if missing:
    venv = os.path.join(HERE, ".venv")
    python = os.path.join(venv, "bin", "python")
    if os.path.isfile(python) and not os.environ.get(REEXEC) and os.path.realpath(sys.prefix) != os.path.realpath(venv):
        os.environ[REEXEC] = "1"
        os.execv(python, [python, os.path.realpath(__file__), *sys.argv[1:]])
    _fail(f"{sys.executable} lacks {', '.join(missing)}, which relion-pixer needs, and the checkout has no usable "
          f"environment at {venv}: run `make test` in {HERE}, or put the Python environment relion-pixer is "
          "installed in first on RELION's PATH (README, Quick start)")

# Works from a source checkout too: the package lies beside this file.
sys.path.insert(0, HERE)

from relion_pixer.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
