"""Networks that never saw a protein, for every shared real set, from one recipe (session 23).

Every rule that asks how a setting does on a protein the networks never saw takes, for each real set, networks
trained without that set (``--set_model SET=FILE``: ``tune_defaults.py``, ``tune_size.py``, ``bench_adapt.py``,
``bench_crowd.py``, ``bench_repick.py``, ``loso.py``, ...). Until now those were two hand-written configs for the
two shared sets (``configs/experiments/loso_ribosome_only.toml``, ``loso_apoferritin_only.toml``). This script makes
them for any number of sets, from the sets' metadata files (``common.real_sets``): for each set, the recipe (default
v12's, the shipped weights' own: ``configs/experiments/two_real_sets_v12.toml``) with its ``[[real]]`` entries
replaced by the *train* split of every other set (valid and test splits never train). A set added under
``../shared/data/real`` with its metadata file gets its networks with no code, and the decisions that wait for a
third set run with the ``--set_model`` items this script prints (``docs/benchmarks.md``, "When a new real set
arrives").

Usage (about 8 min of training per set on the project's 2-core CPU, plus 10 min to simulate the replay once)::

    python benchmarks/loso_train.py [--recipe FILE] [--out runs/loso] [--sets SET ...] [--sim_cache DIR] [--dry_run]

Each set's networks go to ``OUT/<set>/model.pt``; ``OUT/<set>`` is a ``relion_pixer train`` run folder (checkpoints,
so a run stopped is resumed by the same command) with ``loso.json`` beside: the recipe and the real entries it was
trained on. A set whose ``model.pt`` exists is skipped. ``--sim_cache DIR`` links (or copies) ``DIR``'s simulated
caches (``sim_*.pt``) into each run folder that has none, so that runs of one recipe share one simulated replay;
without it the first run simulates the replay (10 min, from the recipe's seed) and the others share that one.

Checked in session 23: ``python benchmarks/loso_train.py --sets empiar10146_apoferritin --sim_cache
runs/loso_ribosome_only`` (10 min) gave networks equal bit for bit to ``runs/loso_ribosome_only/model.pt``, trained in
session 21 from ``configs/experiments/loso_ribosome_only.toml`` (v12's recipe with EMPIAR-10028 only): the generic
leave-one-out recipe is the hand-written one, and training is reproducible from one session to the next.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from common import real_sets, write_json

#: The recipe of the shipped weights (pixer_v12).
RECIPE = Path(__file__).resolve().parents[1] / "configs" / "experiments" / "two_real_sets_v12.toml"


def real_entries(sets, left_out: str) -> list[dict]:
    """The ``[[real]]`` entries of the networks that never see ``left_out``: every other set's train split."""
    return [{"micrographs": [str(rs.folder / "micrographs" / f"{name}.mrc") for name in rs.split["train"]],
             "coords": str(rs.folder / "coords"), "diameter": rs.diameter_A, "angpix": rs.angpix}
            for rs in sets if rs.name != left_out]


def share_sim_cache(source: Path, run: Path) -> list[Path]:
    """Hard-link (or, across file systems, copy) ``source``'s simulated caches into ``run`` where it has none of its
    own; the files given."""
    given = []
    if any(run.glob("sim_*.pt")):
        return given
    for cache in sorted(source.glob("sim_*.pt")):
        target = run / cache.name
        try:
            os.link(cache, target)
        except OSError:
            shutil.copy2(cache, target)
        given.append(target)
    return given


def main(argv: list[str] | None = None) -> None:
    from relion_pixer.train import load_config, train

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default=str(RECIPE), help="training config whose [[real]] entries are replaced")
    ap.add_argument("--out", default="runs/loso", help="one run folder per set left out: OUT/<set>")
    ap.add_argument("--sets", nargs="*", help="only the networks that never see these sets (default: every set)")
    ap.add_argument("--sim_cache", help="a run folder of the same recipe whose simulated caches are shared")
    ap.add_argument("--threads", type=int, help="torch threads (default: the recipe's)")
    ap.add_argument("--dry_run", action="store_true", help="write each OUT/<set>/loso.json, train nothing")
    args = ap.parse_args(argv)
    sets = real_sets()
    names = [rs.name for rs in sets]
    if len(sets) < 2:
        raise SystemExit(f"leaving one set out needs two real sets with metadata or more; found {names}")
    chosen = args.sets or names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        ap.error(f"unknown real set(s) {unknown}; the sets are {names}")
    if args.sim_cache and not Path(args.sim_cache).is_dir():
        ap.error(f"--sim_cache {args.sim_cache}: no such folder")
    out = Path(args.out)
    # the runs share one simulated replay: --sim_cache's, else the first run's once it has made it
    cache_from = Path(args.sim_cache) if args.sim_cache else None
    for name in chosen:
        run = out / name
        entries = real_entries(sets, name)
        cfg = load_config(args.recipe, real=tuple(entries), threads=args.threads)
        cfg.name = f"{cfg.name}_without_{name}"
        run.mkdir(parents=True, exist_ok=True)
        write_json(str(run / "loso.json"), {"recipe": str(args.recipe), "left_out": name, "real": entries})
        if (run / "model.pt").is_file():
            print(f"{name}: {run / 'model.pt'} exists, kept", flush=True)
            if cache_from is None and any(run.glob("sim_*.pt")):
                cache_from = run
            continue
        if cache_from is not None and cache_from != run:
            linked = share_sim_cache(cache_from, run)
            if linked:
                print(f"{name}: simulated replay from {cache_from} ({', '.join(p.name for p in linked)})", flush=True)
        trained_on = ", ".join(Path(e["coords"]).parent.name for e in entries)
        if args.dry_run:
            print(f"{name}: would train on {trained_on} ({run / 'loso.json'})", flush=True)
            continue
        print(f"{name}: training without it, on {trained_on}, into {run}", flush=True)
        train(cfg, run, run / "model.pt", resume=True)
        cache_from = cache_from or run
    print(" ".join(f"--set_model {name}={out / name / 'model.pt'}" for name in chosen))


if __name__ == "__main__":
    main()
