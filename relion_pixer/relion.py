"""The RELION side of the External job contract, checked against RELION's source.

What RELION does (``src/pipeline_jobs.cpp``, ``RelionJob::getCommandsExternalJob`` and ``prepareFinalCommand``,
identical in RELION 3.1, 4.0 and 5.0 apart from the pipeline initialisation):

* It runs ``<exe> --o External/jobNNN/ [--in_movies X] [--in_mics X] [--in_parts X] [--in_coords X] [--in_3dref X]
  [--in_mask X] [--<label> <value>]... --j <threads> <other args>`` from the project directory, with stdout appended to
  ``run.out`` and stderr to ``run.err``. Parameters are ``" --" + label + " " + value``: nothing is quoted, and an empty
  value leaves a bare ``--label``. When the command line contains ``relion_`` (for instance an executable called
  ``relion_pixer``), ``--pipeline_control <outputname>`` is appended.
* Before it starts a job, RELION removes ``RELION_JOB_ABORT_NOW`` and the three exit markers from the job directory
  (``PipeLine::runJob`` in ``src/pipeliner.cpp``). The GUI's abort button touches ``RELION_JOB_ABORT_NOW``.
* It polls the job directory for ``RELION_JOB_EXIT_SUCCESS``, then ``..._FAILURE``, then ``..._ABORTED``
  (``PipeLine::checkProcessCompletion``); names from ``src/pipeline_control.h``. On success it reads
  ``RELION_OUTPUT_NODES.star`` (``PipeLine::getOutputNodesFromStarFile``): block ``data_output_nodes``, columns
  ``_rlnPipeLineNodeName`` and ``_rlnPipeLineNodeTypeLabel`` (RELION 4 / 5; 5 also reads an optional
  ``_rlnPipeLineNodeTypeLabelDepth``) or the integer ``_rlnPipeLineNodeType`` (RELION 3.1).
* Node type of picked coordinates (``src/pipeline_jobs.h``, ``LABEL_AUTOPICK_COORDS``): RELION 5
  ``MicrographCoordsGroup.star.relion.autopick``, RELION 4 ``MicrographsCoords.star.relion.autopick``,
  RELION 3.1 ``NODE_MIC_COORDS`` = 2 for a ``coords_suffix_<name>.star`` file whose content is the micrograph STAR
  file name (the autopick job writes it with ``echo <mics.star> > coords_suffix_autopick.star``); RELION 3.1's
  extraction then looks for ``<dir of the suffix file>/<micrograph path after jobNNN/ without extension>_<name>.star``
  (``Preprocessing::getCoordinateFileName``).
* Coordinate file names (``AutoPicker::getOutputRootName``): ``<odir> + decomposePipelineFileName(mic).post
  .withoutExtension() + "_" + pickname + ".star"``, so ``MotionCorr/job002/Movies/x.mrc`` gives
  ``AutoPick/job008/Movies/x_autopick.star``. ``autopick.star`` (``AutoPicker::generatePDFLogfile``) lists, in input
  order, every micrograph whose coordinate file exists.
* STAR ``# version`` lines: 30001 in RELION 3.1 and 4.0, 50001 in RELION 5 (``CURRENT_MDT_VERSION``). RELION 4's
  ``default_pipeline.star`` says 30001 like RELION 3.1's but has ``_rlnPipeLineProcessTypeLabel`` /
  ``_rlnPipeLineNodeTypeLabel`` columns where 3.1 has the integer ``_rlnPipeLineProcessType`` / ``_rlnPipeLineNodeType``.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping, Sequence

from relion_pixer import io

__all__ = [
    "EXIT_SUCCESS",
    "EXIT_FAILURE",
    "EXIT_ABORTED",
    "ABORT_NOW",
    "Terminated",
    "AbortRequested",
    "stopped_by",
    "raise_terminated",
    "MODEL_NODE_LABEL",
    "OUTPUT_NODES",
    "COORDS_NODE_LABEL",
    "NODE_MIC_COORDS_31",
    "SUPPORTED_VERSIONS",
    "decompose_pipeline_filename",
    "without_extension",
    "coordinate_file_name",
    "detect_relion_version",
    "parse_relion_version",
    "star_version",
    "write_output_nodes",
    "write_coords_suffix",
    "clear_exit_markers",
    "write_exit_marker",
    "abort_requested",
    "ParsedArgs",
    "parse_tolerant",
    "parse_bool",
]

EXIT_SUCCESS = "RELION_JOB_EXIT_SUCCESS"
EXIT_FAILURE = "RELION_JOB_EXIT_FAILURE"
EXIT_ABORTED = "RELION_JOB_EXIT_ABORTED"
ABORT_NOW = "RELION_JOB_ABORT_NOW"
#: Node type label of a relion-pixer model file (a fine-tuning job's, or a picking job's adapted networks): a generic
#: ProcessData node, which RELION 4 / 5 lists for later jobs.
MODEL_NODE_LABEL = "ProcessData.pt.relion_pixer.model"
OUTPUT_NODES = "RELION_OUTPUT_NODES.star"

#: Node type label of a coordinate-file list made by a picker (``LABEL_AUTOPICK_COORDS``), per RELION version.
COORDS_NODE_LABEL = {
    5: "MicrographCoordsGroup.star.relion.autopick",
    4: "MicrographsCoords.star.relion.autopick",
}
#: RELION 3.1's integer node type of a ``coords_suffix`` file (``NODE_MIC_COORDS`` in ``src/pipeline_jobs.h``).
NODE_MIC_COORDS_31 = 2
#: RELION versions whose External job this package speaks to (3 means 3.1: RELION 3.0 has no External job).
SUPPORTED_VERSIONS = (3, 4, 5)


# ----------------------------------------------------------------------------------------------------------------
# file names
# ----------------------------------------------------------------------------------------------------------------


def _is_job_component(fn: str, start: int) -> bool:
    return fn[start : start + 3] == "job" and all(c in "0123456789" for c in fn[start + 3 : start + 6]) and len(
        fn[start + 3 : start + 6]
    ) == 3


def decompose_pipeline_filename(fn: str) -> tuple[str, str, str]:
    """Split ``Type/jobNNN/rest`` into ``("Type/", "jobNNN/", "rest")`` as RELION's ``decomposePipelineFileName``.

    The first ``/jobNNN`` (three or more digits) after a slash wins; a name starting with ``jobNNN/`` is matched
    only when no later slash is followed by one (RELION's search wraps around to the start). A name that is not a
    pipeline file name gives ``("", "", fn)``.
    """
    slash = 0
    starts: list[int] = []
    while True:
        slash = fn.find("/", slash + 1)
        if slash == -1:
            starts.append(-1)  # RELION's npos + 1 wraps to the start of the string
            break
        starts.append(slash)
    for s in starts:
        if _is_job_component(fn, s + 1):
            s2 = fn.find("/", s + 6)
            if s2 == -1:
                s2 = len(fn) - 1
            return fn[: s + 1], fn[s + 1 : s2 + 1], fn[s2 + 1 :]
    return "", "", fn


def without_extension(fn: str) -> str:
    """RELION's ``FileName::withoutExtension``: everything before the last dot."""
    dot = fn.rfind(".")
    return fn if dot == -1 else fn[:dot]


def coordinate_file_name(job_dir: str, micrograph_name: str, suffix: str = "_autopick.star") -> str:
    """Where a picker in ``job_dir`` writes the coordinates of ``micrograph_name``, as RELION names it.

    ``("External/job012/", "MotionCorr/job002/Movies/x.mrc")`` -> ``"External/job012/Movies/x_autopick.star"``.
    A name outside RELION's ``Type/jobNNN/`` layout keeps its relative path, minus any root and ``..`` parts (so
    that an absolute or parent-relative micrograph never writes outside the job directory).
    """
    if not job_dir.endswith("/"):
        job_dir += "/"
    _, jobnr, post = decompose_pipeline_filename(micrograph_name)
    if not jobnr:
        parts = [p for p in PurePosixPath(post.replace("\\", "/")).parts if p not in ("/", "..", ".")]
        post = "/".join(parts)
    return job_dir + without_extension(post) + suffix


# ----------------------------------------------------------------------------------------------------------------
# RELION version
# ----------------------------------------------------------------------------------------------------------------


def parse_relion_version(value: str | int) -> int:
    """``"5"``, ``"5.0"``, ``"4"``, ``"3.1"``, ``"3"`` -> 5, 5, 4, 3, 3. Raises ValueError for anything else."""
    text = str(value).strip().lower().removeprefix("relion").strip()
    m = re.fullmatch(r"(\d+)(?:\.(\d+))?(?:\.\d+)?", text)
    if not m:
        raise ValueError(f"relion_version must be 3.1, 4 or 5, not {value!r}")
    major = int(m.group(1))
    if major == 3 and m.group(2) is not None and int(m.group(2)) < 1:
        raise ValueError("RELION 3.0 has no External job; relion_version must be 3.1, 4 or 5")
    if major not in SUPPORTED_VERSIONS:
        raise ValueError(f"relion_version must be 3.1, 4 or 5, not {value!r}")
    return major


def detect_relion_version(project_dir: str | os.PathLike = ".") -> int | None:
    """RELION version of the project, from its ``default_pipeline.star``; None when there is none.

    ``# version 50001`` (or later) -> 5; ``# version 30001`` with ``_rlnPipeLine...TypeLabel`` columns -> 4; with
    the integer ``_rlnPipeLineNodeType`` / ``_rlnPipeLineProcessType`` columns -> 3 (3.1).
    """
    pipeline = Path(project_dir) / "default_pipeline.star"
    if not pipeline.is_file():
        return None
    try:
        text = pipeline.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    m = re.search(r"^#\s*version\s+(\d+)", text, flags=re.M)
    number = int(m.group(1)) if m else 0
    if number >= 50000:
        return 5
    if re.search(r"^_rlnPipeLine(Node|Process)TypeLabel\b", text, flags=re.M):
        return 4
    return 3


def star_version(relion_version: int) -> int:
    """``# version`` number that RELION ``relion_version`` writes in STAR files (30001 or 50001)."""
    return io.STAR_VERSION[relion_version]


# ----------------------------------------------------------------------------------------------------------------
# output nodes and exit markers
# ----------------------------------------------------------------------------------------------------------------


def write_output_nodes(job_dir: str | os.PathLike, nodes: Sequence[tuple[str, str | int]], relion_version: int) -> Path:
    """Write ``RELION_OUTPUT_NODES.star`` (atomically) in the layout RELION's own programs write it.

    Parameters
    ----------
    job_dir : path
        The job directory.
    nodes : sequence of (name, type)
        Node file names relative to the project directory, with a type label (RELION 4 / 5) or an integer
        type (RELION 3.1).
    relion_version : {3, 4, 5}
    """
    if relion_version == 3:
        cols = [("rlnPipeLineNodeName", [n for n, _ in nodes]), ("rlnPipeLineNodeType", [int(t) for _, t in nodes])]
    else:
        cols = [("rlnPipeLineNodeName", [n for n, _ in nodes]), ("rlnPipeLineNodeTypeLabel", [str(t) for _, t in nodes])]
    path = Path(job_dir) / OUTPUT_NODES
    with io.atomic_write(path) as fh:
        fh.write(io.format_star_table("output_nodes", cols, star_version(relion_version)))
    return path


def write_coords_suffix(job_dir: str | os.PathLike, micrographs_star: str, pickname: str = "pixer") -> Path:
    """RELION 3.1's ``coords_suffix_<pickname>.star``: one line naming the input micrograph STAR file."""
    path = Path(job_dir) / f"coords_suffix_{pickname}.star"
    with io.atomic_write(path) as fh:
        fh.write(f"{micrographs_star}\n")
    return path


def clear_exit_markers(job_dir: str | os.PathLike) -> None:
    """Remove stale exit markers, as RELION's ``pipeline_control_delete_exit_files`` does at a program's start."""
    for name in (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(Path(job_dir) / name)


def write_exit_marker(job_dir: str | os.PathLike, status: str) -> Path:
    """Touch ``RELION_JOB_EXIT_<status>`` (``"success"``, ``"failure"`` or ``"aborted"``) in ``job_dir``."""
    name = {"success": EXIT_SUCCESS, "failure": EXIT_FAILURE, "aborted": EXIT_ABORTED}[status]
    path = Path(job_dir) / name
    Path(job_dir).mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


class Terminated(BaseException):
    """SIGTERM (a queue system, ``kill``) turned into an exception by :func:`raise_terminated`, so that a job can say
    it was stopped and leave RELION's aborted marker."""


class AbortRequested(Terminated):
    """RELION's Abort (``RELION_JOB_ABORT_NOW``) seen inside a long stage (adapt's fine-tuning): the job stops as it
    does on SIGTERM."""


def stopped_by(exc: BaseException) -> str:
    """What stopped a job, for its message: ``SIGINT`` (KeyboardInterrupt), ``SIGTERM`` (:class:`Terminated`) or
    RELION's Abort (:class:`AbortRequested`, or any other stop on request such as a training stopped by it)."""
    if isinstance(exc, KeyboardInterrupt):
        return "SIGINT"
    if isinstance(exc, Terminated) and not isinstance(exc, AbortRequested):
        return "SIGTERM"
    return ABORT_NOW


def raise_terminated(signum, frame):
    """A SIGTERM handler: raise :class:`Terminated`."""
    raise Terminated()


def abort_requested(job_dir: str | os.PathLike) -> bool:
    """Whether the RELION GUI (or a user) asked the job to stop: ``RELION_JOB_ABORT_NOW`` exists."""
    return (Path(job_dir) / ABORT_NOW).exists()


# ----------------------------------------------------------------------------------------------------------------
# tolerant command-line parsing
# ----------------------------------------------------------------------------------------------------------------

_TRUE = {"yes", "y", "true", "t", "1", "on"}
_FALSE = {"no", "n", "false", "f", "0", "off"}


def parse_bool(value: str | bool | None, name: str = "flag") -> bool:
    """Yes/No, true/false, 1/0, on/off (any case); a bare flag (None or True) is True."""
    if value is None or value is True:
        return True
    if value is False:
        return False
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"--{name} takes Yes/No, true/false or 1/0, not {value!r}")


def _is_option(token: str) -> bool:
    return token.startswith("--") and len(token) > 2 and (token[2].isalpha() or token[2] == "-")


def _normalise(token: str) -> str:
    return token.lstrip("-").strip().lower().replace("-", "_")


def option_problem(parsed: "ParsedArgs", known: Iterable[str], flags: bool = True) -> str | None:
    """What stops a job in a command line :func:`parse_tolerant` read, or None: an unknown option that is likely a
    misspelling of one of ``known`` (:func:`likely_meant`; it would leave its default in force unnoticed), or (with
    ``flags``) a Yes/No option followed by another value."""
    known = list(known)
    for shown in parsed.unknown:
        meant = likely_meant(shown, known)
        if meant:
            return f"unknown parameter {shown.split()[0]!r}: did you mean {meant}?"
    for key, extra in parsed.flag_values.items() if flags else ():
        return f"--{key} takes Yes or No, not {' '.join(extra)!r}"
    return None


def likely_meant(unknown: str, known: Iterable[str]) -> str | None:
    """The known option an unknown one is most likely a misspelling of (``--treshold``: ``threshold``), or None.

    Close in spelling (:func:`difflib.get_close_matches`, ratio at least 0.8), or one name of at least five letters
    inside the other (``--diameter``: ``particle_diameter``)."""
    import difflib

    key, known = _normalise(unknown.split()[0] if unknown.split() else unknown), list(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
    if close:
        return close[0]
    inside = [k for k in known if min(len(k), len(key)) >= 5 and (key in k or k in key)]
    return inside[0] if len(inside) == 1 else None


@dataclass
class ParsedArgs:
    """Result of :func:`parse_tolerant`.

    Attributes
    ----------
    values : dict
        Option name -> string value; ``None`` for a valued option given bare (RELION's empty value); ``True`` /
        ``False`` for flags.
    positional : list of str
        Arguments that belong to no option (micrograph files for ``relion_pixer pick``).
    unknown : list of str
        Unknown options with their values, as they appeared.
    flag_values : dict
        Flag name -> the values that followed it and were not Yes/No words (they went to ``positional``).
    warnings : list of str
        One line per oddity (unknown option, repeated option, stray value).
    """

    values: dict = field(default_factory=dict)
    positional: list = field(default_factory=list)
    unknown: list = field(default_factory=list)
    flag_values: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


def parse_tolerant(argv: Sequence[str], spec: Mapping[str, str]) -> ParsedArgs:
    """Parse a command line the way RELION builds it, never failing on what it does not know.

    Parameters
    ----------
    argv : sequence of str
        Arguments (without the program name).
    spec : mapping
        Known option names (lower case, ``_`` for ``-``, no dashes) -> ``"value"`` (one value, possibly absent:
        RELION passes an empty value as a bare ``--label``), ``"flag"`` (no value, or an optional Yes/No/true/1
        value, since RELION always passes a value for GUI parameters) or ``"ignored"`` (known, takes a value, not
        used).

    Notes
    -----
    Option names are matched after stripping all leading dashes and mapping ``-`` to ``_``, so ``--particle-diameter``,
    ``----particle_diameter`` (a user who typed the dashes into RELION's label field) and ``--Particle_Diameter``
    all mean ``particle_diameter``. ``--name=value`` is accepted too. Unknown options, with the values that follow
    them, are reported in ``warnings`` and skipped.
    """
    out = ParsedArgs()
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in ("-h",):
            out.values["help"] = True
            i += 1
            continue
        if not _is_option(tok):
            out.positional.append(tok)
            i += 1
            continue
        inline = None
        if "=" in tok:
            tok, inline = tok.split("=", 1)
        key = _normalise(tok)
        j = i + 1
        following: list[str] = [] if inline is None else [inline]
        while j < len(tokens) and not _is_option(tokens[j]) and tokens[j] != "-h":
            following.append(tokens[j])
            j += 1
        kind = spec.get(key)
        if kind is None:
            shown = " ".join([tokens[i]] + following[(0 if inline is None else 1):])
            out.unknown.append(shown)
            out.warnings.append(f"ignoring unknown argument: {shown}")
            i = j
            continue
        if key in out.values:
            out.warnings.append(f"--{key} given more than once; the last value is used")
        extra: list[str]
        if kind == "flag":
            if following and (following[0].strip().lower() in _TRUE | _FALSE):
                out.values[key] = parse_bool(following[0], key)
                extra = following[1:]
            else:
                out.values[key] = True
                extra = following
                if extra:
                    out.flag_values[key] = list(extra)
        else:
            out.values[key] = following[0] if following else None
            extra = following[1:]
        if kind == "ignored":
            out.warnings.append(f"--{key} is not used by the picker; ignored")
        out.positional.extend(extra)
        i = j
    return out
