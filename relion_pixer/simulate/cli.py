"""``relion_pixer simulate``: write simulated micrographs with ground truth as a small RELION project.

Example::

    relion_pixer simulate --n 50 --out SimProject --seed 1 --size 1024 --angpix 5.36 --snr 0.05 --diameter 300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from relion_pixer.simulate.shapes import ALL_FAMILIES, ModelFileError


def _number(kind, positive: bool = False, upper: float | None = None):
    """An argparse type: ``kind`` of the text, and positive (``positive``), or else at least 0 and at most ``upper``
    when given."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if positive:
            if value <= 0:
                raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        elif not value >= 0 or (upper is not None and value > upper):
            raise argparse.ArgumentTypeError(f"must be between 0 and {upper:g}, got {text!r}" if upper is not None
                                             else f"must be >= 0, got {text!r}")
        return value

    return parse


def _positive(kind):
    return _number(kind, positive=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="relion_pixer simulate",
        description="Simulate cryo-EM micrographs of one particle species with full ground truth "
        "(coordinates, label and instance maps) and write them as a RELION-looking project.",
    )
    p.add_argument("--n", type=int, default=10, help="number of micrographs (default 10)")
    p.add_argument("--out", required=True, help="output project folder")
    p.add_argument("--seed", type=_number(int), default=0, help="random seed; the same seed gives the same project")
    p.add_argument("--size", type=_positive(int), default=1024, help="micrograph side in pixels (default 1024)")
    p.add_argument("--angpix", type=_positive(float), default=5.36, help="pixel size in A (default 5.36)")
    p.add_argument(
        "--snr",
        type=_positive(float),
        nargs="+",
        default=[0.05],
        help="linear SNR (signal power over the particle pixels / noise power), or two values: a log-uniform "
        "range drawn per micrograph (default 0.05)",
    )
    p.add_argument("--dose", type=_positive(float), default=None,
                   help="physical dose in e/A^2 instead of a target SNR (the SNR is then reported in truth.json)")
    p.add_argument("--diameter", type=_positive(float), default=None,
                   help="particle diameter in A (default: 300 for the ribosome family, else drawn from the family's own "
                   "size range; with --model, the model's own size)")
    p.add_argument("--family", choices=ALL_FAMILIES, default=None, help="procedural particle shape (default ribosome)")
    p.add_argument("--model", default=None, help="atomic model file (PDB/mmCIF, may be gzipped) to use as the particle")
    p.add_argument("--defocus", type=_positive(float), nargs=2, default=[0.8, 3.5], metavar=("MIN", "MAX"),
                   help="defocus range in micrometres (default 0.8 3.5)")
    p.add_argument("--voltage", type=_positive(float), default=300.0, help="kV (default 300)")
    p.add_argument("--cs", type=float, default=2.7, help="spherical aberration in mm (default 2.7)")
    p.add_argument("--density", type=_number(float), default=0.25,
                   help="fraction of the area covered by particles (default 0.25)")
    p.add_argument("--contamination", type=_number(float), default=0.5, help="mean ice blobs per micrograph (default 0.5)")
    p.add_argument("--carbon", type=_number(float, upper=1.0), default=0.1,
                   help="probability of a carbon edge per micrograph (default 0.1)")
    p.add_argument("--float", dest="quantise", action="store_false", help="write float counts instead of 8-bit-like exports")
    p.add_argument("--float16", action="store_true", help="store micrographs as float16 (MRC mode 12)")
    p.add_argument("--no_labels", dest="labels", action="store_false", help="do not write label and instance maps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.n < 0:
        print("relion_pixer simulate: --n must be >= 0", file=sys.stderr)
        return 2
    if len(args.snr) > 2:
        print("relion_pixer simulate: --snr takes one value or a range of two", file=sys.stderr)
        return 2
    snr = args.snr[0] if len(args.snr) == 1 else (min(args.snr), max(args.snr))
    extra = {}
    if args.dose is not None:
        snr = None
        extra["dose"] = args.dose
    from relion_pixer.simulate.project import simulate_project

    if (Path(args.out) / "micrographs.star").is_file():
        print(f"relion_pixer simulate: warning: {args.out} already holds a simulated project: files of the same names "
              "are replaced, any others (e.g. micrographs of an earlier, larger --n) stay", file=sys.stderr)

    try:
        out = simulate_project(
            args.out,
            args.n,
            seed=args.seed,
            shape=(args.size, args.size),
            angpix=args.angpix,
            snr=snr,
            diameter_A=args.diameter,
            family=args.family,
            model_file=args.model,
            defocus_um=(min(args.defocus), max(args.defocus)),
            voltage=args.voltage,
            cs=args.cs,
            contamination=args.contamination,
            carbon_probability=args.carbon,
            quantise_8bit=args.quantise,
            density=args.density,
            progress=not args.quiet,
            float16=args.float16,
            labels=args.labels,
            **extra,
        )
    except (ModelFileError, ValueError) as exc:
        print(f"relion_pixer simulate: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"relion_pixer simulate: cannot write {exc.filename or args.out} ({exc.strerror or exc})",
              file=sys.stderr)
        return 1
    print(f"wrote {args.n} micrographs to {out} (micrographs.star, Coordinates/, {'Labels/, ' if args.labels else ''}truth.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
