"""The picking command: RELION External job, RELION schedules, and standalone use.

As a RELION External job (RELION runs it from the project directory)::

    relion_pixer --o External/job012/ --in_mics CtfFind/job005/micrographs_ctf.star --particle_diameter 180 --j 4

Standalone::

    relion_pixer --in_mics mics.star --o out/ --particle_diameter 180
    relion_pixer pick a.mrc b.mrc --angpix 1.06 --particle_diameter 180 --o out/

Outputs, in this order: ``<o>/<micrograph path after Type/jobNNN/ without extension>_autopick.star`` per micrograph
(RELION 3.1: ``_pixer.star``), ``<o>/autopick.star`` (``data_coordinate_files``), ``<o>/RELION_OUTPUT_NODES.star``
(RELION 3.1: also ``coords_suffix_pixer.star``), then ``RELION_JOB_EXIT_SUCCESS`` / ``_FAILURE`` / ``_ABORTED``.
Every file is written atomically. Rerunning on the same directory picks only micrographs without a coordinate file,
so a killed job loses nothing it finished and RELION's on-the-fly schedules only pay for new micrographs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import io as _stdio
import json
import math
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence, TextIO

import numpy as np

from relion_pixer import (CPU_PRECISIONS, DEFAULT_CPU_PRECISION, NET_DIAMETER_PX, __version__, io, parallel,
                          preprocess, relion)
from relion_pixer.pipeline import PickParams, PickResult

__all__ = ["JobOptions", "UsageError", "parse_args", "run_job", "main", "PickFunction"]

#: ``pick_fn(image, angpix, diameter_A, params) -> PickResult``; the default chains the networks.
PickFunction = Callable[[np.ndarray, float, float, PickParams], PickResult]

#: Known options: name -> kind for :func:`relion_pixer.relion.parse_tolerant`.
SPEC = {
    "o": "value",
    "in_mics": "value",
    "particle_diameter": "value",
    "threshold": "value",
    "map_threshold": "value",
    "map_relative": "value",
    "map_odds": "value",
    "max_particles": "value",
    "min_distance": "value",
    "margin": "value",
    "device": "value",
    "batch_size": "value",
    "precision": "value",
    "angpix": "value",
    "model": "value",
    "write_maps": "flag",
    "estimate_size": "flag",
    "check_spacing": "flag",
    "crowded": "flag",
    "adapt": "flag",
    "invert": "flag",
    "relion_version": "value",
    "j": "value",
    "workers": "value",
    "gpu": "value",
    "strict": "flag",
    "continue": "flag",
    "pipeline_control": "value",
    "help": "flag",
    # inputs of RELION's External job that a picker does not use
    "in_movies": "ignored",
    "in_coords": "ignored",
    "in_3dref": "ignored",
    "in_mask": "ignored",
    "in_parts": "ignored",
}

HELP = f"""relion_pixer {__version__}: PIXER particle picking (RELION External job, or standalone)

usage: relion_pixer --in_mics MICS.star --o JOBDIR/ --particle_diameter A [options]
       relion_pixer pick A.mrc [B.mrc ...] --angpix A/PX --particle_diameter A --o OUTDIR/ [options]

In RELION: External job, "External executable" = relion_pixer (or external_job.py), "Input micrographs" =
a micrographs STAR file, and parameters given as label / value pairs (label without dashes):

  particle_diameter A   particle diameter in Angstrom (required)
  threshold P           lowest figure of merit of a pick, 0-1 (default {PickParams.threshold:g}): the map score,
                        lowered where the classifier sees ice, carbon or background and agrees with the map
                        on that micrograph; Extract's --minimum_pick_fom reads the same figure
  map_threshold P       lowest smoothed probability-map score of a candidate before the classifier, 0-1
                        (default {PickParams.map_threshold:g})
  map_relative F        a candidate also needs this fraction of the micrograph's typical candidate score, 0-1
                        (default {PickParams.map_relative:g}; 0: off)
  map_odds F            a candidate also needs this fraction of the typical candidate score's odds, 0-1: drops
                        half-confident candidates on clean micrographs (default {PickParams.map_odds:g}; 0: off)
  max_particles N       at most N picks per micrograph, best first; 0 = no cap (default 0); run.out names
                        every micrograph where the cap cuts picks
  estimate_size [Yes/No] measure the particle size the networks see best on the first micrographs (searched
                        0.55x-1.8x the diameter given; default Yes); run.out reports it, run.err warns beyond
                        30 %; the job picks halfway (in log scale) from the diameter given to the
                        estimate (benchmarks/tune_size.py); No: at the diameter given
  check_spacing [Yes/No] crowded micrographs: pick the first micrographs (both passes) and, where the median pick
                        has a neighbour closer than one diameter, pick at that spacing (never below 0.8x); for
                        touching particles given as their longest dimension (default Yes since session 25:
                        benchmarks/bench_crowd.py, rule 5); Continue reuses it
  crowded [Yes/No]      crowded micrographs: after picking each micrograph, mask its picks out and pick it again,
                        adding the particles their neighbours hid from the networks (a second segmentation
                        of each; default Yes: benchmarks/bench_repick.py; No picks once, twice as fast)
  adapt [Yes/No]        self-training: fine-tune the networks briefly on their own confident picks, empty ice and
                        contamination in a sample of the job's micrographs (no labels needed), check them on a
                        held-out part, then pick every micrograph with them (default No; docs/adapt.md).
                        The adapted model is written to adapted_model.pt; Continue reuses it
  min_distance A        smallest distance between picks in Angstrom (default: half a diameter)
  margin A              drop picks closer than this to the micrograph edge, in Angstrom
                        (default: 0.4 of the diameter: a particle cut by the edge is kept while at
                        most a tenth of its diameter lies outside)
  device D              auto, cpu, cuda or cuda:N (default auto)
  batch_size N          classifier boxes per batch (default 64)
  precision P           CPU inference: auto (bfloat16 where the CPU multiplies it in hardware, AMX tiles;
                        float32 elsewhere), float32 or bfloat16 (default {DEFAULT_CPU_PRECISION};
                        benchmarks/bench_precision.py); a GPU runs float32
  angpix A/PX           pixel size; overrides the STAR file (needed when neither STAR nor MRC header has one)
  model FILE            fine-tuned weights from `relion_pixer train` (default: the shipped weights)
  write_maps [Yes/No]   also save each probability map (MRC) and a picture of the picks (PNG)
  invert [Yes/No]       particles are lighter than the background (negative stain, inverted exports); the
                        networks expect cryo-EM contrast, dark particles (like RELION's LoG_invert)
  relion_version V      3.1, 4 or 5: output flavour (default: from default_pipeline.star; 5 when absent)
  strict [Yes/No]       stop at the first unreadable micrograph instead of skipping it (a missing file or a
                        broken header: before any work)
  j N                   CPU threads (RELION's "Number of threads"); with workers, shared among them
  workers N             worker processes, each with its own copy of the networks and j/N torch threads; the
                        micrographs are handed out one at a time to whichever worker is free (default 1: pick in
                        the job's own process)
  gpu IDS               CUDA devices in RELION's syntax: "0,1" (the workers use devices 0 and 1), "0:1" (MPI rank
                        0 uses device 0, rank 1 device 1); empty: spread over every visible device

Rerunning on the same output directory picks only micrographs that have no coordinate file yet (RELION's
Continue, or --continue, does the same); run.err names the settings that differ from those of the run that picked
the files it keeps.
Across nodes: `mpirun -n N relion_pixer ...` (needs mpi4py: pip install 'relion-pixer[mpi]'): rank 0 reads the
input, hands the micrographs out one at a time to whichever rank asks, and writes autopick.star, the output nodes
and the exit marker once every rank has finished.
"""


#: Below this diameter (A) the job warns that the value may have been given in nm.
MIN_PLAUSIBLE_DIAMETER_A = 40.0


class UsageError(ValueError):
    """A bad command line; the message is one line for RELION's run.err."""


@dataclass
class JobOptions:
    """Parsed options of one picking run (see :data:`HELP`)."""

    o: str
    particle_diameter: float
    in_mics: str | None = None
    micrographs: tuple[str, ...] = ()
    threshold: float = PickParams.threshold
    map_threshold: float = PickParams.map_threshold
    map_relative: float = PickParams.map_relative
    map_odds: float = PickParams.map_odds
    max_particles: int = PickParams.max_particles
    min_distance: float | None = None
    margin: float | None = None
    device: str = "auto"
    batch_size: int = PickParams.batch_size
    precision: str | None = None
    angpix: float | None = None
    model: str | None = None
    write_maps: bool = False
    estimate_size: bool = True
    check_spacing: bool = True
    crowded: bool = True
    adapt: bool = False
    invert: bool = False
    relion_version: int | None = None
    threads: int | None = None
    workers: int = 1
    gpu: str | None = None
    strict: bool = False
    pipeline_control: str | None = None
    warnings: tuple[str, ...] = ()


# ----------------------------------------------------------------------------------------------------------------
# parsing
# ----------------------------------------------------------------------------------------------------------------


#: How the warning for an option given without a value names a default that is computed later.
_DEFAULT_WORDS = {
    "min_distance": "half the particle diameter",
    "margin": "0.4 of the particle diameter",
    "angpix": "the pixel size of the STAR file or the MRC header",
    "j": "all the threads torch sees",
}


def _precision_name(value, what: str) -> str:
    """``value`` as one of :data:`relion_pixer.CPU_PRECISIONS` (case and blanks ignored), or UsageError naming
    ``what`` (without importing torch, unlike :func:`relion_pixer.models.cpu_precision`)."""
    name = str(value).strip().lower()
    if name not in CPU_PRECISIONS:
        raise UsageError(f"{what} must be {', '.join(CPU_PRECISIONS[:-1])} or {CPU_PRECISIONS[-1]}, not {value!r}")
    return name


def _number(values: dict, key: str, kind, default, warnings: list, what: str = "a number"):
    if key not in values:
        return default
    raw = values[key]
    if raw is None or raw is True:
        shown = _DEFAULT_WORDS.get(key, default) if default is None else default
        warnings.append(f"--{key} was given without a value; using the default ({shown})")
        return default
    try:
        value = kind(raw)
        if kind is float and not math.isfinite(value):
            raise ValueError
    except ValueError:
        raise UsageError(f"--{key} needs {what}, not {raw!r}") from None
    return value


#: Numeric options: name -> (type, default, what the value is, test of the value, the test in words).
#: One table, so every option is read and checked the same way.
_NUMBERS = {
    "threshold": (float, PickParams.threshold, "a probability between 0 and 1", lambda v: 0 <= v <= 1, "between 0 and 1"),
    "map_threshold": (float, PickParams.map_threshold, "a probability between 0 and 1", lambda v: 0 <= v <= 1, "between 0 and 1"),
    "map_relative": (float, PickParams.map_relative, "a fraction between 0 and 1", lambda v: 0 <= v <= 1, "between 0 and 1"),
    "map_odds": (float, PickParams.map_odds, "a fraction between 0 and 1", lambda v: 0 <= v <= 1, "between 0 and 1"),
    "max_particles": ("int", PickParams.max_particles, "a whole number (0 = no cap)", lambda v: v >= 0, "0 (no cap) or positive"),
    "min_distance": (float, None, "a distance in Angstrom", lambda v: v > 0, "positive"),
    "margin": (float, None, "a distance in Angstrom", lambda v: v >= 0, "0 or positive"),
    "batch_size": ("int", PickParams.batch_size, "a whole number", lambda v: v >= 1, "at least 1"),
    "angpix": (float, None, "a pixel size in Angstrom", lambda v: v > 0, "positive"),
    "j": ("int", None, "a number of threads", lambda v: v >= 1, "at least 1"),
    "workers": ("int", JobOptions.workers, "a number of worker processes", lambda v: v >= 1, "at least 1"),
}


#: Yes/No options that become :class:`JobOptions` fields of the same name; absent, each takes the field's default.
_YES_NO = tuple(key for key, kind in SPEC.items() if kind == "flag" and key in JobOptions.__dataclass_fields__)


def _bounded(values: dict, key: str, warnings: list):
    """Option ``key`` read with :func:`_number` and checked as :data:`_NUMBERS` says (None when absent)."""
    kind, default, what, ok, bound = _NUMBERS[key]
    value = _number(values, key, _int if kind == "int" else kind, default, warnings, what=what)
    if value is not None and not ok(value):
        raise UsageError(f"--{key} must be {bound}, not {value:g}")
    return value


def parse_args(argv: Sequence[str]) -> JobOptions:
    """Parse the picking command line tolerantly (see :func:`relion_pixer.relion.parse_tolerant`).

    Parameters
    ----------
    argv : sequence of str
        Arguments without the program name (and without the ``pick`` subcommand word). Without ``--in_mics``,
        arguments that belong to no option are micrograph files (``relion_pixer pick a.mrc b.mrc ...``; shell-style
        patterns such as ``Micrographs/*.mrc`` are expanded).

    Raises
    ------
    UsageError
        Missing ``--o``, ``--particle_diameter`` or input; a value that is not a valid number or choice.
    """
    parsed = relion.parse_tolerant(argv, SPEC)
    values = parsed.values
    warnings = list(parsed.warnings)
    in_mics = values.get("in_mics")
    # a misspelt parameter; a Yes/No one with another value (without --in_mics, files may follow a flag)
    problem = relion.option_problem(parsed, [k for k, kind in SPEC.items() if kind != "ignored" and k != "help"],
                                    flags=bool(in_mics))
    if problem:
        raise UsageError(f"{problem} (relion_pixer --help lists the parameters)")
    if "in_mics" in values and not in_mics:
        raise UsageError("--in_mics needs a micrographs STAR file")
    micrographs: list[str] = []
    if in_mics:
        if parsed.positional:
            warnings.append(f"ignoring arguments that belong to no option: {' '.join(parsed.positional)} (RELION "
                            "passes values unquoted, so a path with spaces arrives split: rename it without spaces)")
    else:
        for item in parsed.positional:
            if any(c in item for c in "*?[") and not os.path.exists(item):
                matches = sorted(glob.glob(item))
                if not matches:
                    raise UsageError(f"no micrograph matches {item!r}")
                micrographs.extend(matches)
            else:
                micrographs.append(item)
        if not micrographs:
            raise UsageError("no input: give --in_mics MICS.star, or micrograph files after 'pick'")

    out = values.get("o")
    if not out or out is True:
        raise UsageError("--o OUTPUT_DIRECTORY/ is required")

    if values.get("particle_diameter") in (None, True):
        raise UsageError("--particle_diameter is required: the particle's diameter in Angstrom (e.g. 180)")
    diameter = _number(values, "particle_diameter", float, None, warnings, "a diameter in Angstrom")
    if diameter <= 0:
        raise UsageError(f"--particle_diameter must be positive, not {diameter:g}")
    if diameter < MIN_PLAUSIBLE_DIAMETER_A:
        warnings.append(f"--particle_diameter {diameter:g} A is smaller than any particle picked in practice: it is "
                        f"in Angstrom ({diameter * 10:g} for {diameter:g} nm)")

    numbers = {key: _bounded(values, key, warnings) for key in _NUMBERS}
    threshold, map_threshold, map_relative = numbers["threshold"], numbers["map_threshold"], numbers["map_relative"]
    max_particles, min_distance, margin = numbers["max_particles"], numbers["min_distance"], numbers["margin"]
    batch_size, angpix, threads = numbers["batch_size"], numbers["angpix"], numbers["j"]
    if threshold >= 1:
        warnings.append(f"--threshold {threshold:g} keeps no pick: figures of merit lie below 1")

    device = values.get("device")
    if device is None or device is True:
        if "device" in values:
            warnings.append("--device was given without a value; using auto")
        device = "auto"
    device = str(device).strip().lower()
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, not {device!r}")

    precision = values.get("precision")
    if precision is None or precision is True:
        if "precision" in values:
            warnings.append("--precision was given without a value; using the default "
                            f"({DEFAULT_CPU_PRECISION})")
        precision = None
        env = os.environ.get("RELION_PIXER_CPU_PRECISION")
        if env is not None:  # it reaches every worker and rank: a bad value fails here, not at each micrograph
            _precision_name(env, "the environment variable RELION_PIXER_CPU_PRECISION")
    else:
        precision = _precision_name(precision, "--precision")

    gpu = None
    if "gpu" in values:
        gpu = values["gpu"]
        gpu = "" if gpu is None or gpu is True else str(gpu).strip()
        try:
            parallel.parse_gpu_ids(gpu)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if device == "cpu" and gpu:
            warnings.append(f"--gpu {gpu} is ignored with --device cpu")

    model = values.get("model")
    if model is True:
        model = None
    if "model" in values and not model:
        warnings.append("--model was given without a value; using the shipped weights")

    control = values.get("pipeline_control")
    control = None if control is None or control is True or not str(control).strip() else str(control)

    version = values.get("relion_version")
    if version is not None and version is not True:
        try:
            version = relion.parse_relion_version(version)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    else:
        version = None

    return JobOptions(
        o=str(out),
        particle_diameter=float(diameter),
        in_mics=in_mics,
        micrographs=tuple(micrographs),
        threshold=float(threshold),
        map_threshold=float(map_threshold),
        map_relative=float(map_relative),
        map_odds=float(numbers["map_odds"]),
        max_particles=int(max_particles),
        min_distance=min_distance,
        margin=margin,
        device=device,
        batch_size=int(batch_size),
        precision=precision,
        angpix=angpix,
        model=model or None,
        relion_version=version,
        threads=threads,
        workers=int(numbers["workers"]),
        gpu=gpu,
        pipeline_control=control,
        warnings=tuple(warnings),
        **{key: bool(values.get(key, getattr(JobOptions, key))) for key in _YES_NO},
    )


def _int(text: str) -> int:
    value = float(text)
    if not value.is_integer():
        raise ValueError
    return int(value)


# ----------------------------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------------------------


class _Log:
    """stdout lines (RELION's run.out) and stderr warnings/errors (run.err), tqdm-aware."""

    def __init__(self, out: TextIO, err: TextIO):
        self.out, self.err, self.bar = out, err, None

    def info(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=self.out)
        else:
            print(msg, file=self.out, flush=True)

    def warn(self, msg: str) -> None:
        print(f"WARNING: {msg}", file=self.err, flush=True)

    def error(self, msg: str) -> None:
        print(f"ERROR: {msg}", file=self.err, flush=True)


def _resolve_device(device: str) -> str:
    if device == "cpu":
        return "cpu"
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise UsageError(f"--device {device} was asked for, but no CUDA device is available (use --device cpu)")
    index = torch.device(device).index
    if index is not None and index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise UsageError(f"--device {device} was asked for, but there are only {n} CUDA device(s) (cuda:0 to "
                         f"cuda:{n - 1})")
    return device


def _use_device(device: str) -> None:
    """Make ``device`` the current CUDA device of this process when it names one (``cuda:N``), so that CuPy and the
    CUDA runtime work there and set up no context on GPU 0 besides."""
    if device.startswith("cuda:"):
        import torch

        torch.cuda.set_device(torch.device(device))


def _load_networks(opts: JobOptions, device: str):
    """The networks of ``--model`` (or the shipped weights) on ``device``; a missing file is a usage error."""
    from relion_pixer import models as pixer_models

    try:
        return pixer_models.load_pretrained(opts.model, device=device)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None


def _default_pick_fn(opts: JobOptions, device: str, loaded=None) -> PickFunction:
    """The networks' picker on ``device``; ``loaded``: networks already loaded from ``opts.model`` there."""
    from relion_pixer.pipeline import pick_micrograph

    if loaded is None:
        loaded = _load_networks(opts, device)

    def pick(image, angpix, diameter_A, params):
        return pick_micrograph(image, angpix, diameter_A, loaded, params)

    pick.models, pick.device = loaded, device  # for the size estimate
    return pick


def _entries(opts: JobOptions, log: _Log) -> list[io.MicrographEntry]:
    if opts.in_mics:
        entries = io.read_micrographs_star(opts.in_mics, project_dir=Path("."))
        if not entries:
            raise UsageError(f"{opts.in_mics}: the micrographs STAR file lists no micrographs")
        if opts.angpix is not None:
            differ = sorted({e.angpix for e in entries if e.angpix and abs(e.angpix - opts.angpix) > 0.01 * e.angpix})
            if differ:
                log.warn(f"--angpix {opts.angpix:g} overrides the pixel size of {opts.in_mics} "
                         f"({', '.join(f'{a:g}' for a in differ)} A/px)")
            entries = [dataclasses.replace(e, angpix=opts.angpix, angpix_source="user") for e in entries]
        return entries
    return [io.MicrographEntry(name, Path(name), opts.angpix, None, "user" if opts.angpix else "none")
            for name in opts.micrographs]


def _unique(entries: list[io.MicrographEntry], log: _Log) -> list[io.MicrographEntry]:
    """``entries`` with each micrograph once (the first time it is listed), and a warning naming those listed more
    than once."""
    seen: dict[str, int] = {}
    for e in entries:
        seen[e.name] = seen.get(e.name, 0) + 1
    again = [name for name, n in seen.items() if n > 1]
    if not again:
        return entries
    log.warn(f"{len(again)} micrograph(s) are listed more than once ({', '.join(again[:3])}"
             + (", ..." if len(again) > 3 else "") + "); each is picked once")
    kept, out = set(), []
    for e in entries:
        if e.name not in kept:
            kept.add(e.name)
            out.append(e)
    return out


#: A micrograph's header pixel size that differs from the STAR file's by more than this fraction draws a warning.
ANGPIX_MISMATCH = 0.01


def _check_header_angpix(entries: list[io.MicrographEntry], log: _Log) -> None:
    """Warn when the first micrograph whose pixel size comes from the STAR file has another one in its MRC header
    (a header read, cheap). The STAR file's is used, as RELION does."""
    first = next((e for e in entries if e.angpix and e.angpix_source not in ("user", "mrc_header", "none")), None)
    if first is None:
        return
    try:
        header = io.read_header_angpix(first.path)
    except (io.MicrographError, OSError):
        return
    if header and abs(header - first.angpix) > ANGPIX_MISMATCH * first.angpix:
        hint = (" (the movies' pixel size: binned micrographs have a larger one)"
                if first.angpix_source == "rlnMicrographOriginalPixelSize" else "")
        log.warn(f"{first.name}: the STAR file gives {first.angpix:g} A/px (_{first.angpix_source}){hint}, its MRC "
                 f"header {header:g} A/px; picking with {first.angpix:g} A/px. If that is wrong, give angpix")


def _count_rows(path: str) -> int:
    """Rows of a coordinate STAR file, counted without parsing (fast for on-the-fly reruns on big projects)."""
    n = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            text = line.strip()
            if text and not text.startswith(("_", "#", "data_", "loop_")):
                n += 1
    return n


def _clean_temp_files(job_dir: Path) -> None:
    for p in job_dir.rglob(f".*{io.TMP_SUFFIX}"):
        try:
            p.unlink()
        except OSError:
            pass


def _write_maps(base: str, result: PickResult, image: np.ndarray, angpix: float, opts: JobOptions) -> None:
    """Probability map as MRC and a PNG of the picks beside it (matplotlib Agg, imported here)."""
    import matplotlib
    import matplotlib.cm
    import matplotlib.colors
    import mrcfile
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PatchCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle
    import scipy.ndimage

    from relion_pixer import preprocess

    fx = result.factors[1]
    if result.prob_map is not None:
        with io.atomic_output_path(base + "_probmap.mrc") as tmp:
            with mrcfile.new(tmp) as m:
                m.set_data(np.ascontiguousarray(result.prob_map, dtype=np.float32))
                m.voxel_size = (angpix / fx, angpix / result.factors[0], angpix / fx)  # x, y, z
    net = result.net_image
    if net is None:
        net, _ = preprocess.prepare(image, angpix, opts.particle_diameter)
    shown = scipy.ndimage.gaussian_filter(np.asarray(net, np.float32), 1.0)
    lo, hi = np.percentile(shown, [1, 99])
    xy_net = preprocess.to_network(result.xy, result.factors)
    panels = 2 if result.prob_map is not None else 1
    h, w = shown.shape
    scale = 6.0 / max(h, w)
    fig = Figure(figsize=(panels * w * scale + 1.2, h * scale + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, panels, 1)
    ax.imshow(shown, cmap="gray", vmin=lo, vmax=hi, interpolation="bilinear")
    cmap = matplotlib.colormaps["viridis"]
    low = min(opts.threshold, float(result.fom.min()) if len(result.fom) else opts.threshold)
    norm = matplotlib.colors.Normalize(vmin=low, vmax=1.0)
    circles = [Circle((x, y), NET_DIAMETER_PX / 2) for x, y in xy_net]
    coll = PatchCollection(circles, facecolor="none", edgecolor=cmap(norm(result.fom)), linewidth=1.0)
    ax.add_collection(coll)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_title(f"{len(result.xy)} picks (colour: figure of merit)", fontsize=9)
    ax.set_axis_off()
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, fraction=0.046, pad=0.02)
    if result.prob_map is not None:
        ax2 = fig.add_subplot(1, panels, 2)
        im = ax2.imshow(result.prob_map, cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax2.set_title("particle probability", fontsize=9)
        ax2.set_axis_off()
        fig.colorbar(im, ax=ax2, fraction=0.046, pad=0.02)
    fig.tight_layout()
    with io.atomic_write(base + "_picks.png", "wb") as fh:
        fig.savefig(fh, format="png")


@dataclass
class _Outcome:
    """What one process (or, merged, the whole job) did; gathered from every MPI rank by rank 0."""

    picked: int = 0
    particles: int = 0
    seconds: float = 0.0
    failed: list = dataclasses.field(default_factory=list)
    aborted: bool = False
    fatal: str | None = None
    wall: float = 0.0
    processes: int = 0
    vetoed: int = 0
    capped: int = 0
    repicked: int = 0


@dataclass
class _Plan:
    """What rank 0 read and decided, sent to every rank: the RELION flavour and the micrographs still to pick."""

    version: int
    star_version: int
    suffix: str
    entries: list
    coord_files: list
    todo: list


@dataclass
class _Done:
    """One micrograph picked and its coordinate file written."""

    name: str
    particles: int
    seconds: float
    warnings: tuple = ()
    capped: int = 0
    vetoed: int = 0
    repicked: int = 0


@dataclass
class _Skipped:
    """One micrograph that could not be picked; ``reason`` names the file."""

    name: str
    path: str
    reason: str


class _NoJobDir(OSError):
    """The output directory cannot be created, so no exit marker can be written either."""


def run_job(
    opts: JobOptions,
    pick_fn: PickFunction | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run the picking job; return 0 (success), 1 (failure) or 2 (aborted), RELION's exit modes.

    Under an MPI launcher with several ranks (see :func:`relion_pixer.parallel.mpi_world`) every rank runs this:
    rank 0 reads the input and sends the micrographs still to pick to all ranks, each rank picks every N-th of them
    (with ``opts.workers`` worker processes of its own), and rank 0 writes ``autopick.star``, the output nodes and
    the exit marker once every rank has reported. A rank that fails makes the job fail, with its reason in run.err.

    Parameters
    ----------
    opts : JobOptions
        From :func:`parse_args`.
    pick_fn : callable, optional
        ``pick_fn(image, angpix, diameter_A, params) -> PickResult``. Default: load the networks
        (``--model`` or the shipped weights) and run :func:`relion_pixer.pipeline.pick_micrograph`. Tests inject
        a cheap one (with worker processes it must be picklable: a module-level function or class).
    out, err : text streams
        Default ``sys.stdout`` / ``sys.stderr`` (RELION's run.out / run.err).
    """
    log = _Log(out or sys.stdout, err or sys.stderr)
    odir = opts.o if opts.o.endswith("/") else opts.o + "/"
    job_dir = Path(odir)
    control = _control(opts)
    try:
        world = parallel.mpi_world()
    except parallel.MPIError as exc:
        if parallel.launcher_rank() == 0:
            log.error(str(exc))
            with contextlib.suppress(OSError):
                relion.clear_exit_markers(control)
                relion.write_exit_marker(control, "failure")
        return 1
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, relion.raise_terminated)
    try:
        with _cpu_precision(opts.precision):
            return _run(opts, pick_fn, log, odir, job_dir, world)
    except _NoJobDir as exc:
        log.error(str(exc))
        if world.leader and control != job_dir:  # RELION watches that directory, which may still take the marker
            _mark(control, "failure", log)
        return 1
    except (KeyboardInterrupt, relion.Terminated) as exc:
        log.error(f"stopped by {relion.stopped_by(exc)}; finished micrographs are kept, run the job again to "
                  "continue")
        if world.leader:
            _mark(control, "aborted", log)
        return 2
    except (UsageError, io.StarError, io.MicrographError, ValueError, OSError, RuntimeError) as exc:
        log.error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        if world.leader:
            _mark(control, "failure", log)
        return 1
    except Exception as exc:  # noqa: BLE001 - the marker must tell RELION whatever happened
        log.error(f"{type(exc).__name__}: {exc}")
        if world.leader:
            _mark(control, "failure", log)
        raise
    finally:
        if world.size > 1:
            # no rank leaves before rank 0 has written the coordinate list and the exit marker: the MPI launcher
            # stops every rank as soon as one exits with an error
            with contextlib.suppress(KeyboardInterrupt, relion.Terminated):
                parallel.wait_for_all(world)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _control(opts: JobOptions) -> Path:
    """The directory of RELION's exit markers and of ``RELION_JOB_ABORT_NOW``: ``--pipeline_control``, else the job
    directory (RELION passes the same directory for both; its own programs write their markers in the former)."""
    return Path(opts.pipeline_control or opts.o)


def _mark(control: Path, status: str, log: _Log) -> None:
    """RELION's exit marker after an error; when even that cannot be written (a full disk, a directory gone
    read-only), run.err says so instead of a second traceback. An abort also removes ``RELION_JOB_ABORT_NOW``, as
    an External job must: left there, it would stop every later run of the job at once."""
    try:
        relion.write_exit_marker(control, status)
    except OSError as exc:
        log.error(f"cannot write RELION_JOB_EXIT_{status.upper()} in {control} ({exc.strerror or exc})")
    if status == "aborted":
        with contextlib.suppress(OSError):
            os.unlink(control / relion.ABORT_NOW)


def _device_words(device: str) -> str:
    """``device`` for run.out; on the CPU with the precision the networks run at (``cpu (bfloat16)``)."""
    if device != "cpu":
        return device
    from relion_pixer.models import cpu_precision

    return f"cpu ({cpu_precision()})"


def _cpu_precision(precision: str | None):
    """:func:`relion_pixer.models.using_cpu_precision` (which imports torch) where a precision is given."""
    if precision is None:
        return contextlib.nullcontext()
    from relion_pixer import models as pixer_models

    return pixer_models.using_cpu_precision(precision)


def _start(opts: JobOptions, log: _Log, odir: str, job_dir: Path) -> _Plan:
    """Rank 0's start: the output directory, stale markers and temporary files, then what is left to pick."""
    try:
        job_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _NoJobDir(f"cannot create the output directory {odir} ({exc.strerror or exc})") from None
    try:  # a directory that exists but takes no files (permissions, read-only or immutable): say so before any work
        fd, probe = tempfile.mkstemp(dir=job_dir, prefix=".pixer_probe.", suffix=io.TMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
        relion.clear_exit_markers(job_dir)
    except OSError as exc:
        raise _NoJobDir(f"cannot write in the output directory {odir} ({exc.strerror or exc})") from None
    control = _control(opts)
    if control != job_dir:
        try:
            control.mkdir(parents=True, exist_ok=True)
            relion.clear_exit_markers(control)
        except OSError as exc:
            raise _NoJobDir(f"cannot write in the pipeline control directory {control} "
                            f"({exc.strerror or exc})") from None
    _clean_temp_files(job_dir)
    for w in opts.warnings:
        log.warn(w)

    version = opts.relion_version or relion.detect_relion_version(Path.cwd()) or 5
    suffix = "_pixer.star" if version == 3 else "_autopick.star"
    entries = _unique(_entries(opts, log), log)
    _check_header_angpix(entries, log)
    coord_files = [relion.coordinate_file_name(odir, e.name, suffix) for e in entries]
    if version == 3:
        _warn_parent_names(entries, coord_files, odir, suffix, log)
    seen: dict[str, str] = {}
    for e, c in zip(entries, coord_files):
        if c in seen and seen[c] != e.name:
            raise UsageError(f"micrographs {seen[c]} and {e.name} would both write {c}: rename one of them")
        seen[c] = e.name
    todo = [(e, c) for e, c in zip(entries, coord_files) if not Path(c).exists()]
    done_before = len(entries) - len(todo)
    if opts.strict:
        # the stages before picking (size, spacing, adapt) skip what they cannot read: with strict, a missing file or
        # a broken header fails the job before them (a header read each), not after minutes of adaptation
        for e, _ in todo:
            try:
                io.read_header_angpix(e.path)
            except io.MicrographError as exc:
                raise io.MicrographError(exc.path, f"{exc.reason} (--strict: stopping before any micrograph is "
                                                   "picked)") from None

    known = sorted({round(e.angpix, 4) for e, _ in todo if e.angpix})
    if len(known) > 1:
        log.warn(f"the micrographs have {len(known)} different pixel sizes ({', '.join(f'{a:g}' for a in known)} A/px); "
                 "each micrograph is resampled with its own pixel size, so the picks are consistent")

    source = opts.in_mics or f"{len(entries)} micrograph file(s)"
    log.info(f" relion_pixer {__version__}: PIXER picking, particle diameter {opts.particle_diameter:g} A, "
             f"RELION {'3.1' if version == 3 else version} output")
    log.info(f" + {len(entries)} micrographs in {source}: {len(todo)} to pick"
             + (f", {done_before} already picked (continuing)" if done_before else ""))
    return _Plan(version, relion.star_version(version), suffix, entries, coord_files, todo)


def _stopped(exc: BaseException, outcome: _Outcome, share, world: parallel.World, log: _Log) -> _Outcome:
    """A signal (a queue system's SIGTERM, Ctrl-C) stopped this rank: the outcome is aborted (once said in run.err),
    and rank 0 hands out no more micrographs (another rank cannot tell it safely here: the signal may have come in
    the middle of asking). Returns the outcome."""
    if not outcome.aborted:
        log.error(f"stopped by {relion.stopped_by(exc)}; finished micrographs are kept and listed, run the job "
                  "again to continue")
    outcome.aborted = True
    if world.size > 1 and world.leader:
        share.stop()
    return outcome


def _warn_parent_names(entries, coord_files, odir: str, suffix: str, log: _Log) -> None:
    """RELION 3.1's Extract finds a micrograph's coordinates at the job directory + its name (outside
    ``Type/jobNNN/``) with the suffix, ``..`` included; the job keeps its files inside the job directory, so run.err
    says where RELION 3.1 will look in vain (RELION 4 and 5 read the paths from ``autopick.star``)."""
    parents = [(e.name, c) for e, c in zip(entries, coord_files)
               if not relion.decompose_pipeline_filename(e.name)[1] and ".." in PurePosixPath(e.name).parts]
    if parents:
        name, written = parents[0]
        looked = odir + relion.without_extension(name) + suffix
        log.warn(f"{len(parents)} micrograph name(s) go up a directory ('..', e.g. {name}): RELION 3.1's Extract looks "
                 f"for their coordinates at the job directory + the name ({looked}), outside the job directory, where "
                 f"this job does not write; they are in it ({written}). Give Extract micrographs named inside the "
                 "project, or use RELION 4 or 5")


def _run(opts: JobOptions, pick_fn: PickFunction | None, log: _Log, odir: str, job_dir: Path,
         world: parallel.World = parallel.World()) -> int:
    plan, problem, networks = None, None, None
    diameter, model = opts.particle_diameter, opts.model
    if world.leader:
        try:
            plan = _start(opts, log, odir, job_dir)
            todo_names = [e.name for e, _ in plan.todo]
            todo = set(todo_names)
            kept_names = [e.name for e in plan.entries if e.name not in todo]
            picked_before = len(kept_names)
            earlier = _earlier_picking(job_dir) if picked_before else None
            _note_settings(earlier, opts, kept_names, len(plan.todo), log)
            if opts.write_maps and picked_before and plan.todo:
                log.info(f" + write_maps: pictures and maps for the {len(plan.todo)} micrograph(s) picked now; the "
                         f"{picked_before} picked before keep what their run wrote")
            networks = _size_models(opts, pick_fn, world) if plan.todo else None  # the checks before picking
            if plan.todo and networks is not None:
                _check_contrast(plan.entries, opts, networks, log, job_dir)
            if plan.todo and opts.estimate_size:
                diameter = _particle_size(plan.entries, opts, networks, log, job_dir)
            spaced = False
            if plan.todo and opts.check_spacing:
                checked = _pick_spacing(plan.entries, opts, diameter, networks, log, job_dir)
                spaced, diameter = checked < diameter, checked
            if plan.todo and opts.adapt:
                pick_fn, model, diameter = _adapted(plan, opts, diameter, networks, pick_fn, log, job_dir, spaced)
            if plan.todo:
                _note_picking(job_dir, opts, diameter, model, earlier, kept_names, todo_names, log)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after telling the other ranks
            problem = exc
    elif pick_fn is None and opts.workers == 1 and not opts.adapt and not opts.gpu:
        # the other ranks load their networks while rank 0 reads the input and measures the particle size, so
        # that all ranks start picking together (a failure here, a CUDA device asked for and absent among them, is
        # reported by rank 0; raised here, it would skip the barrier below and leave rank 0 waiting for ever)
        try:
            if _resolve_device(opts.device) == "cpu":
                networks = (_load_networks(opts, "cpu"), "cpu")
        except Exception:  # noqa: BLE001
            networks = None
    if world.size > 1:
        parallel.wait_for_all(world)  # a polled barrier: MPI's blocking bcast would busy-wait on a core
        plan, diameter, model = world.comm.bcast((None, diameter, model) if problem is not None
                                                 else (plan, diameter, model), root=0)
        if world.leader and problem is None:
            log.info(f" + {world.size} MPI ranks share the micrographs")
    if model != opts.model:
        networks = None  # adapted: every process loads the adapted file
    opts = dataclasses.replace(opts, particle_diameter=diameter, model=model)
    if problem is not None:
        raise problem
    if plan is None:
        return 1  # another rank: rank 0 reports the bad input and writes the marker

    # under MPI the ranks take the micrographs one at a time as they finish (rank 0 hands them out)
    share = parallel.SharedTasks(world, plan.todo) if world.size > 1 else plan.todo
    outcome = _Outcome()
    t0 = time.perf_counter()
    if share:
        try:
            _pick_share(share, opts, plan, pick_fn, log, job_dir, outcome, world, networks)
        except (KeyboardInterrupt, relion.Terminated) as exc:
            # a queue system's SIGTERM or Ctrl-C: the coordinate files are written atomically, so every one that
            # exists is finished; list them below as after RELION_JOB_ABORT_NOW
            _stopped(exc, outcome, share, world, log)
            if world.size == 1:
                _clean_temp_files(job_dir)
        except Exception as exc:  # noqa: BLE001 - one rank's failure is reported by rank 0, after the others finish
            if world.size == 1:
                _clean_temp_files(job_dir)  # a dead worker's pool stops the other workers, perhaps mid-write
                if not isinstance(exc, parallel.WorkerDied):
                    raise
                outcome.fatal = str(exc)  # the finished micrographs are listed below, as after an abort
            else:
                first = str(exc).splitlines()[0] if str(exc) else ""
                if not isinstance(exc, (UsageError, io.StarError, io.MicrographError, OSError, RuntimeError)) \
                        or not first:
                    first = f"{type(exc).__name__}: {first}"
                outcome.fatal = f"MPI rank {world.rank} of {world.size} failed: {first}"
    outcome.wall = time.perf_counter() - t0

    if world.size > 1:
        # a signal while this rank waits for the others (every rank passes here as it finishes) stops the job as it
        # would while picking, and the rank still takes part in the gather
        outcomes = parallel.gather_when_all_done(world, outcome, stops=(KeyboardInterrupt, relion.Terminated),
                                                 on_stop=lambda exc: _stopped(exc, outcome, share, world, log))
        share.close()  # every rank has stopped asking
        if not world.leader:
            return 2 if outcome.aborted else 1 if outcome.fatal else 0
        outcome = _merge(outcomes)
        _clean_temp_files(job_dir)  # a rank stopped by a signal may have left one

    # the coordinate list and the output nodes, also after an abort or a fatal error, so that finished work is
    # usable; none when the job fails with nothing finished
    version = plan.version
    listed = [(e.name, c) for e, c in zip(plan.entries, plan.coord_files) if Path(c).exists()]
    failing = outcome.aborted or outcome.fatal is not None or bool(plan.todo and outcome.picked == 0)
    if listed or not failing:
        io.write_coordinate_files_star(job_dir / "autopick.star", [n for n, _ in listed], [c for _, c in listed],
                                       plan.star_version)
        if version == 3:
            nodes = []
            if opts.in_mics:
                relion.write_coords_suffix(job_dir, opts.in_mics, "pixer")
                nodes.append((odir + "coords_suffix_pixer.star", relion.NODE_MIC_COORDS_31))
        else:
            nodes = [(odir + "autopick.star", relion.COORDS_NODE_LABEL[version])]
            if opts.adapt:
                from relion_pixer import adapt

                if (job_dir / adapt.MODEL_FILE).is_file():  # the adapted networks: a model later jobs can pick with
                    nodes.append((odir + adapt.MODEL_FILE, relion.MODEL_NODE_LABEL))
        if nodes:
            relion.write_output_nodes(job_dir, nodes, version)

    total_particles = sum(_count_rows(c) for _, c in listed)
    _summary(log, outcome, len(plan.entries), listed, total_particles, odir)

    control = _control(opts)
    if outcome.aborted:
        _mark(control, "aborted", log)
        log.info(" exiting with an abort ...")
        return 2
    if outcome.fatal is not None:
        for line in outcome.fatal.splitlines():
            log.error(line)
        relion.write_exit_marker(control, "failure")
        return 1
    if plan.todo and outcome.picked == 0:
        if not listed:
            log.error(f"none of the {len(plan.todo)} micrographs could be picked (reasons above)")
            relion.write_exit_marker(control, "failure")
            return 1
        # a Continue (a Schemes loop) whose only new micrographs cannot be picked: the earlier picks stand, and a
        # failure here would stop the Scheme at every later run until the bad micrographs leave the input
        log.warn(f"none of the {len(plan.todo)} micrograph(s) left to pick could be picked (reasons above); the job "
                 f"lists the {len(listed)} picked before (strict Yes: fail instead)")
    relion.write_exit_marker(control, "success")
    return 0


#: File in the job directory that keeps the size estimate, so that Continue picks at the same size.
SIZE_FILE = "pixer_size.json"
#: File in the job directory that keeps the pick-spacing check (``check_spacing Yes``), so that Continue picks at the
#: same size.
SPACING_FILE = "pixer_spacing.json"
#: File in the job directory that keeps the contrast check, so that a Continue (a Schemes loop) does not redo it.
CONTRAST_FILE = "pixer_contrast.json"
#: The job warns when the estimated and the given diameter differ by more than this fraction.
SIZE_WARN_FRACTION = 0.3


def _pick_params(opts: JobOptions, device: str = "cpu") -> PickParams:
    """The picking settings of the job's options."""
    return PickParams(threshold=opts.threshold, max_particles=opts.max_particles, min_distance_A=opts.min_distance,
                      margin_A=opts.margin, map_threshold=opts.map_threshold, map_relative=opts.map_relative,
                      map_odds=opts.map_odds, device=device, batch_size=opts.batch_size, repick=opts.crowded)


def _adapted(plan: _Plan, opts: JobOptions, diameter: float, networks, pick_fn: PickFunction | None, log: _Log,
             job_dir: Path, spaced: bool = False):
    """``adapt Yes`` on rank 0 (:func:`relion_pixer.adapt.for_job`), at the diameter the job picks at: the pick
    function, the model file every rank and worker then picks with (the adapted networks' file, or the job's own
    model when the guard reverted) and the diameter to pick at (measured again by kept adapted networks when the job
    estimates the size and :attr:`relion_pixer.adapt.AdaptConfig.reestimate` is on; not when the pick-spacing check
    shrank it, ``spaced``)."""
    from relion_pixer import adapt

    if networks is None:
        log.warn("adapt Yes needs the networks, and this run picks without them: not adapting")
        return pick_fn, opts.model, diameter
    general, device = networks
    given = opts.particle_diameter if opts.estimate_size and not spaced else None
    chosen, diameter = adapt.for_job(plan.entries, diameter, opts.invert, opts.model, general,
                                     _pick_params(opts, device), job_dir, log.info, log.warn, given_A=given,
                                     stop=lambda: relion.abort_requested(_control(opts)))
    if chosen is general:
        return pick_fn, opts.model, diameter
    if pick_fn is not None:  # a stand-in picker that brought its own networks
        return adapt.pick_with(chosen), opts.model, diameter
    return None, str(job_dir / adapt.MODEL_FILE), diameter


def _size_models(opts: JobOptions, pick_fn: PickFunction | None, world: parallel.World = parallel.World()):
    """``(models, device)`` for the checks before picking (contrast, size estimate, spacing, adapt): the default
    picker's networks, or the shipped (or ``--model``) ones on the device rank 0's first worker picks on (``--device``,
    ``--gpu``: :func:`_devices`, whose warnings the picking gives); None for a stand-in picker without networks (the
    checks are skipped and the diameter given is used)."""
    if opts.threads:  # the checks run here, before picking: j bounds them too
        import torch

        torch.set_num_threads(opts.threads)
    if pick_fn is not None:
        models = getattr(pick_fn, "models", None)
        return None if models is None else (models, getattr(pick_fn, "device", "cpu"))
    device = _devices(opts, world, max(1, opts.workers), _Log(_stdio.StringIO(), _stdio.StringIO()))[0]
    _use_device(device)
    return _load_networks(opts, device), device


def _kept(path: Path, key: str, value: float, fields: tuple[str, ...]) -> dict | None:
    """``fields`` (as floats) of the JSON a first run of the job kept in ``path``, when its ``key`` equals ``value``;
    None when the file is absent, unreadable, incomplete or made for another value."""
    try:
        kept = json.loads(path.read_text())
        if float(kept[key]) != float(value):
            return None
        return {f: float(kept[f]) for f in fields}
    except (OSError, ValueError, KeyError, TypeError):
        return None


#: What the stages before picking say when no micrograph of the job could be read.
_NONE_READ = "no micrograph of the job could be read (the reasons are listed at the end of run.out)"


def _check_contrast(entries, opts: JobOptions, models_device, log: _Log, job_dir: Path) -> None:
    """Say in run.out how sure the networks are of particles in the job's first micrographs as given and negated
    (:func:`relion_pixer.size.check_contrast`, at the diameter given), and warn in run.err when the micrographs look
    contrast-inverted: particles lighter than the background where the networks expect them dark. Kept in
    :data:`CONTRAST_FILE` for Continue (the same diameter and ``invert``), which says it again without measuring."""
    from relion_pixer import size

    models, device = models_device
    path = job_dir / CONTRAST_FILE
    kept = _kept(path, "given_A", opts.particle_diameter, ("as_given", "negated", "micrographs", "invert"))
    if kept is not None and bool(kept["invert"]) == opts.invert:
        check = size.Contrast(kept["as_given"], kept["negated"], int(kept["micrographs"]))
        when = f"kept from the first run in {CONTRAST_FILE}"
    else:
        t0 = time.perf_counter()
        check = size.check_contrast(size.first_micrographs(entries, opts.invert), opts.particle_diameter, models,
                                    device)
        when = f"{time.perf_counter() - t0:.1f} s"
        if check.micrographs:
            with io.atomic_write(path) as fh:
                json.dump({"given_A": float(opts.particle_diameter), "invert": opts.invert, **check._asdict()}, fh,
                          indent=1)
    if not check.micrographs:
        return  # nothing could be read or segmented: the size estimate and the picking say why
    how = "as given" + (" (inverted: invert Yes)" if opts.invert else "")
    log.info(f" + contrast: the networks' confidence in particles {check.as_given:.1f} (log-odds) {how}, "
             f"{check.negated:.1f} with the contrast negated ({check.micrographs} micrograph(s), {when})")
    if check.inverted:
        log.warn(f"the particles look lighter than the background: the networks see particles in the first "
                 f"micrograph(s) with the contrast negated (confidence {check.negated:.1f}) far better than as "
                 f"{'inverted by invert Yes' if opts.invert else 'given'} ({check.as_given:.1f}); they expect dark "
                 f"particles, as in cryo-EM. If the particles are light (negative stain, an inverted export), set "
                 f"invert {'No' if opts.invert else 'Yes'}")


def _particle_size(entries, opts: JobOptions, models_device, log: _Log, job_dir: Path) -> float:
    """The diameter to pick at (:func:`relion_pixer.size.picking_diameter`) from the size estimate on the job's first
    micrographs, kept in :data:`SIZE_FILE` for Continue; the given diameter when no micrograph can be read or none
    gives the networks anything to see, or when the estimate would take the diameter past what the first micrograph
    allows (:func:`relion_pixer.preprocess.check_particle_width`) while the diameter given is within it."""
    from relion_pixer import size

    if models_device is None:
        return opts.particle_diameter
    models, device = models_device
    path = job_dir / SIZE_FILE
    kept = _kept(path, "given_A", opts.particle_diameter, ("estimate_A", "picking_A"))
    if kept is not None:
        log.info(f" + particle size from the data: {kept['estimate_A']:.0f} A, picking at {kept['picking_A']:.0f} A "
                 f"(kept from the first run in {SIZE_FILE}; diameter given {opts.particle_diameter:g} A)")
        return kept["picking_A"]
    sample: list[str] = []  # the micrographs read; the estimate reads them one at a time
    first: list[tuple] = []  # the first one's shape and pixel size

    def micrographs():
        for image, angpix in size.first_micrographs(entries, opts.invert, sample):
            if not first:
                first.append((np.shape(image), angpix))
            yield image, angpix

    t0 = time.perf_counter()
    est = size.estimate_diameter(micrographs(), opts.particle_diameter, models, device)
    if not sample:
        log.info(f" + particle size from the data: not measured: {_NONE_READ}; picking at the diameter given")
        return opts.particle_diameter
    if not est.measured:
        log.info(f" + particle size from the data: not measured: none of the {len(est.factors)} scales tried "
                 f"({min(est.factors):.2f}x-{max(est.factors):.2f}x the diameter given, {opts.particle_diameter:g} A) "
                 f"gave the networks a particle to see on {len(sample)} micrograph(s); picking at the diameter given")
        return opts.particle_diameter
    picking_A = size.picking_diameter(est)
    beyond = _beyond_limits(picking_A, opts.particle_diameter, *first[0])
    if beyond:
        log.info(f" + particle size from the data: {est.diameter_A:.0f} A would take the picking diameter to "
                 f"{picking_A:.0f} A, where {beyond}; picking at the diameter given ({opts.particle_diameter:g} A)")
        return opts.particle_diameter
    how = ("at the diameter given (the estimate is reported, not used: see docs/benchmarks.md)"
           if size.ESTIMATE_WEIGHT == 0 else
           f"at {picking_A:.0f} A, between the two (estimate_size No would pick at the diameter given)")
    log.info(f" + particle size from the data: {est.diameter_A:.0f} A, {est.ratio:.2f}x the diameter given "
             f"({opts.particle_diameter:g} A; measured on {len(sample)} micrograph(s) in "
             f"{time.perf_counter() - t0:.1f} s): picking {how}")
    if abs(est.ratio - 1.0) > SIZE_WARN_FRACTION or est.at_edge:
        log.warn(f"the particles look {est.diameter_A:.0f} A across to the networks, {est.ratio:.2f}x the diameter "
                 f"given ({opts.particle_diameter:g} A)" + (", at the end of the range searched" if est.at_edge else "")
                 + f"; picking at {picking_A:.0f} A: check --particle_diameter and the pixel size")
    with io.atomic_write(path) as fh:
        json.dump(est.record(picking_A), fh, indent=1)
    return picking_A


def _beyond_limits(picking_A: float, given_A: float, shape, angpix: float) -> str | None:
    """Why a micrograph of ``shape`` at ``angpix`` cannot be picked at ``picking_A`` when it can at ``given_A``
    (:func:`relion_pixer.preprocess.check_particle_width`); None when it can, or cannot at ``given_A`` either (the
    job then reports the diameter given)."""
    from relion_pixer import preprocess

    try:
        preprocess.check_particle_width(given_A, angpix, shape)
    except ValueError:
        return None
    try:
        preprocess.check_particle_width(picking_A, angpix, shape)
    except ValueError as exc:
        return str(exc).split(":")[0]
    return None


#: File in the job directory that keeps the diameter the job picks at, the one given and the networks it picks with,
#: so that Continue can say when it picks the rest otherwise (the diameter given, the size estimate, the spacing
#: check, ``adapt`` or ``model`` changed).
PICKING_FILE = "pixer_picking.json"


def _networks_id(model: str | None) -> str:
    """The networks a run picks with: the model file's name and the start of its SHA-1 (the shipped weights when
    ``model`` is None); a file that cannot be read is named alone."""
    import hashlib

    from relion_pixer.models import shipped_weights

    path = Path(model) if model else shipped_weights()
    try:
        return f"{path.name} ({hashlib.sha1(path.read_bytes()).hexdigest()[:12]})"
    except OSError:
        return path.name


#: The options that decide a micrograph's picks, kept in :data:`PICKING_FILE`: a rerun that keeps the coordinate files
#: of an earlier run says which of them differ.
PICK_SETTINGS = ("in_mics", "particle_diameter", "threshold", "map_threshold", "map_relative", "map_odds",
                 "max_particles", "min_distance", "margin", "angpix", "model", "estimate_size", "check_spacing",
                 "crowded", "adapt", "invert")


#: What a rerun that keeps an earlier run's coordinate files advises, when they were picked otherwise than it picks.
_ADVICE = "run a new job, or delete this job's coordinate files first"


def _pick_settings(opts: JobOptions) -> dict:
    return {key: getattr(opts, key) for key in PICK_SETTINGS}


def _earlier_picking(job_dir: Path) -> dict | None:
    """What earlier runs of the job picked with (:data:`PICKING_FILE`: the last run's diameters picked at and given,
    networks and settings, and under ``runs`` each run's with the micrographs it picked; for a job begun before that
    file, its :data:`SIZE_FILE`'s diameters), or None."""
    for name in (PICKING_FILE, SIZE_FILE):
        try:
            kept = json.loads((job_dir / name).read_text())
            out = _picking_record(kept)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        runs = kept.get("runs") if name == PICKING_FILE else None
        try:
            out["runs"] = [dict(_picking_record(r), micrographs=[str(m) for m in r["micrographs"]]) for r in runs]
        except (ValueError, KeyError, TypeError, AttributeError):
            out["runs"] = None  # a file written before runs were kept: every kept micrograph is the last run's
        return out
    return None


def _picking_record(kept: dict) -> dict:
    """One run's record of :data:`PICKING_FILE` (or a :data:`SIZE_FILE`) as the notes below read it."""
    settings = kept.get("settings")
    return {"given_A": float(kept["given_A"]), "picking_A": float(kept["picking_A"]),
            "networks": str(kept.get("networks") or "") or None,
            "settings": settings if isinstance(settings, dict) else None}


def _picked_by(earlier: dict, kept_names: list[str]) -> list[tuple[dict, list[str]]]:
    """``(run record, its kept micrographs)`` for each earlier run that picked some of the kept micrographs, in run
    order: a micrograph is the last run's that lists it, and one no run lists (picked before runs were kept) the last
    run's."""
    runs = earlier.get("runs") or [dict({k: earlier[k] for k in ("given_A", "picking_A", "networks", "settings")},
                                        micrographs=[])]
    whose = {name: k for k, run in enumerate(runs) for name in run["micrographs"]}
    names: list[list[str]] = [[] for _ in runs]
    for name in kept_names:
        names[whose.get(name, len(runs) - 1)].append(name)
    return [(run, mine) for run, mine in zip(runs, names) if mine]


def _note_settings(earlier: dict | None, opts: JobOptions, kept_names: list[str], left: int, log: _Log) -> None:
    """Warn when micrographs earlier runs of the job picked (their coordinate files are kept) were picked with other
    settings than this run's (:data:`PICK_SETTINGS`; the diameter given only when nothing is left to pick: otherwise
    :func:`_note_picking` compares the diameters picked at), each run's micrographs with its own settings."""
    if earlier is None or not kept_names:
        return
    now = _pick_settings(opts)
    parts = []
    for run, mine in _picked_by(earlier, kept_names):
        n = len(mine)
        if not run.get("settings"):
            continue
        changed = [f"{key} {_shown(run['settings'][key])} -> {_shown(now[key])}" for key in PICK_SETTINGS
                   if key in run["settings"] and run["settings"][key] != now[key]
                   and not (key == "particle_diameter" and left)]
        if changed:
            parts.append(f"{n} micrograph(s) with other settings ({', '.join(changed)})")
    if not parts:
        return
    what = (f"{'earlier runs' if len(parts) > 1 else 'an earlier run'} of this job picked {' and '.join(parts)}; "
            "their coordinate files are kept")
    if left:
        log.warn(f"{what}, and this run picks the other {left} with these. To pick them all with one, {_ADVICE}")
    else:
        log.warn(f"{what}, and nothing is picked again. To pick them with these settings, {_ADVICE}")


def _shown(value) -> str:
    """A setting as run.err shows it: Yes / No, "default" for one left to the job, numbers without trailing zeros."""
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if value is None:
        return "default"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _note_picking(job_dir: Path, opts: JobOptions, picking_A: float, model: str | None, earlier: dict | None,
                  kept_names: list[str], todo_names: list[str], log: _Log) -> None:
    """Warn when earlier runs of the job picked the kept micrographs at another diameter, or with other networks, than
    this run will pick the rest (``todo_names``) with, and keep this run's record in :data:`PICKING_FILE`, after the
    earlier runs' (a run with the same record as the last one joins it)."""
    given_A = opts.particle_diameter
    networks = _networks_id(model)
    groups = _picked_by(earlier, kept_names) if earlier is not None and kept_names else []
    for run, mine in groups:
        n = len(mine)
        if abs(run["picking_A"] - picking_A) > 0.5:
            log.warn(f"{n} micrograph(s) were picked by an earlier run of this job at {run['picking_A']:.0f} A "
                     f"(diameter given {run['given_A']:g} A); this run picks the rest at {picking_A:.0f} A (diameter "
                     f"given {given_A:g} A). To pick them all at one size, {_ADVICE}")
        if run.get("networks") and run["networks"] != networks:
            log.warn(f"{n} micrograph(s) were picked by an earlier run of this job with other networks "
                     f"({run['networks']}); this run picks the rest with {networks}. To pick them all with one, "
                     f"{_ADVICE}")
    this = {"given_A": float(given_A), "picking_A": float(picking_A), "networks": networks,
            "settings": _pick_settings(opts)}
    # the earlier runs with the kept micrographs each picked (those picked again now are this run's), then this run
    runs = [dict(run, micrographs=mine) for run, mine in groups]
    if runs and all(runs[-1][k] == this[k] for k in this):
        runs[-1]["micrographs"] += list(todo_names)
    else:
        runs.append(dict(this, micrographs=list(todo_names)))
    try:
        with io.atomic_write(job_dir / PICKING_FILE) as fh:
            json.dump({**this, "runs": runs}, fh, indent=1)
    except OSError as exc:
        log.warn(f"cannot write {job_dir / PICKING_FILE} ({exc.strerror or exc}): a later Continue cannot tell what "
                 "this run picked with")


def _pick_spacing(entries, opts: JobOptions, diameter_A: float, models_device, log: _Log, job_dir: Path) -> float:
    """The diameter to pick at after the pick-spacing check (:func:`relion_pixer.size.check_spacing`) on the job's
    first micrographs at ``diameter_A``, kept in :data:`SPACING_FILE` for Continue."""
    from relion_pixer import size

    if models_device is None:
        return diameter_A
    models, device = models_device
    path = job_dir / SPACING_FILE
    kept = _kept(path, "checked_A", diameter_A, ("picking_A",))
    if kept is not None:
        log.info(f" + pick spacing: picking at {kept['picking_A']:.0f} A (kept from the first run in {SPACING_FILE})")
        return kept["picking_A"]
    t0 = time.perf_counter()
    sample: list[str] = []
    check = size.check_spacing(size.first_micrographs(entries, opts.invert, sample), diameter_A, models, device,
                               repick=size.spacing_repick(opts.crowded))
    if not sample:
        log.info(f" + pick spacing: not checked: {_NONE_READ}; picking at {diameter_A:.0f} A")
        return diameter_A
    if check.picks < size.MIN_SPACING_PICKS:
        log.info(f" + pick spacing: {check.picks} picks with a neighbour on the first micrographs, too few to "
                 f"measure it; picking at {diameter_A:.0f} A")
        return diameter_A
    log.info(f" + pick spacing: the median pick at {diameter_A:.0f} A has its nearest neighbour {check.spacing_A:.0f} A "
             f"away ({check.ratio:.2f} diameters, {check.picks} picks, {time.perf_counter() - t0:.1f} s): picking at "
             f"{check.diameter_A:.0f} A" + (" (crowded: touching particles)" if check.diameter_A < diameter_A else ""))
    with io.atomic_write(path) as fh:
        json.dump({"checked_A": float(diameter_A), "spacing_A": check.spacing_A, "picks": check.picks,
                   "picking_A": check.diameter_A}, fh, indent=1)
    return check.diameter_A


def _merge(outcomes: list[_Outcome]) -> _Outcome:
    """The job's outcome from every rank's."""
    fatal = [o.fatal for o in outcomes if o.fatal is not None]
    return _Outcome(
        picked=sum(o.picked for o in outcomes),
        particles=sum(o.particles for o in outcomes),
        seconds=sum(o.seconds for o in outcomes),
        failed=[f for o in outcomes for f in o.failed],
        aborted=any(o.aborted for o in outcomes),
        fatal="\n".join(fatal) if fatal else None,
        wall=max(o.wall for o in outcomes),
        processes=sum(o.processes for o in outcomes),
        vetoed=sum(o.vetoed for o in outcomes),
        capped=sum(o.capped for o in outcomes),
        repicked=sum(o.repicked for o in outcomes),
    )


def _devices(opts: JobOptions, world: parallel.World, workers: int, log: _Log) -> list[str]:
    """The device of each of this rank's workers (``--device``, ``--gpu``, the rank, the visible devices)."""
    device = _resolve_device(opts.device)
    if device == "cpu":
        if opts.gpu and opts.device != "cpu":
            log.warn(f"--gpu {opts.gpu} is ignored: no CUDA device is available, picking on the CPU")
        return ["cpu"] * workers
    if opts.device.startswith("cuda:"):
        if opts.gpu:
            log.warn(f"--gpu {opts.gpu} is ignored: --device {opts.device} names the device")
        return [device] * workers
    if opts.gpu is None and world.size == 1 and workers == 1:
        return [device] * workers
    import torch

    visible = torch.cuda.device_count()
    try:
        groups = parallel.parse_gpu_ids(opts.gpu)
        return [parallel.device_for(groups, world.rank, w, workers, visible) for w in range(workers)]
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _pick_share(share, opts: JobOptions, plan: _Plan, pick_fn: PickFunction | None, log: _Log, job_dir: Path,
                outcome: _Outcome, world: parallel.World, networks=None) -> None:
    """Pick this rank's micrographs, in this process or in ``opts.workers`` worker processes. ``networks``:
    ``(models, device)`` rank 0 already loaded from ``opts.model`` (for the size estimate), reused when this process
    picks on that device."""
    params = _pick_params(opts)
    workers = min(opts.workers, len(share))
    outcome.processes = workers
    label = f" rank {world.rank}:" if world.size > 1 else ""
    if pick_fn is None:
        devices = _devices(opts, world, workers, log)
    else:
        devices = [opts.device if opts.device != "auto" else "cpu"] * workers
    if workers == 1:
        if opts.threads:
            import torch

            torch.set_num_threads(opts.threads)
        params = dataclasses.replace(params, device=devices[0])
        if pick_fn is None:
            _use_device(devices[0])
            loaded = networks[0] if networks is not None and networks[1] == devices[0] else None
            pick_fn = _default_pick_fn(opts, devices[0], loaded)
            log.info(f"{label} + networks loaded, running on {_device_words(devices[0])}")
        _pick_all(share, opts, params, pick_fn, log, job_dir, outcome, plan, label=label)
        return
    threads = parallel.threads_per_worker(opts.threads, workers)
    if opts.threads and workers > opts.threads:
        log.warn(f"{workers} worker processes with j {opts.threads}: each worker runs one thread, {workers} in all; "
                 f"give j at least the number of workers")
    shown = ", ".join(sorted({_device_words(d) if pick_fn is None else d for d in devices}))
    log.info(f"{label} + {workers} worker processes on {shown}, {threads} thread(s) each")
    counter = multiprocessing.get_context("spawn").Value("i", 0)
    pool = (workers, _worker_init, (opts, params, pick_fn, devices, threads, counter, plan.star_version, plan.suffix))
    _pick_all(share, opts, params, pick_fn, log, job_dir, outcome, plan, label=label, pool=pool)


def _pick_all(share, opts: JobOptions, params: PickParams, pick_fn: PickFunction, log: _Log, job_dir: Path,
              outcome: _Outcome, plan: _Plan, label: str = "", pool: tuple | None = None) -> None:
    """Pick ``share`` in order (``pool`` None) or in worker processes, logging each micrograph as it finishes.

    ``pool`` is ``(workers, initializer, initargs)`` of :func:`relion_pixer.parallel.run_dynamic`. Stops early on
    ``RELION_JOB_ABORT_NOW`` (``outcome.aborted``) and, with ``--strict``, on the first bad micrograph.
    """
    bar = None
    stream = log.out
    if hasattr(stream, "isatty") and stream.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(share), unit="mic", file=stream, leave=False, dynamic_ncols=True)
        log.bar = bar
    width = len(str(len(share)))
    count = 0
    warned: set[str] = set()

    def record(result) -> bool:
        nonlocal count
        count += 1
        if isinstance(result, _Skipped):
            outcome.failed.append((result.name, result.reason.removeprefix(f"{result.path}: ")))
            if opts.strict:
                # with workers, micrographs already being picked still report: the first bad one is the reason;
                # under MPI no rank is handed another micrograph
                outcome.fatal = outcome.fatal or f"{result.reason} (--strict: stopping)"
                if hasattr(share, "stop"):
                    share.stop()
                return False
            log.warn(f"skipping micrograph: {result.reason}")
        else:
            for w in result.warnings:
                if w not in warned:  # a warning about every micrograph alike is given once
                    log.warn(w)
                    warned.add(w)
            outcome.picked += 1
            outcome.particles += result.particles
            outcome.vetoed += result.vetoed
            outcome.capped += result.capped
            outcome.repicked += result.repicked
            outcome.seconds += result.seconds
            log.info(f"{label} [{count:>{width}}/{len(share)}] {result.name}: {result.particles} particles, "
                     f"{result.seconds:.1f} s" + (f" (max_particles {opts.max_particles} cut {result.capped} more "
                                                  "picks)" if result.capped else ""))
        if bar is not None:
            bar.update(1)
        return True

    def abort() -> bool:
        if relion.abort_requested(_control(opts)):
            log.info(f"{label} + {relion.ABORT_NOW} found: stopping after {count} of {len(share)} micrographs")
            outcome.aborted = True
            return True
        return False

    try:
        if pool is None:
            for entry, coord in share:
                if abort() or not record(_pick_one(entry, coord, opts, params, pick_fn, plan.star_version,
                                                   plan.suffix)):
                    return
        else:
            workers, initializer, initargs = pool
            parallel.run_dynamic(share, workers, initializer, initargs, _worker_pick, record, abort)
    finally:
        if bar is not None:
            bar.close()
            log.bar = None


def _pick_one(entry: io.MicrographEntry, coord: str, opts: JobOptions, params: PickParams, pick_fn: PickFunction,
              star_version: int, suffix: str) -> _Done | _Skipped:
    """Read, check and pick one micrograph, then write its coordinate file (atomically) and maps.

    A micrograph that cannot be used (:class:`relion_pixer.io.MicrographError`, or a ``ValueError`` of the
    picker) gives :class:`_Skipped`; anything else (out of memory, a broken model) is raised.
    """
    t0 = time.perf_counter()
    try:
        image, angpix = io.read_entry(entry, opts.invert)
        if angpix is None:
            raise io.MicrographError(entry.path, "no pixel size in the STAR file (_rlnMicrographPixelSize) or the MRC "
                                                 "header; give --angpix")
        preprocess.check_particle_width(opts.particle_diameter, angpix, image.shape)
        try:
            preprocess.check_fits(opts.particle_diameter, angpix, image.shape)
        except ValueError as exc:
            raise io.MicrographError(entry.path, f"{exc}; check --particle_diameter and the pixel size") from None
        result = pick_fn(image, angpix, opts.particle_diameter, params)
        short_A = min(image.shape) * angpix
    except (io.MicrographError, ValueError) as exc:
        reason = str(exc).splitlines()[0]
        if not isinstance(exc, io.MicrographError):
            reason = f"{entry.path}: {reason}"
        return _Skipped(entry.name, str(entry.path), reason)
    xy = np.asarray(result.xy, dtype=np.float64).reshape(-1, 2)
    fom = np.asarray(result.fom, dtype=np.float64).reshape(-1)
    Path(coord).parent.mkdir(parents=True, exist_ok=True)
    base = coord[: -len(suffix)]
    warnings = []
    if opts.margin is not None and 2 * opts.margin >= short_A:
        warnings.append(f"--margin {opts.margin:g} A is at least half the short side of the micrographs "
                        f"({short_A:.0f} A): no pick can lie that far inside")
    if opts.write_maps:
        try:
            _write_maps(base, dataclasses.replace(result, xy=xy, fom=fom), image, angpix, opts)
        except Exception as exc:  # noqa: BLE001 - a picture must never cost the picks
            warnings.append(f"could not write the maps of {entry.name}: {type(exc).__name__}: {exc}")
    io.write_coordinates_star(coord, xy, fom, version=star_version)
    return _Done(entry.name, len(xy), time.perf_counter() - t0, tuple(warnings), int(getattr(result, "capped", 0)),
                 int(getattr(result, "vetoed", 0)), int(getattr(result, "repicked", 0)))


#: State of a worker process, set once by :func:`_worker_init`.
_WORKER: dict = {}


def _worker_init(opts: JobOptions, params: PickParams, pick_fn: PickFunction | None, devices: list[str],
                 threads: int, counter, star_version: int, suffix: str) -> None:
    """Set up one worker process: its index, device, torch threads and its own copy of the networks.

    An error (a missing model file, an unusable device) is kept and raised by every task, so that the job reports
    it as it would without workers.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the job handles it
    parallel.die_with_parent()  # a job killed outright (SIGKILL, out of memory) leaves no workers running
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    device = devices[index % len(devices)]
    _WORKER.update(opts=opts, star_version=star_version, suffix=suffix, error=None, index=index)
    try:
        if pick_fn is None or "torch" in sys.modules:
            import torch

            torch.set_num_threads(threads)
        if pick_fn is None:
            _use_device(device)
            params = dataclasses.replace(params, device=device)
            pick_fn = _default_pick_fn(opts, device)
    except Exception as exc:  # noqa: BLE001 - reported through the first task
        _WORKER["error"] = exc
    _WORKER.update(params=params, pick_fn=pick_fn)


def _worker_pick(entry: io.MicrographEntry, coord: str) -> _Done | _Skipped:
    """One task of a worker process: :func:`_pick_one` with the worker's networks."""
    w = _WORKER
    if w["error"] is not None:
        raise w["error"]
    return _pick_one(entry, coord, w["opts"], w["params"], w["pick_fn"], w["star_version"], w["suffix"])


def _summary(log: _Log, outcome: _Outcome, n_entries: int, listed, total_particles: int, odir: str) -> None:
    if outcome.picked:
        per = outcome.seconds / outcome.picked
        log.info(f" Picked {outcome.particles} particles from {outcome.picked} micrographs in {outcome.seconds:.1f} s "
                 f"({per:.2f} s per micrograph, {60.0 / per if per > 0 else float('inf'):.1f} micrographs per minute)")
        if outcome.processes > 1 and outcome.wall > 0:
            log.info(f" {outcome.processes} processes picked in parallel: {outcome.wall:.1f} s wall-clock, "
                     f"{60.0 * outcome.picked / outcome.wall:.1f} micrographs per minute in all")
        if outcome.repicked:
            log.info(f" The second pass (crowded Yes) found {outcome.repicked} of the {outcome.particles} particles with "
                     "the first picks masked out")
        if outcome.vetoed:
            share = outcome.vetoed / (outcome.particles + outcome.capped + outcome.vetoed)  # of what the map kept
            log.info(f" The classifier dropped {outcome.vetoed} candidate{'s' if outcome.vetoed != 1 else ''} the map "
                     "alone would have kept "
                     f"({100.0 * share:.1f} %): ice, carbon or background it recognised, or, on a protein the weights "
                     "never saw, particles it does not know (threshold 0 keeps them; README, \"When picks look wrong\")")
    if outcome.failed:
        log.info(f" Skipped {len(outcome.failed)} micrograph(s) that could not be picked:")
        for name, reason in outcome.failed:
            log.info(f"    * {name}: {reason}")
        log.warn(f"{len(outcome.failed)} micrograph(s) skipped (listed at the end of run.out); rerun the job "
                 "after fixing them to pick only those")
    if listed:
        log.info(f" Saved list with {len(listed)} coordinate files in: {odir}autopick.star")
    else:
        log.info(" No micrograph has a coordinate file: no autopick.star written")
    avg = total_particles / len(listed) if listed else 0.0
    log.info(f" Total number of particles from {len(listed)} of {n_entries} micrographs is {total_particles} "
             f"(on average {avg:.0f} per micrograph)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``relion_pixer [pick] ...`` and ``external_job.py``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "pick":
        argv = argv[1:]
    leader = parallel.launcher_rank() == 0  # under mpirun every rank parses the same line: rank 0 reports
    if any(a in ("-h", "--help", "-help") for a in argv):
        if leader:
            print(HELP)
        return 0
    try:
        opts = parse_args(argv)
    except UsageError as exc:
        if not leader:
            return 1
        print(f"ERROR: {exc}", file=sys.stderr, flush=True)
        # tell RELION too, when we know the job directory
        parsed = relion.parse_tolerant(argv, SPEC)
        out = parsed.values.get("pipeline_control")
        out = out if isinstance(out, str) and out.strip() else parsed.values.get("o")
        if isinstance(out, str) and out:
            try:
                relion.clear_exit_markers(out)
                relion.write_exit_marker(out, "failure")
            except OSError:
                pass
        else:
            print("Run `relion_pixer --help` for the options.", file=sys.stderr)
        return 1
    return run_job(opts)
