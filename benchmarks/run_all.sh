#!/usr/bin/env bash
# Reruns every benchmark behind the README's figures; JSON results land in benchmarks/results/.
# Needs ../shared/data for the real-data figures. About 20-30 min on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p results
PY=${PYTHON:-python3}
$PY bench_real.py --split valid --json results/real_valid.json
$PY bench_real.py --split test --json results/real_test.json
$PY bench_sim.py --snr 0.01 --n 12 --json results/sim_snr0.01.json
$PY bench_sim.py --snr 0.1 --n 12 --json results/sim_snr0.1.json
$PY bench_classifier.py --json results/classifier.json
$PY bench_speed.py --n 5 --threads 2 --json results/speed_cpu.json
$PY bench_picking.py --quick > results/picking.txt
