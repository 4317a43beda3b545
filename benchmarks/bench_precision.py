"""bfloat16 against float32 inference on the CPU: the same picks, in less time?

CPUs with AMX tiles (Intel Sapphire Rapids and later) multiply bfloat16 matrices in hardware; there the networks'
convolutions run about twice as fast in bfloat16 (``torch.autocast``), at about three significant digits. This
benchmark picks the same micrographs both ways (``relion_pixer.models.CPU_PRECISION``), exactly as a job does
(defaults, the size estimate), and compares:

- every shared real set (``../shared/data/real``): P / R / F1 at the defaults and the figure of merit's average
  precision, on the train + valid splits (these decide) and on the test split (reported only);
- the simulated regression guards of ``bench_sim.py`` (SNR 0.1 and 0.01, 150 px particles, its seeds);
- the share of picks the two precisions make at the same place (within a tenth of a diameter).

The time per micrograph is ``bench_speed.py``'s, run once per precision with ``RELION_PIXER_CPU_PRECISION`` set.

**The rule, written before the run that decides it:** ``"auto"`` (bfloat16 on CPUs with AMX, float32 elsewhere)
becomes the default only if, against float32 on the same machine,

1. on the train + valid splits of every real set, F1 at the defaults falls by at most 0.003 and the figure-of-merit
   average precision by at most 0.003;
2. on each simulated guard (SNR 0.1 and 0.01, ``--sim_n`` micrographs), F1 falls by at most 0.005;
3. ``bench_speed.py --k3 --profile`` per K3 micrograph in steady state falls by at least 15 % (given here as
   ``--k3_json FLOAT32.json BFLOAT16.json``, the two ``bench_speed.py`` runs' JSON files, or their
   ``seconds_per_micrograph`` as ``--k3_seconds``).

Otherwise the default stays float32 and bfloat16 stays an option.

``--networks_only`` times just the two networks in both precisions on a K3-sized case (the classifier on 624 boxes,
the segmenter on a 906 x 1275 network image). Run with ``ONEDNN_MAX_CPU_ISA`` set (``AVX512_CORE_BF16``: bfloat16
dot products without AMX, as on AMD Zen 4; ``AVX2``), it shows what bfloat16 costs on CPUs without AMX. Usage::

    RELION_PIXER_CPU_PRECISION=float32 python benchmarks/bench_speed.py --k3 --profile --n 10 \
        --json benchmarks/results/speed_k3_cpu_float32.json
    RELION_PIXER_CPU_PRECISION=bfloat16 python benchmarks/bench_speed.py --k3 --profile --n 10 \
        --json benchmarks/results/speed_k3_cpu_bfloat16.json
    python benchmarks/bench_precision.py --k3_json benchmarks/results/speed_k3_cpu_float32.json \
        benchmarks/results/speed_k3_cpu_bfloat16.json --json benchmarks/results/precision.json
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python benchmarks/bench_precision.py --networks_only
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from bench_real import average_precisions, pixer_picks
from bench_sim import simulate
from common import picks_from_maps, real_sets, score, segment_all, write_json
from relion_pixer import models as models_mod
from relion_pixer.evaluate import match_picks
from relion_pixer.models import load_pretrained
from relion_pixer.pipeline import PickParams

PRECISIONS = ("float32", "bfloat16")
#: Rule thresholds (see the module docstring).
MAX_REAL_F1_LOSS = 0.003
MAX_REAL_AP_LOSS = 0.003
MAX_SIM_F1_LOSS = 0.005
MIN_K3_SPEEDUP = 0.15
#: Simulated guards: (SNR, seed) as bench_sim.py draws them.
SIM_SNRS = (0.1, 0.01)
SIM_SEED = 900_000


def same_place(a, b, radius: float) -> float:
    """Share of the picks in ``a`` and ``b`` (lists of (xy, fom)) that pair up within ``radius``."""
    pairs = sum(len(match_picks(x[0], y[0], radius).pred_index) for x, y in zip(a, b))
    total = sum(len(x[0]) + len(y[0]) for x, y in zip(a, b))
    return 2.0 * pairs / total if total else 1.0


def run_real(models, params, splits: tuple[str, ...]) -> dict:
    out = {}
    for rs in real_sets():
        mics = rs.micrographs(*splits)
        per = {}
        for precision in PRECISIONS:
            models_mod.CPU_PRECISION = precision
            t0 = time.perf_counter()
            picks, every, d_used, est = pixer_picks(mics, rs.diameter_A, models, params, True)
            per[precision] = {"scores": score(picks, mics, rs.radius_px),
                              "average_precision": average_precisions(every, mics, rs.radius_px),
                              "size_estimate_A": est, "seconds_per_micrograph": (time.perf_counter() - t0) / len(mics),
                              "_picks": picks}
        agree = same_place(per["float32"].pop("_picks"), per["bfloat16"].pop("_picks"), 0.1 * 2 * rs.radius_px)
        out[rs.name] = {**per, "same_place": agree, "micrographs": len(mics),
                        "f1_change": per["bfloat16"]["scores"]["f1"] - per["float32"]["scores"]["f1"],
                        "fom_ap_change": per["bfloat16"]["average_precision"]["fom"]
                        - per["float32"]["average_precision"]["fom"]}
    return out


def run_sim(models, n: int) -> dict:
    out = {}
    d, angpix, size = 150.0, 1.0, 2048
    for snr in SIM_SNRS:
        mics, _ = simulate(n, snr, SIM_SEED, size, angpix, d)
        per = {}
        for precision in PRECISIONS:
            models_mod.CPU_PRECISION = precision
            picks = picks_from_maps(segment_all(mics, d, models), d, models, PickParams())
            per[precision] = {"scores": score(picks, mics, 0.5 * d / angpix), "_picks": picks}
        agree = same_place(per["float32"].pop("_picks"), per["bfloat16"].pop("_picks"), 0.1 * d / angpix)
        out[f"snr{snr:g}"] = {**per, "same_place": agree, "micrographs": n,
                              "f1_change": per["bfloat16"]["scores"]["f1"] - per["float32"]["scores"]["f1"]}
    return out


def network_times(models, rounds: int = 5) -> dict:
    """Median seconds of the classifier on 624 boxes (batches of 256) and of the segmenter on a 906 x 1275 image,
    in each precision."""
    from relion_pixer.models import inference_autocast, using_cpu_precision

    gen = torch.Generator().manual_seed(0)
    boxes = torch.randn(624, 1, 64, 64, generator=gen).contiguous(memory_format=torch.channels_last)
    image = torch.randn(1, 1, 906, 1275, generator=gen).contiguous(memory_format=torch.channels_last)
    out = {}
    for precision in PRECISIONS:
        with using_cpu_precision(precision), torch.inference_mode():
            def cls():
                with inference_autocast("cpu"):
                    for i in range(0, len(boxes), 256):
                        models.classifier(boxes[i : i + 256])

            def seg():
                with inference_autocast("cpu"):
                    models.segmenter(image)

            for name, fn in (("classifier_s", cls), ("segmenter_s", seg)):
                fn()
                times = []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t0)
                out.setdefault(precision, {})[name] = float(np.median(times))
    return out


def decide_rule(decide_sets: dict, sims: dict, k3: tuple[float, float] | None) -> dict:
    checks = {}
    for name, r in decide_sets.items():
        checks[f"{name} F1 change >= -{MAX_REAL_F1_LOSS}"] = r["f1_change"] >= -MAX_REAL_F1_LOSS
        checks[f"{name} figure-of-merit AP change >= -{MAX_REAL_AP_LOSS}"] = r["fom_ap_change"] >= -MAX_REAL_AP_LOSS
    for name, r in sims.items():
        checks[f"{name} F1 change >= -{MAX_SIM_F1_LOSS}"] = r["f1_change"] >= -MAX_SIM_F1_LOSS
    if k3 is None:
        checks["K3 time given"] = False
    else:
        checks[f"K3 time falls by >= {MIN_K3_SPEEDUP:.0%}"] = k3[1] <= (1.0 - MIN_K3_SPEEDUP) * k3[0]
    return {"checks": checks, "bfloat16_on_amx_default": all(checks.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model file (default: shipped weights)")
    ap.add_argument("--sim_n", type=int, default=8, help="simulated micrographs per guard")
    ap.add_argument("--k3_seconds", type=float, nargs=2, metavar=("FLOAT32", "BFLOAT16"),
                    help="bench_speed.py --k3 per-micrograph seconds, float32 then bfloat16")
    ap.add_argument("--k3_json", nargs=2, metavar=("FLOAT32", "BFLOAT16"),
                    help="bench_speed.py --k3 JSON files, float32 then bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--networks_only", action="store_true",
                    help="only time the two networks in both precisions (see ONEDNN_MAX_CPU_ISA above)")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.k3_json:
        args.k3_seconds = [json.load(open(f))["seconds_per_micrograph"] for f in args.k3_json]
    torch.set_num_threads(args.threads)
    if models_mod.cpu_precision("auto") != "bfloat16":
        print("note: no AMX here (or oneDNN is limited below it): precision auto means float32, and bfloat16 runs "
              "slowly; the comparison of picks stands")
    models = load_pretrained(args.model)
    if args.networks_only:
        import os

        times = network_times(models)
        isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "all the CPU has")
        for precision, t in times.items():
            print(f"{precision} (oneDNN ISA: {isa}): classifier {t['classifier_s']:.3f} s for 624 boxes, segmenter "
                  f"{t['segmenter_s']:.3f} s for 906 x 1275")
        write_json(args.json, {"onednn_max_cpu_isa": isa, "seconds": times})
        return
    params = PickParams()
    decide_sets = run_real(models, params, ("train", "valid"))
    test_sets = run_real(models, params, ("test",))
    sims = run_sim(models, args.sim_n)
    rule = decide_rule(decide_sets, sims, tuple(args.k3_seconds) if args.k3_seconds else None)
    figures = {"amx": models_mod.cpu_precision("auto") == "bfloat16", "train_valid": decide_sets, "test": test_sets,
               "simulated": sims, "k3_seconds": dict(zip(PRECISIONS, args.k3_seconds or ())), "rule": rule}
    for label, group in (("train + valid (decide)", decide_sets), ("test (reported)", test_sets),
                         ("simulated guards", sims)):
        print(label)
        for name, r in group.items():
            a, b = r["float32"], r["bfloat16"]
            line = (f"  {name}: F1 {a['scores']['f1']:.4f} -> {b['scores']['f1']:.4f} ({r['f1_change']:+.4f}); "
                    f"same place {r['same_place']:.3f}")
            if "average_precision" in a:
                line += (f"; fom AP {a['average_precision']['fom']:.4f} -> {b['average_precision']['fom']:.4f}; "
                         f"{a['seconds_per_micrograph']:.2f} -> {b['seconds_per_micrograph']:.2f} s per micrograph")
            print(line)
    for k, v in rule["checks"].items():
        print(f"  {'met' if v else 'NOT met'}: {k}")
    print("rule: " + ("bfloat16 on AMX CPUs becomes the default" if rule["bfloat16_on_amx_default"]
                      else "the default stays float32"))
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
