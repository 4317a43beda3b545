#!/usr/bin/env bash
# Reruns every benchmark behind the figures in docs/benchmarks.md; JSON results land in benchmarks/results/.
# Needs ../shared/data for the real-data figures. About 20-30 min on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p results
PY=${PYTHON:-python3}
$PY tune_decision.py --json results/tune_decision.json
$PY tune_size.py --json results/tune_size.json
$PY calibrate_size.py --json results/calibrate_size.json
$PY tune_defaults.py --json results/tune_defaults.json
$PY bench_size_blobs.py --json results/size_blobs.json
$PY bench_size_confidence.py --json results/size_confidence.json
# every shared real set (with its diameter sweep, 0.8x-1.25x): the main yardstick
$PY bench_real.py --split test --json results/real_test.json --picture ../docs/real_test_picks.png
# what apoferritin's picks without a label look like (docs/empiar10146_apoferritin_test_unmatched.png)
$PY bench_real.py --split test --sets empiar10146_apoferritin --no_sweep --gallery ../docs
$PY bench_decision.py --json results/decision.json
$PY bench_decision.py --seed 890000 --json results/decision_seed890000.json  # fresh seeds: the ice-and-carbon rule
$PY bench_decision.py --n 4 --json results/decision_n4.json
$PY bench_decision.py --families shell --json results/decision_shell.json  # thin-walled shells, a family no network saw
# the particle veto's dark spare, on and off, by its rule (session 29; left off)
for sp in -1 off; do
  n=$([ $sp = off ] && echo off || echo on)
  $PY bench_decision.py --families shell --seed 910000 --dark_spare $sp --json results/dark_spare/shell_$n.json
  $PY bench_decision.py --seed 900000 --dark_spare $sp --json results/dark_spare/decision_$n.json
  $PY bench_real.py --split test --dark_spare $sp --json results/dark_spare/real_$n.json
  $PY bench_real.py --split test --no_sweep --sets empiar10028_ribosome80S --model ../runs/loso_apoferritin_only/model.pt --dark_spare $sp --json results/dark_spare/real_loso_rib_$n.json
  $PY bench_real.py --split test --no_sweep --sets empiar10146_apoferritin --model ../runs/loso_ribosome_only/model.pt --dark_spare $sp --json results/dark_spare/real_loso_apo_$n.json
  for snr in 0.1 0.01; do $PY bench_sim.py --snr $snr --dark_spare $sp --json results/dark_spare/sim_snr${snr}_$n.json; done
done
# binned micrographs; the contrast check (micrographs with light particles)
for b in 2 4; do $PY bench_real.py --split test --bin $b --no_sweep --json results/real_test_bin$b.json; done
$PY bench_polarity.py --picks --json results/polarity.json
# self-training in the job (adapt Yes): before / after on every real set and an unseen simulated family; its cost
$PY bench_adapt.py --sim 4 --json results/adapt.json
$PY bench_adapt.py --cost --json results/adapt_cost.json
# leave one set out: each real set read by the model of v12's recipe that never saw its protein. The models come
# from `relion_pixer train --config ../configs/experiments/loso_{ribosome,apoferritin}_only.toml ...` (8 min each,
# commands in the configs; `python benchmarks/loso_train.py` makes the same networks, bit for bit, for every real
# set, and `sh benchmarks/new_set.sh` runs the pending decisions with them); skipped when they are absent
LOSO=(--set_model empiar10028_ribosome80S=../runs/loso_apoferritin_only/model.pt
      --set_model empiar10146_apoferritin=../runs/loso_ribosome_only/model.pt)
if [[ -f ../runs/loso_apoferritin_only/model.pt && -f ../runs/loso_ribosome_only/model.pt ]]; then
  # the variants of the recipe trained so far (configs/experiments/loso_*_only_VARIANT.toml), each where both exist
  VARIANTS=()
  for v in jitter shell atomic seed1 real35; do
    if [[ -f ../runs/loso_ribosome_only_$v/model.pt && -f ../runs/loso_apoferritin_only_$v/model.pt ]]; then
      VARIANTS+=(--variant $v=../runs/loso_ribosome_only_$v/model.pt,../runs/loso_apoferritin_only_$v/model.pt)
    fi
  done
  $PY loso.py --ribosome_only ../runs/loso_ribosome_only/model.pt --apoferritin_only ../runs/loso_apoferritin_only/model.pt \
      "${VARIANTS[@]}" --json results/experiments/loso_variants.json
  $PY tune_size.py "${LOSO[@]}" --json results/tune_size_loso.json
  $PY tune_defaults.py "${LOSO[@]}" --json results/tune_defaults_loso.json
  # the map's edge (session 23): reflected (the job's) against zeros beyond the edge
  $PY tune_defaults.py "${LOSO[@]}" --edge reflect --json results/tune_defaults_loso_edge_reflect.json
  $PY tune_defaults.py "${LOSO[@]}" --edge constant --json results/tune_defaults_loso_edge_constant.json
  $PY tune_veto.py "${LOSO[@]}" --json results/tune_veto.json
  $PY tune_decision.py "${LOSO[@]}" --json results/tune_decision_loso.json
  $PY tune_decision.py "${LOSO[@]}" --n_sim 16 --json results/tune_decision_loso_spare.json
  $PY bench_tta.py "${LOSO[@]}" --json results/tta.json
  $PY bench_scales.py "${LOSO[@]}" --json results/experiments/scales.json
  if [[ -f ../runs/loso_ribosome_only_seed1/model.pt && -f ../runs/loso_apoferritin_only_real35/model.pt ]]; then
    $PY bench_ensemble.py --ensemble seeds=base,seed1 --ensemble recipes=base,seed1,jitter,atomic,real35 \
        --json results/experiments/ensemble.json
  fi
  $PY bench_adapt.py --sim 0 "${LOSO[@]}" --json results/adapt_loso.json
  $PY bench_adapt.py --sim 0 --score_split test "${LOSO[@]}" --json results/adapt_loso_test.json
  $PY tune_adapt.py "${LOSO[@]}" --json results/tune_adapt.json
  $PY tune_adapt.py --round 2 "${LOSO[@]}" --json results/tune_adapt_round2.json
  $PY tune_adapt.py --round 3 "${LOSO[@]}" --json results/tune_adapt_round3.json
  $PY tune_adapt.py --round 4 "${LOSO[@]}" --json results/tune_adapt_round4.json
  # the spacing check's rules 2-4 measured it with one pass (--spacing_second_pass No); rule 5 with both, the default
  $PY bench_crowd.py --spacing_second_pass No --real "${LOSO[@]}" --json results/crowd_loso.json
  $PY bench_crowd.py --spacing_second_pass No --rounds 3 --real --sets "${LOSO[@]}" --json results/crowd_rounds3_real_loso.json
  $PY bench_crowd.py --spacing_second_pass No --real --sets "${LOSO[@]}" --json results/crowd_s25_real_loso.json
  $PY bench_crowd.py --spacing_second_pass Yes --real --sets "${LOSO[@]}" --json results/crowd_pass2_real_loso.json
  # adapt's bound on a fall of held-out picks (session 25), on the real test splits
  $PY bench_adapt.py --sim 0 --score_split test --config '{"max_count_fall": 0.07, "max_micrograph_rise": null, "reestimate_nearer": false}' \
      "${LOSO[@]}" --json results/adapt_fall_loso_test.json
  # adapt's bound per micrograph (session 26), on the real test splits (with it off: adapt_loso_test_session25.json)
  $PY bench_adapt.py --sim 0 --score_split test --config '{"max_micrograph_rise": 0.3, "reestimate_nearer": false}' \
      "${LOSO[@]}" --json results/adapt_micrograph_loso_test.json
  $PY bench_adapt.py --sim 0 --score_split test --config '{"reestimate": false}' "${LOSO[@]}" \
      --json results/adapt_reestimate_off_loso_test.json
  for v in true false; do
    $PY bench_adapt.py --sim 0 --score_split test --config "{\"reestimate_nearer\": $v}" "${LOSO[@]}" \
        --json results/adapt_nearer_loso_test$([[ $v == false ]] && echo _off).json
  done
  # crowded Yes, the second pass (round 2 decides on the real test splits; round 1 was the pass without its darkness
  # check, so rerunning its command now measures round 2's pass on round 1's data)
  $PY bench_repick.py --fom_percentile 0 --seed_offset 6000 --real --split test "${LOSO[@]}" --json results/repick_round2.json
  # round 4: the figure-of-merit check (the job's pass since session 24, and crowded Yes the default), and without it
  $PY bench_repick.py --fom_percentile 5 --seed_offset 9000 --real --split test "${LOSO[@]}" --json results/repick_round4.json
  $PY bench_repick.py --fom_percentile 0 --seed_offset 9000 --real --split test "${LOSO[@]}" --json results/repick_round4_base.json
  $PY tune_sigma.py "${LOSO[@]}" --json results/tune_sigma.json
  $PY bench_size_profile.py "${LOSO[@]}" --json results/size_profile.json
fi
# crowded micrographs and the pick-spacing check; the size estimate's gates at low SNR
# (rules 1-4 of bench_crowd.py measured the check with one pass: --spacing_second_pass No reproduces them)
CROWD1=(--spacing_second_pass No)
$PY bench_crowd.py "${CROWD1[@]}" --json results/crowd.json
$PY bench_crowd.py "${CROWD1[@]}" --real --sets --json results/crowd_real_shipped.json
$PY bench_crowd.py "${CROWD1[@]}" --sets crowded_small crowded_small_noisy --json results/crowd_small.json
$PY bench_crowd.py "${CROWD1[@]}" --rounds 3 --seed_offset 1000 --sets crowded moderate noisy crowded_small \
    crowded_small_noisy --json results/crowd_rounds3.json
$PY bench_crowd.py "${CROWD1[@]}" --rounds 1 --seed_offset 1000 --sets crowded_small crowded_small_noisy \
    --json results/crowd_rounds1.json
$PY bench_crowd.py "${CROWD1[@]}" --rounds 3 --real --sets --json results/crowd_rounds3_real_shipped.json
$PY bench_crowd.py "${CROWD1[@]}" --seed_offset 11000 --sets crowded moderate noisy crowded_small crowded_small_noisy \
    --json results/crowd_s25.json
$PY bench_crowd.py "${CROWD1[@]}" --real --sets --json results/crowd_s25_real_shipped.json
# rule 5 (session 25): the check measured with both passes, the job's default since
$PY bench_crowd.py --spacing_second_pass Yes --seed_offset 15000 --sets crowded moderate noisy crowded_small \
    crowded_small_noisy --json results/crowd_pass2.json
$PY bench_crowd.py --spacing_second_pass Yes --real --sets --json results/crowd_pass2_real_shipped.json
# adapt on crowded micrographs and its bound on a fall of held-out picks (session 25)
CROWDED_ADAPT=(--sets --sim 0 --crowd_sets crowded_small crowded_small_noisy --crowd_given 1 1.12 1.25)
$PY bench_adapt.py "${CROWDED_ADAPT[@]}" --check_spacing No --crowd_seed_offset 14000 \
    --config '{"max_count_fall": 0.3, "max_micrograph_rise": null, "reestimate_nearer": false}' --json results/adapt_fall_crowded_base.json
$PY bench_adapt.py "${CROWDED_ADAPT[@]}" --check_spacing No --crowd_seed_offset 14000 \
    --config '{"max_count_fall": 0.07, "max_micrograph_rise": null, "reestimate_nearer": false}' \
    --json results/adapt_fall_crowded.json
$PY bench_adapt.py "${CROWDED_ADAPT[@]}" --crowd_seed_offset 14000 \
    --config '{"max_micrograph_rise": null, "reestimate_nearer": false}' \
    --json results/adapt_crowded_s25_check.json
$PY bench_adapt.py --sim 4 --config '{"max_count_fall": 0.07, "max_micrograph_rise": null, "reestimate_nearer": false}' \
    --json results/adapt_fall_shipped.json
# adapt on families no network saw, and its bound on a rise of picks per micrograph (session 26; _off: the bound off)
$PY bench_adapt.py --sets --sim 8 --sim_families smooth shell \
    --config '{"max_micrograph_rise": null, "reestimate_nearer": false}' --json results/adapt_micrograph_design_sim.json
for off in 2000 4000; do
  for b in 0.3 null; do
    $PY bench_adapt.py --sets --sim 8 --sim_families smooth shell --sim_seed_offset $off \
        --config "{\"max_micrograph_rise\": $b, \"reestimate_nearer\": false}" \
        --json results/adapt_micrograph_sim$off$([[ $b == null ]] && echo _off).json
  done
done
for b in 0.3 null; do
  $PY bench_adapt.py "${CROWDED_ADAPT[@]}" --crowd_seed_offset 16000 \
      --config "{\"max_micrograph_rise\": $b, \"reestimate_nearer\": false}" \
      --json results/adapt_micrograph_crowded$([[ $b == null ]] && echo _off).json
done
$PY bench_adapt.py --sim 0 --config '{"max_micrograph_rise": 0.3, "reestimate_nearer": false}' \
    --json results/adapt_micrograph_shipped.json
# the size measured again only toward the diameter given (session 26): design (reestimate off), rule (nearer on / off)
for off in 0 2000 4000; do
  $PY bench_adapt.py --sets --sim 8 --sim_families smooth shell --sim_seed_offset $off --config '{"reestimate": false}' \
      --json results/adapt_reestimate_off_sim$off.json
  $PY bench_adapt.py --sets --sim 8 --sim_families smooth shell --sim_seed_offset $off --json results/adapt_guards_sim$off.json
done
for v in true false; do
  sfx=$([[ $v == false ]] && echo _off)
  for off in 6000 8000 10000; do
    $PY bench_adapt.py --sets --sim 8 --sim_families smooth shell --sim_seed_offset $off \
        --config "{\"reestimate_nearer\": $v}" --json results/adapt_nearer_sim$off$sfx.json
  done
  $PY bench_adapt.py --sim 0 --config "{\"reestimate_nearer\": $v}" --json results/adapt_nearer_shipped$sfx.json
  $PY bench_adapt.py "${CROWDED_ADAPT[@]}" --crowd_seed_offset 17000 --config "{\"reestimate_nearer\": $v}" \
      --json results/adapt_nearer_crowded$sfx.json
done
$PY bench_crowd_stages.py --real --json results/crowd_stages.json
for sp in train valid; do
  $PY bench_real.py --split $sp --spacing Yes --json results/spacing_real_${sp}_on.json
  $PY bench_real.py --split $sp --spacing No --no_sweep --json results/spacing_real_${sp}_off.json
done
for g in confidence edge; do $PY gate_size.py --gate $g --json results/gate_size_$g.json; done
$PY bench_context.py --json results/context.json
for snr in 0.01 0.1; do
  $PY bench_sim.py --snr $snr --n 12 --json results/sim_snr${snr}_150px.json
  $PY bench_sim.py --snr $snr --n 12 --angpix 2.5 --diameter 200 --size 1024 --json results/sim_snr${snr}_80px.json
done
# how detectable the particles are at all: ideal-observer d' and F1 bound on the same held-apart micrographs
for snr in 0.01 0.1; do
  $PY bench_detectability.py --snr $snr --json results/detectability_snr${snr}_150px.json
done
$PY bench_detectability.py --snr 0.01 --angpix 2.5 --diameter 200 --size 1024 --json results/detectability_snr0.01_80px.json
# high SNR (denoised-looking data): clearly visible particles must not be lost
for snr in 1 10; do
  $PY bench_sim.py --snr $snr --n 12 --json results/sim_snr${snr}_150px.json
done
# Volta phase plate (90 degrees): dark blobs without CTF fringes
for snr in 0.1 1; do
  $PY bench_sim.py --snr $snr --n 12 --phase_shift 90 --json results/sim_snr${snr}_150px_phaseplate.json
done
# featureless particles of uniform density (the simulator's "smooth" family, outside the training mix): with CTF
# fringes, and in focus with a phase plate (no fringes); beside them the same in-focus case with the globular family
for snr in 0.1 1 10; do
  $PY bench_sim.py --snr $snr --n 12 --families smooth --json results/sim_snr${snr}_150px_smooth.json
done
$PY bench_sim.py --snr 1 --n 12 --families smooth --phase_shift 90 --defocus 0.02 --json results/sim_snr1_150px_smooth_infocus.json
$PY bench_sim.py --snr 1 --n 12 --families globular --phase_shift 90 --defocus 0.02 --json results/sim_snr1_150px_globular_infocus.json
$PY bench_empty.py --json results/empty.json
# featureless blobs on plain white noise, without any CTF or ice
$PY bench_contrast.py --json results/contrast.json
$PY bench_classifier.py --json results/classifier.json
$PY bench_segment.py --json results/segment_cpu.json
$PY bench_speed.py --n 5 --threads 2 --json results/speed_cpu.json
$PY bench_speed.py --k3 --profile --n 10 --threads 2 --json results/speed_k3_cpu.json
# bfloat16 against float32 inference on the CPU (the default's choice; bfloat16 is fast only on CPUs with AMX)
for p in float32 bfloat16; do
  RELION_PIXER_CPU_PRECISION=$p $PY bench_speed.py --k3 --profile --n 10 --threads 2 --json results/speed_k3_cpu_$p.json
done
$PY bench_precision.py --k3_json results/speed_k3_cpu_float32.json results/speed_k3_cpu_bfloat16.json --json results/precision.json
$PY bench_throughput.py --n 24 --size 4096 --repeat 3 --json results/throughput_cpu.json
$PY bench_picking.py --quick > results/picking.txt
$PY ablation_branches.py --steps 300 --sim_train 120 --sim_valid 8 --out results/ablation
$PY bench_finetune.py --control --json results/finetune.json
