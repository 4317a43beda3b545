"""How detectable are the simulated particles at all? An ideal-observer bound, at native and network scale.

For every true particle of ``bench_sim.py``'s held-apart micrographs (same seeds and settings, so the same
micrographs), this computes the detectability ``d'`` that an ideal observer would have if it knew the particle's
exact noise-free image ``s`` (the simulator's particles' part of the clean image, cut in a box of two diameters and
masked to a disc of 1.5 diameters; a "wide" window of 2.7 and 2 diameters is reported too) and its position: the
prewhitened matched filter,
``d'^2 = sum_k |S_k|^2 / P_N(k)``, with ``P_N`` the noise power spectrum measured on the micrograph's exact noise
(``image - clean``, shot noise plus the ice's structural noise) at random boxes. ``d'`` is the distance, in
standard deviations, between the filter's output with and without the particle.

Any real picker knows less (not the particle's image, orientation or position), so ``d'`` bounds from above what
any method can do with each particle. It is an approximation: the noise spectrum is estimated in boxes without a
taper, and the window matters (the particle's CTF fringes reach beyond its edge, and a wider disc also takes in
touching neighbours): the wide window reads a median ``d'`` about a quarter higher at SNR 0.01, so read the two
bounds as a range. It is computed twice: on the micrograph as recorded (native sampling) and
after the picker's Fourier crop to network scale (particle :data:`relion_pixer.NET_DIAMETER_PX` px), which shows
how much of each particle's information the network scale keeps. Recall of PIXER (defaults) and of the LoG
baseline is reported per ``d'`` bin at network scale, so one can see whether the picker misses particles that
carry the information or only those that do not, and PIXER's recall per particle shape family, with the highest
probability its segmentation map reaches inside each particle's true mask, for all particles and for the missed
ones (low: the network does not see the particle; 0.5 or more: it does, and the picking stage drops it).

For scale: a picker scanning a micrograph must keep false alarms rare among the many particle-sized places
without a particle, so it needs its threshold several standard deviations above the noise; with one false alarm per
100 empty places the threshold is at about 2.3 sd, and finding 90 % of the particles then needs ``d'`` of at least
2.3 + 1.3 = 3.6 for nearly all of them, even for the ideal observer. The script turns this into an F1 bound:
every particle-sized place of the micrograph (``area / (pi r^2)``, of which the particles fill some) is tested
once, with a statistic distributed N(d', 1) at a particle and N(0, 1) elsewhere, at the threshold that maximises
the expected F1. A real picker tests many positions per place, does not know the particles' images, and so does
worse: the bound is generous.

The script also asks whether the picker should use each micrograph's CTF (RELION's ``micrographs_ctf.star`` has
it): beyond the CTF's first zero the particle's signal changes sign from ring to ring with the defocus, so only a
picker that knows the defocus (by phase flipping, say) can add it up. The share of each particle's ``d'^2`` (network
scale) that lies beyond the first zero is the most that knowing the CTF could add. Usage::

    python benchmarks/bench_detectability.py [--snr 0.01] [--n 12] [--angpix 1 --diameter 150 --size 2048]
        [--seed 900000] [--model FILE] [--json OUT]
"""

from __future__ import annotations

import numpy as np
import scipy.fft
import scipy.ndimage
import torch

from bench_sim import sim_arguments, simulate, tuned_log_threshold
from common import picks_from_maps, run_log, segment_all, write_json
from relion_pixer.evaluate import match_picks, matched_filter_dprime
from relion_pixer.models import load_pretrained
from relion_pixer.preprocess import nearest_resample, resample, scale_factor
from relion_pixer.simulate import ctf_2d

#: d' bins (network scale) for the recall table.
BINS = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 10.0, np.inf)
#: d' an ideal observer needs to find 90 % of the particles at about one false alarm per 100 empty places.
NEEDED = 3.6


#: (box side, mask diameter) in particle diameters: the particle and its CTF fringes; and a wider disc that also
#: takes in more of the fringes and any touching neighbour's signal (so it overstates d' a little).
WINDOWS = {"tight": (2.0, 1.5), "wide": (2.7, 2.0)}


def detectability(signal: np.ndarray, noise: np.ndarray, xy: np.ndarray, diameter_px: float,
                  rng: np.random.Generator, window: str = "tight") -> np.ndarray:
    """``d'`` of each particle at ``xy``, the signal cut in a box and masked to a disc (:data:`WINDOWS`)."""
    box, mask = WINDOWS[window]
    return matched_filter_dprime(signal, noise, xy, int(round(box * diameter_px)), 0.5 * mask * diameter_px, rng=rng)


def first_ctf_zero(meta: dict, angpix: float) -> float:
    """Spatial frequency (1/A) of the first zero of a simulated micrograph's CTF (mean defocus; ``inf`` when it
    lies beyond Nyquist at ``angpix``)."""
    mean = 0.5 * (meta["defocus_u"] + meta["defocus_v"])
    ctf = ctf_2d((1, 8192), angpix, meta["voltage"], meta["cs"], meta["amplitude_contrast"], mean, mean, 0.0,
                 phase_shift=meta["phase_shift"])[0]
    below = np.flatnonzero(ctf <= 0.0)
    return float(scipy.fft.rfftfreq(8192, d=angpix)[below[0]]) if len(below) else float("inf")


def lowpass_hard(image: np.ndarray, angpix: float, cutoff: float) -> np.ndarray:
    """``image`` with every spatial frequency at or above ``cutoff`` (1/A) removed."""
    ky = scipy.fft.fftfreq(image.shape[0], d=angpix)[:, None]
    kx = scipy.fft.rfftfreq(image.shape[1], d=angpix)[None, :]
    keep = np.hypot(ky, kx) < cutoff
    return scipy.fft.irfft2(scipy.fft.rfft2(image) * keep, s=image.shape).astype(np.float32)


def ideal_operating_point(dprime: np.ndarray, empty_places: float) -> tuple[float, float, float]:
    """F1, recall and precision of the one-test-per-place ideal observer from its expected counts, ``2 E[TP] /
    (E[TP] + E[FP] + P)``, at the threshold with the best F1 (see the module docstring)."""
    from scipy.stats import norm

    dprime = np.asarray(dprime, np.float64)
    best = (0.0, 0.0, 0.0)
    for t in np.linspace(-2.0, 8.0, 1001):
        tp = norm.sf(t - dprime).sum()
        fp = empty_places * norm.sf(t)
        f1 = 2.0 * tp / (tp + fp + len(dprime))
        if f1 > best[0]:
            best = (float(f1), float(tp / len(dprime)), float(tp / (tp + fp)))
    return best


def f1_bound(dprime: np.ndarray, empty_places: float) -> float:
    """F1 of the one-test-per-place ideal observer at its best threshold (:func:`ideal_operating_point`)."""
    return ideal_operating_point(dprime, empty_places)[0]


def found_truth(picks, mics, radius: float) -> np.ndarray:
    """Whether each true particle (all micrographs in order) has a matching pick."""
    return np.concatenate([
        np.isin(np.arange(len(m.truth)), match_picks(xy, m.truth, radius).true_index) for (xy, _), m in zip(picks, mics)
    ])


def truth_particles(mic, sim) -> np.ndarray:
    """Index, among the simulator's particles, of each true particle of ``mic`` (the nearest centre)."""
    return np.asarray([int(np.argmin(np.hypot(*(sim.coords - p).T))) for p in mic.truth], dtype=np.int64)


def family_of_truth(mics, sims) -> np.ndarray:
    """The shape family of each true particle (all micrographs in order)."""
    out = []
    for m, sim in zip(mics, sims):
        out.extend(sim.meta["families"][sim.species[k]] for k in truth_particles(m, sim))
    return np.asarray(out, dtype=object)


def peak_probability(maps, mics, sims) -> np.ndarray:
    """The highest probability the segmentation map gives inside each true particle's mask (all micrographs in
    order; NaN where the mask vanishes at network scale): whether the network sees a particle at all."""
    out = []
    for (_, prob, _), m, sim in zip(maps, mics, sims):
        prob = np.asarray(prob)
        inst = nearest_resample(np.asarray(sim.instances, np.int32), prob.shape)
        peak = scipy.ndimage.maximum(prob, inst, np.arange(1, len(sim.coords) + 1))
        present = np.bincount(inst.ravel(), minlength=len(sim.coords) + 1)[1:] > 0
        out.extend(np.where(present, peak, np.nan)[truth_particles(m, sim)])
    return np.asarray(out, np.float64)


def recall_by_family(found: np.ndarray, families: np.ndarray, dprime: np.ndarray, peak: np.ndarray) -> dict:
    out = {}
    for f in sorted(set(families)):
        sel = families == f
        missed = sel & ~found
        out[str(f)] = {
            "particles": int(sel.sum()), "recall": float(found[sel].mean()),
            "median_dprime_network": float(np.median(dprime[sel])),
            "median_peak_probability": float(np.nanmedian(peak[sel])),
            # the missed ones: a low peak means the network did not see them, a high one that picking dropped them
            "median_peak_probability_missed": float(np.nanmedian(peak[missed])) if missed.any() else float("nan"),
            "missed_with_peak_above_half": int((missed & (peak >= 0.5)).sum()),
        }
    return out


def recall_by_bin(found: np.ndarray, dprime: np.ndarray) -> list[dict]:
    rows = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        sel = (dprime >= lo) & (dprime < hi)
        rows.append({"lo": lo, "hi": hi, "particles": int(sel.sum()),
                     "recall": float(found[sel].mean()) if sel.any() else float("nan")})
    return rows


def main() -> None:
    args = sim_arguments(__doc__.split("\n\n")[0]).parse_args()
    torch.set_num_threads(args.threads)
    d, d_px = args.diameter, args.diameter / args.angpix
    radius = 0.5 * d_px
    mics, sims = simulate(args.n, args.snr, args.seed, args.size, args.angpix, d, keep_particle_signal=True)
    factor = scale_factor(d, args.angpix)
    rng = np.random.default_rng(args.seed)
    place = np.pi * (0.5 * d_px) ** 2
    empty_places = sum(max(0.0, args.size * args.size / place - len(sim.coords)) for sim in sims)
    # d' of every particle per (scale, window), micrographs in order
    per_mic = {(scale, window): [] for scale in ("native", "network") for window in WINDOWS}
    # the share of d'^2 beyond the first CTF zero at network scale, what only a picker that knows the CTF could
    # add up coherently (own noise boxes, the same for both terms, so the figures above do not change)
    beyond = []
    for i, (m, sim) in enumerate(zip(mics, sims)):
        noise = sim.image - sim.clean
        s_net, fac = resample(sim.particle_signal, factor)
        n_net, _ = resample(noise, factor)
        views = {"native": (sim.particle_signal, noise, m.truth, d_px),
                 "network": (s_net, n_net, m.truth * np.array([fac[1], fac[0]]), d_px * fac[1])}
        for scale, window in per_mic:
            per_mic[scale, window].append(detectability(*views[scale], rng, window))
        angpix_net = args.angpix / fac[1]
        low = lowpass_hard(s_net, angpix_net, first_ctf_zero(sim.meta, angpix_net))
        full2, low2 = (detectability(sig, *views["network"][1:], np.random.default_rng([args.seed, i])) ** 2
                       for sig in (s_net, low))
        beyond.append(1.0 - low2 / np.maximum(full2, 1e-12))
        sim.particle_signal = None  # 16 MB each
    dprime = {key: np.concatenate(v) for key, v in per_mic.items()}
    nat, net = dprime["native", "tight"], dprime["network", "tight"]
    models = load_pretrained(args.model)
    maps = segment_all(mics, d, models)
    pixer = found_truth(picks_from_maps(maps, d, models), mics, radius)
    log_t = tuned_log_threshold(args)
    log = found_truth(run_log(mics, d, log_t), mics, radius)

    q = [10, 50, 90]
    figures = {
        "snr": args.snr, "seed": args.seed, "micrographs": args.n, "size": args.size, "angpix": args.angpix,
        "diameter_A": d, "particles": int(len(nat)),
        "dprime_native_percentiles_10_50_90": [float(v) for v in np.percentile(nat, q)],
        "dprime_network_percentiles_10_50_90": [float(v) for v in np.percentile(net, q)],
        "network_over_native_median": float(np.median(net) / np.median(nat)),
        "fraction_native_above_needed": float((nat >= NEEDED).mean()),
        "fraction_network_above_needed": float((net >= NEEDED).mean()),
        "needed": NEEDED,
        "empty_places": float(empty_places),
        "f1_bound_native": f1_bound(nat, empty_places),
        "f1_bound_network": f1_bound(net, empty_places),
        # how many particles the ideal observer finds there, and how many of its picks are particles
        "recall_precision_at_f1_bound_network": list(ideal_operating_point(net, empty_places)[1:]),
        # the wide window: more fringes and any touching neighbour's signal counted (overstates d' a little)
        "dprime_native_median_wide": float(np.median(dprime["native", "wide"])),
        "f1_bound_native_wide": f1_bound(dprime["native", "wide"], empty_places),
        "f1_bound_network_wide": f1_bound(dprime["network", "wide"], empty_places),
        "recall_by_network_dprime": {"pixer": recall_by_bin(pixer, net), "log": recall_by_bin(log, net)},
        "recall_by_family": recall_by_family(pixer, family_of_truth(mics, sims), net,
                                             peak_probability(maps, mics, sims)),
        "log_threshold": log_t,
        "dprime2_share_beyond_first_ctf_zero_percentiles_10_50_90": [
            float(v) for v in np.percentile(np.concatenate(beyond), q)],
    }
    print(f"simulated, SNR {args.snr:g}, {args.n} micrographs of {args.size} px, particles {d_px:.0f} px "
          f"({len(nat)} particles)")
    print("ideal-observer d' (knows each particle's exact image and position), 10th / 50th / 90th percentile:")
    print(f"  native sampling   {' / '.join(f'{v:.1f}' for v in figures['dprime_native_percentiles_10_50_90'])}"
          f"   ({figures['fraction_native_above_needed']:.0%} of particles at d' >= {NEEDED})")
    print(f"  network scale     {' / '.join(f'{v:.1f}' for v in figures['dprime_network_percentiles_10_50_90'])}"
          f"   ({figures['fraction_network_above_needed']:.0%} at d' >= {NEEDED}; the median is "
          f"{figures['network_over_native_median']:.0%} of the native one)")
    print(f"ideal-observer F1 bound (one test per particle-sized place, {empty_places:.0f} empty places): native "
          f"{figures['f1_bound_native']:.3f}, network scale {figures['f1_bound_network']:.3f}; with the wide window "
          f"(median native d' {figures['dprime_native_median_wide']:.1f}) {figures['f1_bound_native_wide']:.3f} / "
          f"{figures['f1_bound_network_wide']:.3f}")
    print("at its best F1 (network scale) the ideal observer finds {:.0%} of the particles, at precision {:.0%}".format(
        *figures["recall_precision_at_f1_bound_network"]))
    print("share of d'^2 (network scale) beyond the first CTF zero, 10th / 50th / 90th percentile: " + " / ".join(
        f"{v:.1%}" for v in figures["dprime2_share_beyond_first_ctf_zero_percentiles_10_50_90"])
          + " (what a picker that knows each micrograph's CTF could add up that one that does not cannot)")
    print("recall by network-scale d':   " + "  ".join(
        f"[{r['lo']:g},{r['hi']:g}) n={r['particles']}" for r in figures["recall_by_network_dprime"]["pixer"]))
    for name in ("pixer", "log"):
        print(f"  {name:6s}" + "".join(f"{r['recall']:>11.2f}" if r["particles"] else f"{'-':>11s}"
                                       for r in figures["recall_by_network_dprime"][name]))
    print("PIXER recall by particle family (median network-scale d'; median highest probability in the true mask): "
          + ", ".join(f"{f} {r['recall']:.2f} ({r['median_dprime_network']:.1f}; {r['median_peak_probability']:.2f}, "
                      f"n={r['particles']})" for f, r in figures["recall_by_family"].items()))
    missed = {f: r for f, r in figures["recall_by_family"].items() if r["recall"] < 1.0}
    print("missed particles, median highest probability in the true mask (how many reach 0.5 or more): " + ", ".join(
        f"{f} {r['median_peak_probability_missed']:.2f} ({r['missed_with_peak_above_half']} of "
        f"{round(r['particles'] * (1.0 - r['recall']))})" for f, r in missed.items()))
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
