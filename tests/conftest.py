"""Shared pytest fixtures."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data``; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture
def float32_inference():
    """The networks run in float32 on the CPU (for tests that compare two computations to float precision; the
    default runs bfloat16 where the CPU has AMX)."""
    from relion_pixer.models import using_cpu_precision

    with using_cpu_precision("float32"):
        yield


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


#: A kernel CuPy must compile (NVRTC) and launch for the GPU tests to count as runnable.
_PROBE_KERNEL = 'extern "C" __global__ void probe(float* x) { x[threadIdx.x] = 1.0f + threadIdx.x; }'


def cuda_or_skip(need_cupy: bool = True):
    """``(torch, cupy or None)`` for a GPU test: skip without a CUDA device, fail when the device is unusable.

    Without a CUDA device (torch sees none) the test is skipped. With one, a CuPy that is installed but cannot
    import, compile or launch a small kernel fails the test (a GPU machine whose GPU path is broken must not pass
    by skipping). CuPy not installed at all skips only when ``need_cupy`` (``make setup`` installs the ``[gpu]``
    extra on a machine with a CUDA device); otherwise the test runs with ``cupy`` None.
    """
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if importlib.util.find_spec("cupy") is None:
        if need_cupy:
            pytest.skip("cupy is not installed (make setup installs the [gpu] extra where nvidia-smi lists a GPU)")
        return torch, None
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("CuPy sees no CUDA device, torch sees one")
        x = cupy.zeros(4, dtype=cupy.float32)
        cupy.RawKernel(_PROBE_KERNEL, "probe")((1,), (4,), (x,))
        got = cupy.asnumpy(x).tolist()
        if got != [1.0, 2.0, 3.0, 4.0]:
            raise RuntimeError(f"the probe kernel wrote {got}")
    except Exception as exc:  # noqa: BLE001 - any failure of an installed CuPy on a CUDA machine is a failure
        pytest.fail(f"a CUDA device is visible but CuPy cannot compile or launch a kernel: {type(exc).__name__}: {exc}")
    return torch, cupy
