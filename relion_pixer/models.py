"""PIXER networks: a 3-way box classifier and the segmentation net built from its trunk.

Following Zhang et al. (BMC Bioinformatics 2019), the segmentation network is the classification CNN's
convolutional trunk followed by parallel atrous (dilated) convolution branches (rates 2, 4, 6, 8) whose logits
are summed (DeepLab v2 style) and upsampled to the input size. It is initialised from the trained classifier.

Both networks work on normalised images at network scale (particle diameter :data:`relion_pixer.NET_DIAMETER_PX`
pixels, see :mod:`relion_pixer.preprocess`). Classes are ordered background, particle, contamination.

Batch normalisation replaces the paper's local response normalisation: it trains faster and more stably in the
CPU budget the shipped weights were made in, and at inference it folds into the preceding convolution
(:func:`fuse_batchnorm`), so it costs nothing.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from relion_pixer import BOX_SIZE, CPU_PRECISIONS, DEFAULT_CPU_PRECISION

__all__ = [
    "Trunk",
    "Classifier",
    "AtrousBranch",
    "SegmentationNet",
    "build_classifier",
    "build_segmenter",
    "PixerModels",
    "load_pretrained",
    "save_models",
    "fuse_batchnorm",
    "DEFAULT_WEIGHTS",
    "shipped_weights",
    "CPU_PRECISION",
    "cpu_precision",
    "using_cpu_precision",
    "inference_autocast",
]

NUM_CLASSES = 3
#: Precision of inference on the CPU: ``"auto"`` runs the convolutions in bfloat16 where the CPU multiplies
#: bfloat16 matrices in hardware (AMX tiles, Intel Sapphire Rapids and later), float32 elsewhere; ``"float32"`` and
#: ``"bfloat16"`` force one. The environment variable ``RELION_PIXER_CPU_PRECISION`` sets it for a process and the
#: processes it starts (the job's ``precision`` parameter sets that variable). The default, ``"auto"``
#: (:data:`relion_pixer.DEFAULT_CPU_PRECISION`), is ``benchmarks/bench_precision.py``'s choice by the rule written
#: there: on the real sets the same picks, K3 micrographs a third faster. Training validates in float32.
CPU_PRECISION = os.environ.get("RELION_PIXER_CPU_PRECISION", DEFAULT_CPU_PRECISION)
DEFAULT_RATES = (2, 4, 6, 8)
#: Channels inside each atrous branch.
DEFAULT_BRANCH_WIDTH = 32


@functools.cache
def _amx_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX tiles); probed once per process."""
    try:
        return bool(torch.cpu._is_amx_tile_supported()) and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without these probes: assume not
        return False


def cpu_precision(precision: str | None = None) -> str:
    """``"float32"`` or ``"bfloat16"``: what CPU inference runs in for ``precision`` (default
    :data:`CPU_PRECISION`; ``"auto"`` resolved for this CPU)."""
    precision = _precision_name(CPU_PRECISION if precision is None else precision)
    if precision == "auto":
        return "bfloat16" if _amx_bf16() else "float32"
    return precision


def _precision_name(precision) -> str:
    """``precision`` as one of :data:`relion_pixer.CPU_PRECISIONS` (case and blanks ignored), or ValueError."""
    name = str(precision).strip().lower()
    if name not in CPU_PRECISIONS:
        raise ValueError(f"the CPU precision (the job's precision, or RELION_PIXER_CPU_PRECISION) must be one of "
                         f"{', '.join(CPU_PRECISIONS)}; got {name!r}")
    return name


@contextlib.contextmanager
def using_cpu_precision(precision: str | None):
    """Within the context, :data:`CPU_PRECISION` is ``precision`` (None: unchanged), also for processes started
    in it (through ``RELION_PIXER_CPU_PRECISION``); both are restored after."""
    global CPU_PRECISION
    if precision is None:
        yield
        return
    name = _precision_name(precision)
    before, env = CPU_PRECISION, os.environ.get("RELION_PIXER_CPU_PRECISION")
    CPU_PRECISION = os.environ["RELION_PIXER_CPU_PRECISION"] = name
    try:
        yield
    finally:
        CPU_PRECISION = before
        if env is None:
            os.environ.pop("RELION_PIXER_CPU_PRECISION", None)
        else:
            os.environ["RELION_PIXER_CPU_PRECISION"] = env


def inference_autocast(device: str | torch.device, precision: str | None = None):
    """A context in which inference on ``device`` runs at :func:`cpu_precision` (a
    :class:`torch.autocast` to bfloat16 on the CPU where that is chosen; no change on other devices). Outputs stay
    float32 where the callers take a softmax of ``.float()`` logits."""
    if torch.device(device).type == "cpu" and cpu_precision(precision) == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class MaxPool2x2(nn.MaxPool2d):
    """2 x 2 max pooling, stride 2 (``nn.MaxPool2d(2)``). Without gradients it takes the elementwise maximum of the
    four strided quarters: the same values, 2-5x faster on the CPU than the library kernel, which also computes the
    argmax indices (``benchmarks/bench_speed.py``). With gradients it is ``nn.MaxPool2d``."""

    def __init__(self, kernel_size: int = 2):
        if kernel_size != 2:
            raise ValueError(f"MaxPool2x2 pools 2 x 2, not {kernel_size}")
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().forward(x)
        x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
        return torch.maximum(torch.maximum(x[..., 0::2, 0::2], x[..., 1::2, 0::2]),
                             torch.maximum(x[..., 0::2, 1::2], x[..., 1::2, 1::2]))


def _run(modules, x: torch.Tensor) -> torch.Tensor:
    """Apply ``modules`` in order; without gradients a convolution block ending in ReLU that a max pooling follows
    is pooled before its ReLU, on a quarter of the values (the same result: the ReLU is monotonic)."""
    modules = list(modules)
    if torch.is_grad_enabled():
        for m in modules:
            x = m(x)
        return x
    i = 0
    while i < len(modules):
        m = modules[i]
        nxt = modules[i + 1] if i + 1 < len(modules) else None
        if isinstance(nxt, nn.MaxPool2d) and isinstance(m, nn.Sequential) and len(m) and isinstance(m[-1], nn.ReLU):
            for sub in list(m)[:-1]:
                x = sub(x)
            x = torch.relu_(nxt(x))
            i += 2
        else:
            x = m(x)
            i += 1
    return x


#: Pooling between the trunk's stages.
POOLS = {"max": MaxPool2x2, "avg": nn.AvgPool2d}
DEFAULT_WEIGHTS = "pixer_v12.pt"


def _conv_bn_relu(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Trunk(nn.Sequential):
    """Convolutional trunk shared by the classifier and the segmentation net (output stride 4).

    Parameters
    ----------
    widths : sequence of int
        Channels of the three stages (full, 1/2 and 1/4 resolution).
    pool : str
        ``"max"`` (2x2 max pooling between the stages, as in the paper) or ``"avg"`` (2x2 averages).
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64), pool: str = "max"):
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
        w1, w2, w3 = widths
        super().__init__(
            _conv_bn_relu(1, w1),
            POOLS[pool](2),
            _conv_bn_relu(w1, w2),
            _conv_bn_relu(w2, w2),
            POOLS[pool](2),
            _conv_bn_relu(w2, w3),
            _conv_bn_relu(w3, w3),
        )
        self.pool = pool
        self.widths = (int(w1), int(w2), int(w3))
        self.out_channels = w3
        self.stride = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run(self, x)


class Classifier(nn.Module):
    """3-way classifier (background / particle / contamination) of ``BOX_SIZE`` boxes.

    The trunk is followed by pooling, one more convolution and two fully connected layers with dropout; the
    segmentation net replaces everything after the trunk by atrous branches.
    """

    def __init__(self, trunk: Trunk | None = None, box_size: int = BOX_SIZE, hidden: int = 128, dropout: float = 0.5,
                 context: int = 0):
        super().__init__()
        self.trunk = trunk if trunk is not None else Trunk()
        c = self.trunk.out_channels
        self.box_size = box_size
        context = int(context)
        if context < 0 or context % self.trunk.stride:
            raise ValueError(f"context must be a whole number of trunk strides ({self.trunk.stride} px), got {context}")
        self.context = context
        self.head = nn.Sequential(
            MaxPool2x2(),
            _conv_bn_relu(c, c),
            MaxPool2x2(),
            nn.Flatten(),
            nn.Linear(c * (box_size // 16) ** 2, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, NUM_CLASSES),
        )

    @property
    def input_size(self) -> int:
        """Side of the boxes :meth:`forward` takes: the box and its context on every side."""
        return self.box_size + 2 * self.context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N x 3) of boxes ``x`` (N x 1 x S x S, S = :attr:`input_size`).

        With ``context`` (a classifier trained so), the trunk runs on the box and ``context`` pixels around it, and
        the head sees the trunk's features of the box alone: what one pass of the trunk over a whole micrograph gives
        at the box (:mod:`relion_pixer.classify`), so that the candidates can share that pass."""
        side = self.input_size
        if x.shape[-2] != side or x.shape[-1] != side:
            raise ValueError(f"classifier expects {side} x {side} boxes, got {x.shape[-2]} x {x.shape[-1]}")
        if not self.context:
            return _run([*self.trunk, *self.head], x)
        s = self.trunk.stride
        c, n = self.context // s, self.box_size // s
        return self.head(self.trunk(x)[..., c : c + n, c : c + n])


class AtrousBranch(nn.Sequential):
    """One atrous branch: a dilated 3x3 convolution, then per-pixel class logits."""

    def __init__(self, cin: int, rate: int, hidden: int = 32, num_classes: int = NUM_CLASSES, dropout: float = 0.1):
        super().__init__(
            _conv_bn_relu(cin, hidden, dilation=rate),
            nn.Dropout2d(dropout),
            nn.Conv2d(hidden, num_classes, 1),
        )
        self.rate = rate


class SegmentationNet(nn.Module):
    """Trunk + parallel atrous branches with summed logits, upsampled to the input size.

    Parameters
    ----------
    trunk : Trunk
        Convolutional trunk (normally the trained classifier's).
    rates : sequence of int
        Dilation rates, one branch each (PIXER: 2, 4, 6, 8).
    hidden : int
        Channels inside each branch (the branch width).
    """

    def __init__(self, trunk: Trunk | None = None, rates: Sequence[int] = DEFAULT_RATES,
                 hidden: int = DEFAULT_BRANCH_WIDTH):
        super().__init__()
        if not rates:
            raise ValueError("at least one atrous rate is needed")
        self.trunk = trunk if trunk is not None else Trunk()
        self.rates = tuple(int(r) for r in rates)
        self.hidden = int(hidden)
        self.branches = nn.ModuleList(AtrousBranch(self.trunk.out_channels, r, hidden) for r in self.rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel class logits (N x 3 x H x W) of images ``x`` (N x 1 x H x W)."""
        h, w = x.shape[-2:]
        feats = self.trunk(self.pad_to_stride(x))
        logits = self.branches[0](feats)
        for branch in self.branches[1:]:
            logits = logits + branch(feats)
        logits = F.interpolate(logits, scale_factor=self.trunk.stride, mode="bilinear", align_corners=False)
        return logits[..., :h, :w]

    def pad_to_stride(self, x: torch.Tensor) -> torch.Tensor:
        """Pad ``x`` (N x C x H x W) at the bottom and right to whole multiples of the trunk's stride."""
        h, w = x.shape[-2:]
        stride = self.trunk.stride
        pad_h, pad_w = (-h) % stride, (-w) % stride
        if not (pad_h or pad_w):
            return x
        return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect" if min(h, w) > max(pad_h, pad_w) else "constant")


def build_classifier(widths: Sequence[int] = (16, 32, 64), box_size: int = BOX_SIZE, pool: str = "max",
                     context: int = 0) -> Classifier:
    """A freshly initialised 3-way classifier (``context``: pixels of context around each box, see
    :meth:`Classifier.forward`)."""
    return Classifier(Trunk(widths, pool), box_size=box_size, context=context)


def build_segmenter(
    classifier: Classifier | None = None, rates: Sequence[int] = DEFAULT_RATES, widths: Sequence[int] = (16, 32, 64),
    pool: str = "max", branch_width: int = DEFAULT_BRANCH_WIDTH,
) -> SegmentationNet:
    """A segmentation net; its trunk is a copy of ``classifier``'s trunk when one is given (PIXER's initialisation).
    ``branch_width`` is the number of channels inside each atrous branch."""
    trunk = copy.deepcopy(classifier.trunk) if classifier is not None else Trunk(widths, pool)
    return SegmentationNet(trunk, rates=rates, hidden=branch_width)


@dataclass
class PixerModels:
    """The two networks and what is known about how they were made."""

    classifier: Classifier
    segmenter: SegmentationNet
    meta: dict = field(default_factory=dict)

    def to(self, device: str | torch.device) -> "PixerModels":
        self.classifier.to(device)
        self.segmenter.to(device)
        return self


def save_models(path: str | Path, classifier: Classifier, segmenter: SegmentationNet, meta: dict | None = None) -> None:
    """Save both networks' state dicts and settings to one file that :func:`load_pretrained` reads.

    The file holds only tensors, numbers, strings and lists, so it loads with ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    payload = {
        "format": "relion_pixer/1",
        "widths": list(classifier.trunk.widths),
        "pool": classifier.trunk.pool,
        "box_size": classifier.box_size,
        "classifier_context": classifier.context,
        "rates": list(segmenter.rates),
        "branch_width": segmenter.hidden,
        "classifier": {k: v.detach().cpu() for k, v in classifier.state_dict().items()},
        "segmenter": {k: v.detach().cpu() for k, v in segmenter.state_dict().items()},
        "meta": json.dumps(meta or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def shipped_weights() -> Path:
    """Path of the weights that ship with the package (:data:`DEFAULT_WEIGHTS` in ``relion_pixer/weights/``)."""
    return Path(str(resources.files("relion_pixer") / "weights" / DEFAULT_WEIGHTS))


def load_pretrained(path: str | Path | None = None, device: str | torch.device = "cpu", fuse: bool = True) -> PixerModels:
    """Load the shipped weights (default) or a fine-tuned model file, ready for inference.

    Parameters
    ----------
    path : str or Path, optional
        Model file written by :func:`save_models` (``relion_pixer train``). Default: the shipped weights.
    device : str or torch.device
        Where to put the networks.
    fuse : bool
        Fold batch normalisation into the convolutions, and on the CPU store the convolutions' weights channels-last
        (inference only: on 2 CPU threads the classifier runs about 3x and the segmenter about 1.7x faster that way,
        with the same probabilities to 1e-6; ``benchmarks/bench_speed.py``).
    """
    if path is None:
        path = shipped_weights()
        if not path.is_file():
            raise FileNotFoundError(f"shipped weights not found at {path}: the package is incomplete")
    path = Path(str(path))
    if path.is_dir():
        raise ValueError(f"model file {path} is a directory, not a model file (relion_pixer train writes one)")
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - report any unpickling failure with the file name
        import pickle
        import zipfile

        if isinstance(exc, pickle.UnpicklingError) and zipfile.is_zipfile(path):
            # a complete PyTorch file whose contents weights_only refuses
            why = ("it holds Python objects besides weights, as training checkpoints and data caches do; model files "
                   "are loaded as weights only, for safety")
        else:
            why = "not a PyTorch file, or a damaged one"
        raise ValueError(f"{path}: not a relion_pixer model file ({why})") from None
    if not isinstance(payload, dict) or payload.get("format") != "relion_pixer/1":
        raise ValueError(f"{path}: not a relion_pixer model file (missing format tag)")
    try:
        pool = payload.get("pool", "max")  # files from before the option: max pooling
        classifier = build_classifier(payload["widths"], payload["box_size"], pool,
                                      int(payload.get("classifier_context", 0)))  # files from before: 0
        classifier.load_state_dict(payload["classifier"])
        # files from before the option: branches of DEFAULT_BRANCH_WIDTH channels
        segmenter = build_segmenter(rates=payload["rates"], widths=payload["widths"], pool=pool,
                                    branch_width=payload.get("branch_width", DEFAULT_BRANCH_WIDTH))
        segmenter.load_state_dict(payload["segmenter"])
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: a damaged or incompatible relion_pixer model file ({reason})") from None
    classifier.eval()
    segmenter.eval()
    if fuse:
        fuse_batchnorm(classifier)
        fuse_batchnorm(segmenter)
    meta = json.loads(payload.get("meta", "{}"))
    meta["path"] = str(path)
    models = PixerModels(classifier, segmenter, meta).to(device)
    if fuse and torch.device(device).type == "cpu":
        classifier.to(memory_format=torch.channels_last)
        segmenter.to(memory_format=torch.channels_last)
    return models


@torch.no_grad()
def fuse_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every ``Conv2d -> BatchNorm2d`` pair into the convolution (in place; eval mode only)."""
    for child in module.children():
        if isinstance(child, nn.Sequential):
            items = list(child)
            for i in range(len(items) - 1):
                conv, bn = items[i], items[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
                    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                    new_bias = (bias - bn.running_mean) * scale + bn.bias
                    conv.bias = nn.Parameter(new_bias)
                    child[i + 1] = nn.Identity()
        fuse_batchnorm(child)
    module.eval()
    return module
