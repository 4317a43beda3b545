"""Reading and writing RELION STAR files and MRC micrographs.

Everything the picker reads or writes goes through this module:

* :func:`read_micrographs_star` reads a micrograph STAR file of RELION 3.0 (no optics table) or RELION 3.1 / 4 / 5
  (``data_optics`` + ``data_micrographs``) into :class:`MicrographEntry` records with resolved paths and pixel sizes.
* :func:`read_micrograph` reads one MRC micrograph (memory-mapped) into a float32 array, with clear
  :class:`MicrographError` messages for missing, corrupt, truncated, constant, non-finite, multi-section or tiny images.
* :func:`write_coordinates_star` and :func:`write_coordinate_files_star` write the per-micrograph coordinate files and
  the ``data_coordinate_files`` list exactly as RELION's own autopicker (``src/autopicker.cpp``) does, with the
  number formatting of ``MetaDataTable::write`` (``src/metadata_table.cpp``).
* :func:`atomic_write` / :func:`atomic_output_path` make every write atomic: a temporary file in the same directory,
  ``fsync``, then ``os.replace``; a writer that raises (or a process killed mid-write) leaves no partial file.

STAR values are read as strings (names exactly as written, never reinterpreted as numbers); numeric columns are
converted where the caller asks for them.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "MicrographError",
    "StarError",
    "MicrographEntry",
    "read_star",
    "read_star_version",
    "format_star_table",
    "read_micrographs_star",
    "read_micrograph",
    "read_entry",
    "readable_micrographs",
    "read_header_angpix",
    "write_coordinates_star",
    "write_coordinate_files_star",
    "read_coordinates_star",
    "atomic_write",
    "atomic_output_path",
    "TMP_SUFFIX",
    "MIN_MICROGRAPH_SIZE",
]

#: Suffix of the temporary files :func:`atomic_write` creates (hidden, ``.<name>.<random>.pixertmp``).
TMP_SUFFIX = ".pixertmp"

#: Smallest micrograph side, in pixels, that :func:`read_micrograph` accepts by default.
MIN_MICROGRAPH_SIZE = 32

#: ``# version`` numbers RELION writes into STAR files (``CURRENT_MDT_VERSION`` in ``src/metadata_table.h``):
#: 30001 for RELION 3.1 and 4.0, 50001 for RELION 5. RELION 3.0 writes no version line.
STAR_VERSION = {3: 30001, 4: 30001, 5: 50001}

_MRC_MODE_NAMES = {0: "int8", 1: "int16", 2: "float32", 3: "complex int16", 4: "complex64", 6: "uint16", 12: "float16"}
_IMOD_STAMP = 1146047817


class MicrographError(ValueError):
    """A micrograph that cannot be used, with the file and the reason.

    Parameters
    ----------
    path : str or os.PathLike
        The micrograph file.
    reason : str
        What is wrong with it, phrased to complete "<path>: ...".
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class StarError(ValueError):
    """A STAR file that cannot be parsed or lacks what is needed; the message names the file."""


@dataclass(frozen=True)
class MicrographEntry:
    """One micrograph listed in a micrograph STAR file.

    Attributes
    ----------
    name : str
        ``_rlnMicrographName`` exactly as written in the STAR file (what RELION expects back in ``autopick.star``).
    path : pathlib.Path
        The file to read: ``name`` resolved against the project directory.
    angpix : float or None
        Pixel size in Angstrom, or None when neither the STAR file nor the user gave one (the caller then falls back
        to the MRC header, see :func:`read_micrograph`).
    optics_group : int or None
        ``_rlnOpticsGroup`` (None for RELION 3.0 files).
    angpix_source : str
        Where ``angpix`` came from: ``"user"``, ``"rlnMicrographPixelSize"``, ``"rlnMicrographOriginalPixelSize"``,
        ``"rlnDetectorPixelSize/rlnMagnification"``, ``"mrc_header"`` or ``"none"``.
    """

    name: str
    path: Path
    angpix: float | None
    optics_group: int | None = None
    angpix_source: str = "none"


# ----------------------------------------------------------------------------------------------------------------
# atomic writes
# ----------------------------------------------------------------------------------------------------------------


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.urandom(4).hex()}{TMP_SUFFIX}")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    For writers that need a file name (``mrcfile.new``, ``matplotlib.savefig``). The temporary file is hidden
    (``.<name>.<random>.pixertmp``) so that no glob for ``*_autopick.star`` can see it. If the body raises, the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = _temp_path(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a file for writing so that it appears complete or not at all.

    Writes go to a temporary file in the same directory (created with the usual ``0666 & ~umask`` permissions),
    which is flushed, ``fsync``-ed and renamed over ``path`` with :func:`os.replace` when the ``with`` block ends
    normally (:func:`atomic_output_path`). If the block raises, the temporary file is deleted and any existing ``path`` is untouched.

    Parameters
    ----------
    path : str or os.PathLike
        Final file name.
    mode : {"w", "wb"}
        Text or binary.
    encoding : str, optional
        Text encoding (ignored for binary mode).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write supports modes 'w' and 'wb', not {mode!r}")
    text = {} if mode == "wb" else {"encoding": encoding, "newline": "\n"}
    with atomic_output_path(path) as tmp:
        # "x": create the temporary file exclusively; atomic_output_path fsyncs and renames it
        with open(tmp, mode.replace("w", "x"), **text) as fh:
            yield fh


# ----------------------------------------------------------------------------------------------------------------
# STAR reading
# ----------------------------------------------------------------------------------------------------------------


def _tokens(line: str) -> list[str]:
    """The values of one STAR line, split as RELION splits them (``nextTokenInSTAR``): at whitespace; a value that
    starts with a quote runs to the same quote followed by whitespace or the end of the line (quotes inside a value,
    as in ``it's.mrc``, are part of it; RELION's ``\\a`` escape before such a quote is dropped); a value starting
    with ``#`` starts a comment, which ends the line."""
    out: list[str] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n or line[i] == "#":
            break
        if line[i] in "'\"":
            quote, j = line[i], i + 1
            while j < n and not (line[j] == quote and line[j - 1] != "\a" and (j + 1 == n or line[j + 1] in " \t")):
                j += 1
            if j < n:  # a closing quote: the value is what lies between
                out.append(line[i + 1:j].replace("\a", ""))
                i = j + 1
                continue
        j = i
        while j < n and line[j] not in " \t":
            j += 1
        out.append(line[i:j])
        i = j
    return out


def _row_values(line: str, columns: int) -> list[str] | None:
    """The values of a line inside a loop's rows that starts like a block, a loop or a label (``data_0001.mrc
    2.5``), when it is a row: one value per column, and with a single column a value that names a file (a ``.`` or
    a ``/``), so that a file whose next ``data_`` block follows the rows without a blank line still reads as two
    blocks. None when it is not a row."""
    values = _tokens(line)
    is_row = len(values) == columns and (columns > 1 or "." in values[0] or "/" in values[0])
    return values if is_row else None


def read_star_version(path: str | os.PathLike) -> int | None:
    """The number of the first ``# version NNNNN`` line of a STAR file, or None when there is none (RELION 3.0)."""
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for line in fh:
            s = line.strip()
            if s.startswith("#"):
                parts = s[1:].split()
                if len(parts) >= 2 and parts[0] == "version" and parts[1].isdigit():
                    return int(parts[1])
            elif s.startswith("data_"):
                # RELION writes the version line before each block; stop at the first block without one
                return None
    return None


def read_star(path: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Read every data block of a STAR file into DataFrames of strings.

    Loops become one row per line; key-value blocks become a one-row DataFrame. Column names lose the leading
    underscore (``rlnMicrographName``). Values are kept as the exact strings of the file (quotes removed), so a
    micrograph name is never reinterpreted as a number. An empty file gives an empty dict.

    Raises
    ------
    StarError
        When the file cannot be read or a loop row has fewer values than the loop has columns.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")  # -sig: a leading byte-order mark goes
    except OSError as exc:
        raise StarError(f"{path}: cannot read STAR file ({exc.strerror or exc})") from exc
    if "\x00" in text[:4096]:
        raise StarError(f"{path}: not a STAR file (binary content: an image or an archive?)")

    blocks: dict[str, pd.DataFrame] = {}
    name: str | None = None
    columns: list[str] = []
    rows: list[list[str]] = []
    pairs: dict[str, str] = {}
    in_loop = False
    loop_header = False
    rows_open = False  # inside a loop's rows, no blank line since they began: RELION reads every line as a row

    def finish() -> None:
        nonlocal columns, rows, pairs, in_loop, loop_header
        if name is not None:
            if in_loop:
                blocks[name] = pd.DataFrame(rows, columns=columns, dtype=object) if rows else pd.DataFrame(
                    {c: pd.Series([], dtype=object) for c in columns}
                )
            elif pairs:
                blocks[name] = pd.DataFrame([pairs], dtype=object)
        columns, rows, pairs, in_loop, loop_header = [], [], {}, False, False

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            rows_open = False  # RELION ends a loop's rows at a blank line
            continue
        if line.startswith("#"):
            continue
        values = _row_values(line, len(columns)) if rows_open and line.startswith(("data_", "loop_", "_")) else None
        if values is not None:
            # a value such as data_0001.mrc: RELION reads the loop's rows up to a blank line, so this is a row
            rows.append(values)
            continue
        rows_open = False
        if line.startswith("data_"):
            finish()
            name = line[5:].split()[0] if len(line) > 5 else ""
            continue
        if name is None:
            raise StarError(f"{path}: line {lineno}: content before the first data_ block: {line[:60]!r}")
        if line.startswith("loop_"):
            if in_loop or pairs:
                raise StarError(f"{path}: line {lineno}: a second loop_ in block data_{name}")
            in_loop, loop_header = True, True
            continue
        if line.startswith("_"):
            toks = line.split(None, 1)
            label = toks[0][1:]
            if in_loop and loop_header:
                columns.append(label)
            elif in_loop:
                raise StarError(f"{path}: line {lineno}: label {toks[0]} after the rows of a loop in data_{name}")
            else:
                rest = _tokens(toks[1]) if len(toks) > 1 else []
                pairs[label] = rest[0] if rest else ""
            continue
        if in_loop:
            loop_header, rows_open = False, True
            vals = _tokens(line)
            if len(vals) < len(columns):
                raise StarError(
                    f"{path}: line {lineno}: {len(vals)} values for {len(columns)} columns in data_{name}"
                )
            rows.append(vals[: len(columns)])
            continue
        raise StarError(f"{path}: line {lineno}: unexpected text in data_{name}: {line[:60]!r}")
    finish()
    return blocks


# ----------------------------------------------------------------------------------------------------------------
# STAR writing (RELION's MetaDataTable::write layout)
# ----------------------------------------------------------------------------------------------------------------


def _escape(value: str) -> str:
    """``escapeStringForSTAR`` of RELION's ``src/strings.cpp``."""
    if value == "":
        return '""'
    if value[0] in "\"'" or " " in value or "\t" in value:
        out = ['"']
        n = len(value)
        for pos, ch in enumerate(value):
            if ch == '"' and (pos + 1 == n - 1 or (pos + 1 < n and value[pos + 1] in " \t")):
                out.append("\a")
            out.append(ch)
        out.append('"')
        return "".join(out)
    return value


def _format_value(value) -> str:
    """One value as ``MetaDataTable::getValueToString`` prints it (12-character buffers, as in RELION)."""
    if isinstance(value, (bool, np.bool_)):
        return ("%12d" % int(value))[:12]
    if isinstance(value, (int, np.integer)):
        return ("%12d" % int(value))[:12]
    if isinstance(value, (float, np.floating)):
        v = float(value)
        a = abs(v)
        if (0.0 < a < 0.001) or a > 100000.0:
            s = "%12.5e" % v if v < 0 else "%12.6e" % v
        else:
            s = "%12.5f" % v if v < 0 else "%12.6f" % v
        # RELION uses snprintf(buffer, 13, ...): at most 12 characters survive
        return s[:12]
    return _escape(str(value))


def format_star_table(
    name: str, columns: Mapping[str, Sequence] | Sequence[tuple[str, Sequence]], version: int | None = 50001
) -> str:
    """Text of one STAR loop block in the exact layout of RELION's ``MetaDataTable::write``.

    Layout: ``"\\n# version N\\n"`` (only for ``version >= 30000``), ``"\\ndata_<name>\\n\\nloop_ \\n"``, one
    ``"_label #i \\n"`` per column, then per row each value right-aligned in 10 characters followed by a space, and
    a closing ``" \\n"`` line. Python ``int`` values print as ``%12d``, ``float`` values as ``%12.6f`` (``%12.5f``
    when negative) or in ``e`` notation outside [0.001, 100000], strings as they are (quoted when they contain
    whitespace). Like RELION, an empty table (no rows) gives an empty string.

    Parameters
    ----------
    name : str
        Block name without ``data_`` (``""`` for the unnamed ``data_`` block of coordinate files).
    columns : mapping or sequence of (label, values)
        Column labels without the leading underscore, in order, with equally long value sequences.
    version : int or None
        The ``# version`` number (30001 for RELION 3.1/4, 50001 for RELION 5); None or < 30000 writes none.
    """
    items = list(columns.items()) if isinstance(columns, Mapping) else list(columns)
    if not items:
        return ""
    lengths = {len(v) for _, v in items}
    if len(lengths) != 1:
        raise ValueError(f"columns of data_{name} have different lengths: {sorted(lengths)}")
    nrows = lengths.pop()
    if nrows == 0:
        return ""
    parts: list[str] = []
    if version is not None and version >= 30000:
        parts.append(f"\n# version {int(version)}\n")
    parts.append(f"\ndata_{name}\n\nloop_ \n")
    for i, (label, _) in enumerate(items, start=1):
        label = label[1:] if label.startswith("_") else label
        parts.append(f"_{label} #{i} \n")
    formatted = [[_format_value(v) for v in values] for _, values in items]
    for r in range(nrows):
        parts.append("".join(f"{col[r]:>10} " for col in formatted) + "\n")
    parts.append(" \n")
    return "".join(parts)


def write_coordinates_star(
    path: str | os.PathLike,
    xy: np.ndarray,
    fom: np.ndarray | None = None,
    version: int | None = 50001,
    class_number: np.ndarray | None = None,
    psi: np.ndarray | None = None,
) -> Path:
    """Write one micrograph's picks as RELION's autopicker writes ``<micrograph>_autopick.star``.

    Columns ``_rlnCoordinateX #1``, ``_rlnCoordinateY #2``, ``_rlnAutopickFigureOfMerit #3``,
    ``_rlnClassNumber #4`` (0 by default, as RELION's dummy) and ``_rlnAnglePsi #5`` (0.0), in an unnamed
    ``data_`` block. Coordinates are 0-based pixel positions of the micrograph, which is what RELION's extraction
    expects (``Preprocessing::extractParticlesFromOneFrame`` windows around ``(long)x``). With no picks the file is
    empty (0 bytes), exactly as ``MetaDataTable::write`` leaves it for an empty table; RELION lists such files in
    ``autopick.star`` and extracts nothing from them. The write is atomic.

    Parameters
    ----------
    path : str or os.PathLike
        Output file; its directory must exist.
    xy : array (N, 2)
        ``(x, y)`` pixel coordinates.
    fom : array (N,), optional
        Figure of merit per pick (default 0).
    version : int or None
        ``# version`` number: 50001 for RELION 5, 30001 for RELION 3.1 / 4, None for RELION 3.0.
    class_number, psi : array (N,), optional
        Values of the class and angle columns (defaults 0 and 0.0).
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    n = len(xy)
    fom = np.zeros(n) if fom is None else np.asarray(fom, dtype=np.float64).reshape(-1)
    cls = np.zeros(n, dtype=np.int64) if class_number is None else np.asarray(class_number).astype(np.int64)
    psi = np.zeros(n) if psi is None else np.asarray(psi, dtype=np.float64).reshape(-1)
    if not (len(fom) == len(cls) == len(psi) == n):
        raise ValueError(f"{path}: xy has {n} rows but fom/class/psi have {len(fom)}/{len(cls)}/{len(psi)}")
    if n and not np.isfinite(xy).all():
        raise ValueError(f"{path}: non-finite coordinates")
    text = format_star_table(
        "",
        [
            ("rlnCoordinateX", [float(v) for v in xy[:, 0]]),
            ("rlnCoordinateY", [float(v) for v in xy[:, 1]]),
            ("rlnAutopickFigureOfMerit", [float(v) for v in fom]),
            ("rlnClassNumber", [int(v) for v in cls]),
            ("rlnAnglePsi", [float(v) for v in psi]),
        ],
        version,
    )
    path = Path(path)
    with atomic_write(path) as fh:
        fh.write(text)
    return path


def write_coordinate_files_star(
    path: str | os.PathLike,
    micrograph_names: Sequence[str],
    coordinate_files: Sequence[str],
    version: int | None = 50001,
) -> Path:
    """Write the ``data_coordinate_files`` list (RELION's ``autopick.star``), atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output file, e.g. ``External/job012/autopick.star``.
    micrograph_names : sequence of str
        ``_rlnMicrographName`` values, exactly as in the input micrograph STAR file.
    coordinate_files : sequence of str
        ``_rlnMicrographCoordinates``: the coordinate file of each micrograph, relative to the project directory.
    version : int or None
        ``# version`` number (see :func:`write_coordinates_star`).
    """
    if len(micrograph_names) != len(coordinate_files):
        raise ValueError(f"{path}: {len(micrograph_names)} micrographs but {len(coordinate_files)} coordinate files")
    text = format_star_table(
        "coordinate_files",
        [("rlnMicrographName", [str(s) for s in micrograph_names]),
         ("rlnMicrographCoordinates", [str(s) for s in coordinate_files])],
        version,
    )
    path = Path(path)
    with atomic_write(path) as fh:
        fh.write(text)
    return path


def _to_numeric(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for col in out.columns:
        try:
            num = pd.to_numeric(out[col])
        except (ValueError, TypeError):
            continue
        out[col] = num
    return out


def read_coordinates_star(path: str | os.PathLike) -> pd.DataFrame:
    """Read a per-micrograph coordinate STAR file (RELION autopick / manualpick / ours).

    Returns a DataFrame with the file's columns (``rlnCoordinateX``, ``rlnCoordinateY``, ...), numeric where the
    values are numbers. An empty file (RELION's way of saying "no picks") gives an empty DataFrame with float
    ``rlnCoordinateX`` and ``rlnCoordinateY`` columns.
    """
    path = Path(path)
    blocks = read_star(path)
    for df in blocks.values():
        if "rlnCoordinateX" in df.columns and "rlnCoordinateY" in df.columns:
            return _to_numeric(df).reset_index(drop=True)
    if not blocks:
        return pd.DataFrame({"rlnCoordinateX": pd.Series([], dtype=float), "rlnCoordinateY": pd.Series([], dtype=float)})
    raise StarError(f"{path}: no block with _rlnCoordinateX and _rlnCoordinateY")


# ----------------------------------------------------------------------------------------------------------------
# micrograph STAR files
# ----------------------------------------------------------------------------------------------------------------


def _positive_float(text) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _resolve(name: str, project_dir: Path, star_dir: Path) -> Path:
    fname = name
    # RELION allows a ":mrc" type suffix on file names (e.g. "x.ctf:mrc")
    if fname.endswith(":mrc"):
        fname = fname[:-4]
    p = Path(fname)
    if p.is_absolute():
        return p
    candidate = project_dir / p
    if candidate.exists():
        return candidate
    # a STAR file read from outside its project: RELION names are relative to the project directory, which is the
    # STAR file's own directory or one of its parents (CtfFind/job005/micrographs_ctf.star -> two levels up)
    for base in (star_dir, *star_dir.parents):
        if (base / p).exists():
            return base / p
    return candidate


def read_micrographs_star(
    path: str | os.PathLike,
    project_dir: str | os.PathLike | None = None,
    angpix: float | None = None,
    header_fallback: bool = False,
) -> list[MicrographEntry]:
    """Read a micrograph STAR file of RELION 3.0 to 5.

    RELION 3.1 and later: the ``data_micrographs`` loop, with the pixel size of each row's optics group from
    ``data_optics`` (``_rlnMicrographPixelSize``, falling back to ``_rlnMicrographOriginalPixelSize``).
    RELION 3.0: the first loop with ``_rlnMicrographName``; pixel size from a per-row ``_rlnMicrographPixelSize``
    or ``10000 * _rlnDetectorPixelSize / _rlnMagnification`` when present.

    Parameters
    ----------
    path : str or os.PathLike
        The STAR file.
    project_dir : str or os.PathLike, optional
        RELION project directory the names are relative to (default: the current directory, as RELION runs jobs
        from there). A relative name missing there but present relative to the STAR file's own directory or one of
        its parents resolves to that, so that a STAR file beside its micrographs, or one read from outside its
        project, works too.
    angpix : float, optional
        Pixel size given by the user. It overrides the STAR file's values (``angpix_source == "user"``).
    header_fallback : bool
        For entries still without a pixel size, read it from the MRC header (``angpix_source == "mrc_header"``;
        header only, cheap). Missing or unreadable files keep ``angpix=None``.

    Returns
    -------
    list of MicrographEntry
        In file order. An empty list for a STAR file without rows (RELION writes an empty table as a 0-byte file).
        Entries whose pixel size is unknown have ``angpix=None``; the caller may fall back to the MRC header.

    Raises
    ------
    StarError
        Unreadable file, no ``_rlnMicrographName`` column, or a row naming an optics group that ``data_optics``
        lacks.
    """
    path = Path(path)
    if path.is_dir():
        raise StarError(f"{path}: is a directory; give the micrographs STAR file in it")
    if not path.is_file():
        raise StarError(f"{path}: micrograph STAR file does not exist")
    blocks = read_star(path)
    if not blocks:
        return []
    mics = blocks.get("micrographs")
    if mics is None or "rlnMicrographName" not in mics.columns:
        mics = next((df for df in blocks.values() if "rlnMicrographName" in df.columns), None)
    if mics is None:
        found = ", ".join(f"data_{k}" for k in blocks) or "no data blocks"
        raise StarError(f"{path}: no _rlnMicrographName column (found {found}); is this a micrograph STAR file?")
    if "rlnImageName" in mics.columns:
        raise StarError(f"{path}: this is a particle STAR file (it has _rlnImageName); give a micrograph STAR file")

    user = _positive_float(angpix) if angpix is not None else None
    if angpix is not None and user is None:
        raise ValueError(f"pixel size must be a positive number, got {angpix!r}")

    def group_number(text, what: str) -> int:
        """An _rlnOpticsGroup value as RELION reads it, an integer ("01" is group 1)."""
        text = str(text).strip()
        try:
            return int(text)
        except ValueError:
            raise StarError(f"{path}: {what} has a non-integer _rlnOpticsGroup {text!r}") from None

    optics: dict[int, tuple[float | None, str]] = {}
    opt = blocks.get("optics")
    if opt is not None and "rlnOpticsGroup" in opt.columns:
        for _, row in opt.iterrows():
            value, source = None, "none"
            for label in ("rlnMicrographPixelSize", "rlnMicrographOriginalPixelSize"):
                if label in opt.columns:
                    value = _positive_float(row[label])
                    if value is not None:
                        source = label
                        break
            optics[group_number(row["rlnOpticsGroup"], "data_optics")] = (value, source)

    project = Path(project_dir) if project_dir is not None else Path.cwd()
    star_dir = path.parent
    entries: list[MicrographEntry] = []
    has_group = "rlnOpticsGroup" in mics.columns
    for _, row in mics.iterrows():
        name = str(row["rlnMicrographName"])
        group: int | None = None
        value, source = None, "none"
        if has_group:
            group = group_number(row["rlnOpticsGroup"], f"micrograph {name}")
            if optics:
                if group not in optics:
                    raise StarError(f"{path}: micrograph {name} is in optics group {group}, which data_optics lacks")
                value, source = optics[group]
        if value is None and "rlnMicrographPixelSize" in mics.columns:
            value = _positive_float(row["rlnMicrographPixelSize"])
            source = "rlnMicrographPixelSize" if value is not None else "none"
        if value is None and {"rlnDetectorPixelSize", "rlnMagnification"} <= set(mics.columns):
            det, mag = _positive_float(row["rlnDetectorPixelSize"]), _positive_float(row["rlnMagnification"])
            if det is not None and mag is not None:
                value, source = 10000.0 * det / mag, "rlnDetectorPixelSize/rlnMagnification"
        if user is not None:
            value, source = user, "user"
        resolved = _resolve(name, project, star_dir)
        if value is None and header_fallback:
            try:
                value = read_header_angpix(resolved)
            except MicrographError:
                value = None
            source = "mrc_header" if value is not None else "none"
        entries.append(MicrographEntry(name, resolved, value, group, source))
    return entries


# ----------------------------------------------------------------------------------------------------------------
# MRC micrographs
# ----------------------------------------------------------------------------------------------------------------


def _header_angpix(mrc) -> float | None:
    try:
        vs = mrc.voxel_size
        x, y = float(vs.x), float(vs.y)
    except Exception:
        return None
    if math.isfinite(x) and x > 0:
        return x
    if math.isfinite(y) and y > 0:
        return y
    return None


#: Leading bytes of files that are not MRC, and what to tell the user about them.
_OTHER_FORMATS = (
    (b"II*\x00", "a TIFF image, not MRC: convert it to MRC first (e.g. IMOD's tif2mrc)"),
    (b"MM\x00*", "a TIFF image, not MRC: convert it to MRC first (e.g. IMOD's tif2mrc)"),
    (b"II+\x00", "a BigTIFF image, not MRC: convert it to MRC first"),
    (b"MM\x00+", "a BigTIFF image, not MRC: convert it to MRC first"),
    (b"\x1f\x8b", "gzip-compressed: decompress it first (gunzip)"),
    (b"BZh", "bzip2-compressed: decompress it first (bunzip2)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed: decompress it first (unzstd)"),
    (b"\x89PNG", "a PNG image, not MRC: convert it to MRC first"),
    (b"\xff\xd8\xff", "a JPEG image, not MRC: convert it to MRC first"),
)


def _other_format(path: Path) -> str | None:
    """What a file that mrcfile cannot read is instead, from its first bytes (None when it is none of
    :data:`_OTHER_FORMATS`)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return None
    return next((why for magic, why in _OTHER_FORMATS if head.startswith(magic)), None)


def _imod_flags(hdr) -> int | None:
    """IMOD's flags word (header bytes 156-159, in the file's byte order) where its stamp (bytes 152-155) is set, else
    None. Bit 0 clear marks unsigned bytes in mode 0. mrcfile keeps these bytes in ``extra2``."""
    raw = np.asarray(hdr.extra2).tobytes()[40:48]
    if len(raw) < 8:
        return None
    stamp, flags = (int(v) for v in np.frombuffer(raw, dtype=np.asarray(hdr.mode).dtype))
    return flags if stamp == _IMOD_STAMP else None


def _bytes_look_unsigned(data: np.ndarray, rows: int = 512) -> bool:
    """Whether mode-0 bytes make the smoother image read as unsigned, for a file whose header says neither (no IMOD
    stamp, no valid dmin / dmax). Unsigned data read as signed wrap where they cross 128: neighbouring pixels then
    differ by more than 128, which they do not as unsigned; signed data read as unsigned wrap at 0 the same way. So
    the reading with fewer such jumps between horizontal neighbours (over the first ``rows`` rows) is taken."""
    signed = np.asarray(data[:rows], dtype=np.int8).astype(np.int16)
    unsigned = signed & 0xFF
    jumps = [int(np.count_nonzero(np.abs(np.diff(a, axis=1)) > 128)) for a in (signed, unsigned)]
    return jumps[1] < jumps[0]


def _open_mrc(path: Path, header_only: bool = False):
    """Open strictly; retry permissively only for header quirks that leave the data intact."""
    import mrcfile

    try:
        if header_only:
            return mrcfile.open(path, mode="r", header_only=True)
        return mrcfile.mmap(path, mode="r")
    except ValueError as strict_error:
        message = str(strict_error)
        other = _other_format(path)
        if other:
            raise MicrographError(path, other) from None
        if "mmap length" in message or "too small" in message.lower():
            raise MicrographError(path, "file is truncated (smaller than its header says)") from None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                mrc = (mrcfile.open(path, mode="r", header_only=True, permissive=True) if header_only
                       else mrcfile.mmap(path, mode="r", permissive=True))
            except Exception:
                mrc = None
        reasons = "; ".join(str(w.message) for w in caught) or message
        if mrc is None or (not header_only and mrc.data is None):
            if mrc is not None:
                mrc.close()
            raise MicrographError(path, f"not a readable MRC file ({reasons})") from None
        hdr = mrc.header
        if int(hdr.mode) not in _MRC_MODE_NAMES:
            mrc.close()
            raise MicrographError(path, f"unsupported MRC mode {int(hdr.mode)} ({reasons})") from None
        warnings.warn(f"{path}: MRC header is not standard ({reasons}); read permissively", stacklevel=3)
        return mrc
    except OSError as exc:
        raise MicrographError(path, f"cannot open ({exc.strerror or exc})") from None


def _check_file(path: Path) -> None:
    """MicrographError unless ``path`` is a regular file at least as large as an MRC header."""
    if not path.exists():
        raise MicrographError(path, "file does not exist")
    if not path.is_file():
        raise MicrographError(path, "not a regular file")
    if path.stat().st_size < 1024:
        raise MicrographError(path, f"file is too small to be an MRC file ({path.stat().st_size} bytes)")


def read_header_angpix(path: str | os.PathLike) -> float | None:
    """The pixel size (Angstrom) in an MRC file's header, or None when it is 0 / unset / unreadable."""
    path = Path(path)
    _check_file(path)
    with _open_mrc(path, header_only=True) as mrc:
        return _header_angpix(mrc)


def read_micrograph(
    path: str | os.PathLike, min_size: int = MIN_MICROGRAPH_SIZE
) -> tuple[np.ndarray, float | None]:
    """Read a 2D micrograph from an MRC file.

    Memory-mapped with :mod:`mrcfile`; a non-standard header is accepted (permissively, with a warning) only when
    the mode and the data block are intact. Modes 0 (int8, or uint8 when the header or IMOD flags say the bytes are
    unsigned, or, where the header says nothing, when they make the smoother image read so), 1 (int16), 2 (float32),
    6 (uint16) and 12 (float16) are read; a single-section stack (nz = 1) is a 2D image; any non-square shape is fine.

    Parameters
    ----------
    path : str or os.PathLike
        The MRC file.
    min_size : int
        Smallest accepted side, in pixels.

    Returns
    -------
    image : numpy.ndarray
        float32 array ``[row, col]`` = ``[y, x]`` (a copy; the file is closed).
    header_angpix : float or None
        Pixel size from the header, None when it is 0 or unset.

    Raises
    ------
    MicrographError
        Missing, unreadable or truncated file; complex or unknown mode; several sections; a side below
        ``min_size``; NaN or infinite values; a constant image. The message names the file and the reason.
    """
    path = Path(path)
    _check_file(path)
    with _open_mrc(path) as mrc:
        hdr = mrc.header
        mode = int(hdr.mode)
        if mode in (3, 4):
            raise MicrographError(path, f"MRC mode {mode} ({_MRC_MODE_NAMES[mode]}) is complex, not a micrograph")
        if mode not in _MRC_MODE_NAMES:
            raise MicrographError(path, f"unsupported MRC mode {mode}")
        data = mrc.data
        if data is None:
            raise MicrographError(path, "no data block")
        if data.ndim == 3:
            if data.shape[0] != 1:
                raise MicrographError(
                    path, f"has {data.shape[0]} sections (shape {tuple(data.shape)}); expected one 2D micrograph"
                )
            data = data[0]
        if data.ndim != 2:
            raise MicrographError(path, f"expected a 2D image, got {data.ndim} dimensions")
        if min(data.shape) < min_size:
            raise MicrographError(
                path, f"image is too small ({data.shape[1]} x {data.shape[0]} px; at least {min_size} px a side)"
            )
        if mode == 0 and data.dtype == np.int8:
            flags = _imod_flags(hdr)
            stats_unset = not float(hdr.dmax) > float(hdr.dmin)  # MRC2014: dmax < dmin, not determined
            if ((flags is not None and not flags & 1) or float(hdr.dmax) > 127
                    or (flags is None and stats_unset and _bytes_look_unsigned(data))):
                data = data.view(np.uint8)
        image = np.array(data, dtype=np.float32)
        angpix = _header_angpix(mrc)
    from relion_pixer.preprocess import value_range

    lo, hi = value_range(image)  # NaN or inf anywhere shows in one of them
    if not (np.isfinite(lo) and np.isfinite(hi)):
        bad = int(np.count_nonzero(~np.isfinite(image)))
        raise MicrographError(path, f"contains {bad} NaN or infinite pixel values")
    if lo == hi:
        raise MicrographError(path, f"image is constant (every pixel is {lo:g})")
    return image, angpix


def read_entry(entry, invert: bool = False) -> tuple[np.ndarray, float | None]:
    """One :class:`MicrographEntry` as the picking job reads it: the image (negated as float32 with ``invert``, so
    unsigned data cannot wrap) and its pixel size (the entry's, else the MRC header's; None without either).

    Raises
    ------
    MicrographError
        As :func:`read_micrograph`.
    """
    image, header_angpix = read_micrograph(entry.path)
    angpix = entry.angpix or header_angpix
    return (np.negative(image, dtype=np.float32) if invert else image), (float(angpix) if angpix else None)


def readable_micrographs(entries, invert: bool = False):
    """Yield ``(entry, image, angpix)`` for each of ``entries`` (:class:`MicrographEntry`) that can be read and has
    a pixel size, in order, skipping the others (:func:`read_entry`)."""
    for entry in entries:
        try:
            image, angpix = read_entry(entry, invert)
        except (MicrographError, ValueError):
            continue
        if angpix:
            yield entry, image, angpix
