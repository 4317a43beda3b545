"""Per-pixel particle probability maps from the segmentation net.

Fully convolutional inference on any micrograph size. Large inputs are cut into overlapping tiles whose
origins are multiples of the network stride and whose margins exceed the receptive field, and only each tile's
centre is kept, so the stitched map equals whole-image inference: no seams.
"""

from __future__ import annotations

import numpy as np
import torch

from relion_pixer import PARTICLE
from relion_pixer.models import SegmentationNet, inference_autocast

__all__ = ["predict_probability", "resolve_device", "TILE", "MARGIN", "BATCH_PIXELS"]

#: Tile side (network pixels) above which an image is tiled. A K3 micrograph at the usual particle scale (about 900 x
#: 1300 network pixels) runs whole: tiles would compute their overlaps twice.
TILE = 1536
#: Most network pixels in one forward pass of tiles (a batch holds fewer tiles when they are large): about 64
#: bytes of activations per pixel at the first layer.
BATCH_PIXELS = 4 << 20
#: Margin kept around each tile's centre: larger than the segmentation net's receptive field radius.
MARGIN = 64


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when a CUDA device is present, else ``cpu``; other values as torch reads them."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for, but no CUDA device is available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RuntimeError(f"device {device!r} was asked for, but there are only {torch.cuda.device_count()} CUDA "
                           f"device(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return dev


def _tile_starts(n: int, tile: int, margin: int, stride: int) -> list[int]:
    """Origins of tiles of side ``tile`` whose kept centres (``tile - 2 margin``) cover ``[0, n)``."""
    if n <= tile:
        return [0]
    step = (tile - 2 * margin) // stride * stride
    starts = list(range(0, n - tile, step))
    last = (n - tile) // stride * stride
    if not starts or starts[-1] != last:
        starts.append(last)
    return starts


def _tile_side(n: int, tile: int, margin: int, stride: int) -> int:
    """The smallest tile side (whole strides, at most ``tile``) that covers ``n`` with as few tiles as ``tile`` does.

    Equal, smaller tiles compute fewer pixels twice: a K3 micrograph's 1280 network pixels took two tiles of 1024
    (2048 pixels computed per row), two tiles of 704 cover them as well (1408).
    """
    if n <= tile:
        return n
    count = len(_tile_starts(n, tile, margin, stride))
    side = tile
    for t in range(tile - stride, 2 * margin + stride - 1, -stride):
        if len(_tile_starts(n, t, margin, stride)) > count:
            break
        side = t
    return side


def _softmax(segmenter: SegmentationNet, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Class probabilities (float32) of a batch of images, the network at the inference precision of ``device``."""
    with inference_autocast(device):
        logits = segmenter(batch)
    return torch.softmax(logits.float(), dim=1)


@torch.inference_mode()
def predict_probability(
    segmenter: SegmentationNet,
    net_image: np.ndarray | torch.Tensor,
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    tile: int = TILE,
    margin: int = MARGIN,
    all_classes: bool = False,
) -> torch.Tensor:
    """Probability of "particle" at every pixel of a normalised network-scale image.

    Parameters
    ----------
    segmenter : SegmentationNet
        Network in eval mode, on ``device``.
    net_image : numpy.ndarray or torch.Tensor
        2D normalised image at network scale (:func:`relion_pixer.preprocess.prepare`).
    device : str or torch.device
        Where to run.
    batch_size : int
        Most tiles per forward pass (fewer where they would exceed :data:`BATCH_PIXELS`).
    tile, margin : int
        Largest tile side (rounded down to whole network strides; the tiles along an axis are made as small as
        covering it with the same number of tiles allows) and the margin dropped from each tile's inner edges,
        in pixels. The margin must cover the network's receptive field radius (about 50 px for the shipped
        network; the default 64 does), or the stitched map differs from whole-image inference near tile edges.
    all_classes : bool
        Return all class probabilities (3 x H x W) instead of the particle channel (H x W).

    Returns
    -------
    torch.Tensor
        float32 on ``device``.
    """
    device = torch.device(device)
    img = torch.as_tensor(np.asarray(net_image) if not torch.is_tensor(net_image) else net_image)
    if img.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {tuple(img.shape)}")
    img = img.to(device=device, dtype=torch.float32)
    h0, w0 = img.shape
    stride = segmenter.trunk.stride
    # tiles of whole strides: with the image padded to whole strides, the last tile then ends at its edge
    tile = int(tile) // stride * stride
    if h0 <= tile and w0 <= tile:
        probs = _softmax(segmenter, img[None, None], device)[0]
    else:
        if tile - 2 * int(margin) < stride:
            raise ValueError(f"tile {tile} px is too small for a margin of {margin} px: the tile must exceed twice "
                             f"the margin by at least the network stride ({stride} px)")
        # pad to whole strides exactly as the network pads a whole image, so tiles align with it
        img = segmenter.pad_to_stride(img[None, None])[0, 0]
        h, w = img.shape
        probs = torch.empty((3, h, w), dtype=torch.float32, device=device)
        th, tw = _tile_side(h, tile, margin, stride), _tile_side(w, tile, margin, stride)
        boxes = [(y, x) for y in _tile_starts(h, th, margin, stride) for x in _tile_starts(w, tw, margin, stride)]
        per_pass = max(1, min(int(batch_size), BATCH_PIXELS // (th * tw)))
        for i in range(0, len(boxes), per_pass):
            chunk = boxes[i : i + per_pass]
            batch = torch.stack([img[y : y + th, x : x + tw] for y, x in chunk])[:, None]
            out = _softmax(segmenter, batch, device)
            for (y, x), p in zip(chunk, out):
                # keep the centre, or up to the image edge for border tiles
                y0 = 0 if y == 0 else y + margin
                x0 = 0 if x == 0 else x + margin
                y1 = h if y + th >= h else y + th - margin
                x1 = w if x + tw >= w else x + tw - margin
                probs[:, y0:y1, x0:x1] = p[:, y0 - y : y1 - y, x0 - x : x1 - x]
        probs = probs[:, :h0, :w0]
    return probs if all_classes else probs[PARTICLE].contiguous()
