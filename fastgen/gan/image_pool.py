"""The image pool of CycleGAN (Shrivastava et al. 2017, "Learning from simulated and unsupervised images
through adversarial training", section 2.3; Zhu et al. 2017, section 4): the discriminator is updated
with a history of generated images rather than only the latest ones, which damps oscillation.

Behaviour of the official CycleGAN code (``util/image_pool.py``), per image of a batch:

* while the pool holds fewer than ``pool_size`` images, the new image is stored and returned;
* once it is full: with probability 1/2 a uniformly chosen stored image is returned and the new
  one takes its place; otherwise the new image is returned and the pool is unchanged.

Random numbers come from the caller's ``torch.Generator`` (a trainer's, so checkpoints that hold
its state and the pool's :meth:`ImagePool.state_dict` resume exactly).
"""
from __future__ import annotations

import torch

from .._validate import check_floating, check_int

__all__ = ["ImagePool"]


class ImagePool:
    """A buffer of up to ``pool_size`` past fakes (0 disables it: :meth:`query` returns its input).

    Attributes: ``pool_size``, ``images`` (list of stored (C, H, W) tensors, detached).
    """

    def __init__(self, pool_size: int = 50):
        self.pool_size = check_int("pool_size", pool_size, 0)
        self.images: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def query(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A batch (B, C, H, W) of the same shape to show the discriminator, detached.

        images: fakes (B, C, H, W), floating. generator: where the coin flips and the replaced
        slots are drawn (on ``images``' device or the CPU; None: torch's default one). Two
        draws of B numbers per call once the pool is full, one host synchronisation.
        """
        images = check_floating("images", images, min_dim=1).detach()
        if self.pool_size == 0:
            return images
        if self.images and (self.images[0].shape != images.shape[1:] or self.images[0].dtype != images.dtype):
            s = self.images[0]
            raise ValueError(f"images must be a batch of {tuple(s.shape)} {s.dtype} images like the pool's, got "
                             f"{tuple(images.shape)} {images.dtype}")
        if self.images and self.images[0].device != images.device:  # e.g. just restored from a CPU checkpoint
            self.to(images.device)
        device = generator.device if generator is not None else torch.device("cpu")
        out = []
        coins = slots = None
        for i, image in enumerate(images):
            if len(self.images) < self.pool_size:
                self.images.append(image.clone())
                out.append(image)
                continue
            if coins is None:  # drawn once the pool is full, for the rest of the batch
                coins = torch.rand(len(images), generator=generator, device=device).tolist()
                slots = torch.randint(self.pool_size, (len(images),), generator=generator, device=device).tolist()
            if coins[i] > 0.5:
                out.append(self.images[slots[i]])
                self.images[slots[i]] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict:
        """{"pool_size": int, "images": (n, C, H, W) stored images, or an empty (0,) tensor}."""
        images = torch.stack(self.images) if self.images else torch.empty(0)
        return {"pool_size": self.pool_size, "images": images}

    def load_state_dict(self, state: dict) -> None:
        size, images = state.get("pool_size"), state.get("images")
        if size != self.pool_size:
            raise ValueError(f"the stored pool_size {size!r} is not this pool's {self.pool_size}")
        if not isinstance(images, torch.Tensor) or images.shape[0] > self.pool_size:
            raise ValueError(f"the stored images must be a tensor of at most {self.pool_size} images")
        self.images = [] if images.numel() == 0 else [image.clone() for image in images]

    def to(self, device: torch.device | str) -> "ImagePool":
        self.images = [image.to(device) for image in self.images]
        return self
