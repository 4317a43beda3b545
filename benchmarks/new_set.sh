#!/bin/sh
# The decisions that wait for a third real set, in one go (docs/benchmarks.md, "When a new real set arrives").
# A set added under ../shared/data/real/<set>/ with its metadata file needs no code; then, from the repository root:
#
#   sh benchmarks/new_set.sh     # results in benchmarks/results/new_set/ (OUT=... to change); about 30 min plus
#                                # 8 min per set whose networks are not trained yet (on the project's 2-core CPU)
#
# 1. networks that never saw each set, v12's recipe on the other sets' train splits (loso_train.py, 8 min per set;
#    kept in runs/loso/, so a second call reuses them);
# 2. the test splits at the defaults beside the LoG (bench_real.py);
# 3. each pending decision by the rule already written in its script (the table in docs/benchmarks.md): the recipe
#    itself (loso.py), the cuts, margin and the map's edge (tune_defaults.py), the size blend (tune_size.py),
#    check_spacing (bench_crowd.py), crowded (bench_repick.py, fresh simulated seeds) and adapt (bench_adapt.py).
# Each script prints its verdict; a default changes only where its rule says so, by a commit of its own.
set -e
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/results/new_set}
LOSO=${LOSO:-runs/loso}
mkdir -p "$OUT"
CACHE=""
if [ -f runs/loso_ribosome_only/sim_train.pt ]; then CACHE="--sim_cache runs/loso_ribosome_only"; fi
echo "training the networks that never saw each set (progress in $OUT/loso_train.log)"
# shellcheck disable=SC2086
$PY benchmarks/loso_train.py --out "$LOSO" $CACHE > "$OUT/loso_train.log" 2>&1
SM=$(tail -n 1 "$OUT/loso_train.log")
echo "networks that never saw each set: $SM"
$PY benchmarks/bench_real.py --split test --json "$OUT/real_test.json"
# shellcheck disable=SC2086
{
    $PY benchmarks/loso.py $SM --json "$OUT/loso.json"
    $PY benchmarks/tune_defaults.py $SM --json "$OUT/tune_defaults_loso.json"
    $PY benchmarks/tune_defaults.py $SM --edge constant --json "$OUT/tune_defaults_loso_edge_constant.json"
    $PY benchmarks/tune_size.py $SM --json "$OUT/tune_size_loso.json"
    $PY benchmarks/bench_crowd.py --real $SM --json "$OUT/crowd_loso.json"
    $PY benchmarks/bench_crowd.py --real --sets --json "$OUT/crowd_real_shipped.json"
    $PY benchmarks/bench_repick.py --seed_offset 10000 --real --split test $SM --json "$OUT/repick.json"
    $PY benchmarks/bench_adapt.py --sim 0 --score_split test $SM --json "$OUT/adapt_loso_test.json"
    $PY benchmarks/bench_adapt.py --sim 0 --score_split test --json "$OUT/adapt_shipped_test.json"
}
echo "done: $OUT"
