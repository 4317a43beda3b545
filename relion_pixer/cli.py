"""Command-line entry point ``relion_pixer``.

``relion_pixer [pick] --in_mics ... --o ...`` picks (the default, so that RELION's External job can call
the executable with no subcommand). Other subcommands: ``simulate``, ``evaluate``, ``train``, ``labels``.
Each subcommand's module owns its own argument parser through a ``main(argv)`` function.
"""

from __future__ import annotations

import contextlib
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


def _job_dir(argv: list[str]) -> str | None:
    """The directory RELION watches for the job's exit markers (``--pipeline_control``, else ``--o``), or None.

    Options are read as the job reads them (:func:`relion_pixer.relion.parse_tolerant`: two or more leading dashes,
    any case, ``-`` for ``_``, ``--o=DIR``); written out here, as a signal handler must not import."""
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


def _stop_while_starting(argv: list[str]):
    """Until the job sets up its own handling, a SIGTERM (a queue system, RELION's kill) still leaves RELION's
    aborted marker, so that the GUI does not show the job running (the job replaces this handler). Returns the
    handler it replaced (None where signals cannot be set)."""
    import os
    import signal

    def stopped(signum, frame):  # no import here: the signal may come in the middle of one
        out = _job_dir(argv)
        if out:
            with contextlib.suppress(OSError):
                os.makedirs(out, exist_ok=True)
                open(os.path.join(out, "RELION_JOB_EXIT_ABORTED"), "a").close()  # relion.EXIT_ABORTED
        os.write(2, b"relion_pixer: stopped by SIGTERM while starting\n")
        os._exit(2)

    try:
        return signal.signal(signal.SIGTERM, stopped)
    except ValueError:  # not the main thread (an embedding program): leave signals alone
        return None


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
    previous = _stop_while_starting(argv) if name in ("pick", "labels") else None  # RELION's jobs: slow to import
    try:
        module = importlib.import_module(SUBCOMMANDS[name])
        return int(module.main(argv) or 0)
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
