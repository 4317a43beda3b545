"""GPU readiness: the whole chain on CUDA against the CPU, the CuPy fallback, and when GPU tests skip or fail.

The tests marked ``gpu`` need a CUDA device; on a machine with one they fail (not skip) when an installed CuPy
cannot compile or launch (:func:`conftest.cuda_or_skip`). The others run everywhere, with stand-ins for CUDA.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import cuda_or_skip
from relion_pixer import io, picking
from test_picking import _TensorClaimingCuda

REPO = Path(__file__).resolve().parents[1]


class CUDARuntimeError(RuntimeError):
    """Stand-in for cupy_backends.cuda.api.runtime.CUDARuntimeError."""


def _broken_cupy(calls: list) -> types.ModuleType:
    """A CuPy that imports but cannot launch: every use of the device raises, as on a driver/toolkit mismatch."""

    class Device:
        def __init__(self, index=0):
            calls.append("Device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def from_dlpack(tensor):
        calls.append("from_dlpack")
        raise CUDARuntimeError("cudaErrorNoKernelImageForDevice: no kernel image is available for execution on the device")

    class ndarray:  # noqa: N801 - CuPy's name
        pass

    return types.SimpleNamespace(cuda=types.SimpleNamespace(Device=Device), from_dlpack=from_dlpack, ndarray=ndarray)


@pytest.fixture
def broken_cupy(monkeypatch):
    calls: list = []
    fake = _broken_cupy(calls)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(picking, "_import_cupy", lambda: fake)
    monkeypatch.setattr(picking, "_cupy_available", lambda: True)
    monkeypatch.setattr(picking, "_WARNED", set())
    monkeypatch.setattr(picking, "_CUPY_BROKEN", None)
    return calls


def test_a_cupy_that_cannot_launch_falls_back_to_the_cpu_with_one_warning(broken_cupy, recwarn):
    prob = torch.from_numpy(np.random.default_rng(0).random((128, 160)).astype(np.float32))
    want = picking.pick_centres(prob.numpy(), 16.0)
    with pytest.warns(RuntimeWarning, match="CuPy is installed but cannot compile or launch.*cudaErrorNoKernelImage"):
        got = picking.pick_centres(prob.clone().as_subclass(_TensorClaimingCuda), 16.0)
    np.testing.assert_array_equal(got.xy, want.xy)
    np.testing.assert_array_equal(got.score, want.score)
    assert broken_cupy.count("from_dlpack") == 1
    # later micrographs go straight to the CPU: no second try, no second warning
    recwarn.clear()
    again = picking.pick_centres(prob.clone().as_subclass(_TensorClaimingCuda), 16.0)
    np.testing.assert_array_equal(again.xy, want.xy)
    assert broken_cupy.count("from_dlpack") == 1
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_the_fallback_does_not_hide_bad_maps_or_an_explicit_cupy_backend(broken_cupy):
    with pytest.raises(CUDARuntimeError):
        picking.pick_centres(torch.zeros(64, 64).as_subclass(_TensorClaimingCuda), 16.0, backend="cupy")
    assert picking._CUPY_BROKEN is None  # asked for explicitly: an error, not a silent fallback
    bad = torch.full((64, 64), float("nan")).as_subclass(_TensorClaimingCuda)
    with pytest.warns(RuntimeWarning, match="cannot compile or launch"), pytest.raises(ValueError, match="finite"):
        picking.pick_centres(bad, 16.0)  # on the CPU after the fallback, the map's own error as before


def test_gpu_tests_skip_without_a_device_and_fail_with_a_broken_cupy(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(pytest.skip.Exception, match="no CUDA device"):
        cuda_or_skip()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "cupy" else real_find_spec(name, *a))

    def raw_kernel(source, name):
        raise RuntimeError("nvrtc: error: failed to open libnvrtc-builtins.so.12")

    fake = types.SimpleNamespace(
        cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1)),
        zeros=lambda n, dtype=None: np.zeros(n, np.float32), float32=np.float32, RawKernel=raw_kernel,
        asnumpy=np.asarray)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(pytest.fail.Exception, match="CuPy cannot compile or launch.*libnvrtc"):
        cuda_or_skip()
    # a working stand-in passes the probe
    fake.RawKernel = lambda source, name: (lambda grid, block, args: args[0].__setitem__(slice(None), [1, 2, 3, 4]))
    assert cuda_or_skip() == (torch, fake)


# ---------------------------------------------------------------------------------------------- on a CUDA device


def _simulated(n: int, size: int = 768, seed: int = 4) -> list[np.ndarray]:
    from relion_pixer.simulate import random_config, simulate_micrograph

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        cfg = random_config(rng, snr=0.3, angpix=1.0, particle_diameter_px=100.0, empty=False, n_ice=0,
                            n_aggregates=0, carbon_edge=False, carbon_hole=False)
        images.append(simulate_micrograph(rng, shape=(size, size), **cfg).image.astype(np.float32))
    return images


def _matched(a: np.ndarray, b: np.ndarray, tol: float) -> np.ndarray:
    """For each row of ``a``, whether ``b`` has a point within ``tol``."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros(len(a), bool)
    d = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    return d.min(axis=1) <= tol


@pytest.mark.gpu
@pytest.mark.parametrize("repick", [False, True], ids=["one_pass", "crowded_second_pass"])
def test_whole_pipeline_on_cuda_picks_what_the_cpu_picks(repick, float32_inference, monkeypatch):
    """Segmentation, the climb (CuPy when installed) and the classifier on CUDA against the same chain on the CPU
    (in float32, not the bfloat16 an AMX host would run), with and without the second pass of ``crowded Yes``.

    The GPU's convolutions may use TF32 and other kernels, so the maps differ slightly: picks must agree to within
    2 px (95 % of them both ways) and their figures of merit to 0.05.
    """
    torch_, cupy = cuda_or_skip(need_cupy=False)
    climbs = []
    real_peaks = picking._peaks_cupy
    monkeypatch.setattr(picking, "_peaks_cupy", lambda *a, **k: climbs.append(1) or real_peaks(*a, **k))
    from relion_pixer import models, pipeline
    from relion_pixer.pipeline import PickParams

    cpu_models = models.load_pretrained(None, device="cpu")
    gpu_models = models.load_pretrained(None, device="cuda")
    total = 0
    for image in _simulated(3):
        cpu = pipeline.pick_micrograph(image, 1.0, 100.0, cpu_models, PickParams(device="cpu", repick=repick))
        gpu = pipeline.pick_micrograph(image, 1.0, 100.0, gpu_models, PickParams(device="cuda", repick=repick))
        total += len(cpu.xy)
        assert abs(len(gpu.xy) - len(cpu.xy)) <= max(1, 0.05 * len(cpu.xy))
        assert _matched(cpu.xy, gpu.xy, 2.0).mean() >= 0.95 if len(cpu.xy) else len(gpu.xy) <= 1
        assert _matched(gpu.xy, cpu.xy, 2.0).mean() >= 0.95 if len(gpu.xy) else True
        both = _matched(cpu.xy, gpu.xy, 2.0)
        if both.any():
            d = np.hypot(cpu.xy[both, None, 0] - gpu.xy[None, :, 0], cpu.xy[both, None, 1] - gpu.xy[None, :, 1])
            np.testing.assert_allclose(gpu.fom[d.argmin(axis=1)], cpu.fom[both], atol=0.05)
    assert total > 0
    assert picking._CUPY_BROKEN is None  # a working CuPy was used, not the fallback ...
    assert climbs or cupy is None  # ... and used at all where it is installed


@pytest.mark.gpu
def test_the_job_on_cuda_with_two_workers(tmp_path):
    """``--device cuda --workers 2 --gpu ""``: the job runs on the GPU(s) and picks what the CPU job picks."""
    cuda_or_skip(need_cupy=False)
    from benchmarks import jobrun

    jobrun.write_project(tmp_path, 4, size=512, diameter_A=100.0)
    out = {}
    for name, extra in (("cpu", ["--device", "cpu"]), ("gpu", ["--device", "cuda", "--workers", "2", "--gpu"])):
        cmd = [sys.executable, str(REPO / "external_job.py"), "--o", f"External/{name}/", "--in_mics", jobrun.IN_MICS,
               "--particle_diameter", "100", "--j", "2"] + extra
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=jobrun.job_env())
        assert proc.returncode == 0, proc.stderr
        out[name] = {p.name: io.read_coordinates_star(p) for p in (tmp_path / f"External/{name}/Movies").glob("*.star")
                     if p.stat().st_size}
    assert "worker processes on cuda:" in proc.stdout
    assert out["cpu"].keys() == out["gpu"].keys()
    for key, cpu in out["cpu"].items():
        gpu = out["gpu"][key]
        a = cpu[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)
        b = gpu[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)
        assert _matched(a, b, 2.0 / 0.32 + 1).mean() >= 0.95  # 2 network pixels in micrograph pixels
        assert _matched(b, a, 2.0 / 0.32 + 1).mean() >= 0.95 if len(b) else not len(a)  # and no extra GPU picks
