"""ProGAN's progressive training: a resolution schedule with fade-in phases, driving one
:class:`fastgen.gan.GANTrainer` (so there is one implementation of the step, the EMA and the checkpoints).

The stage (resolution, alpha) is a function of the trainer's step count alone, so a checkpoint of the
GANTrainer resumes progressive training exactly: the stage is recomputed, never stored.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F

from ..._io import progress_bar
from ..._validate import check_int
from ...gan.trainer import GANTrainer
from .networks import upsample_nearest

__all__ = ["ProgressiveSchedule", "ProGANTrainer", "progressive_reals"]


class ProgressiveSchedule:
    """start_resolution (``stable_steps``), then for each doubling up to ``target_resolution``: a fade-in
    of ``fade_steps`` (alpha = k / fade_steps on its k-th step, k = 0 .. fade_steps - 1) and a stable
    phase of ``stable_steps`` (alpha = 1). Beyond the last phase: target_resolution with alpha 1.

    Args:
        target_resolution: start_resolution * 2**k for some k >= 0.
        stable_steps: steps of each stable phase, an int >= 1.
        fade_steps: steps of each fade-in, an int >= 0 (0: a new resolution starts at alpha 1).
        start_resolution: a power of two >= 4 (ProGAN: 4).
    """

    def __init__(self, target_resolution: int, *, stable_steps: int, fade_steps: int, start_resolution: int = 4):
        self.start_resolution = check_int("start_resolution", start_resolution, 4)
        if self.start_resolution & (self.start_resolution - 1):
            raise ValueError(f"start_resolution must be a power of two >= 4, got {self.start_resolution}")
        self.target_resolution = check_int("target_resolution", target_resolution, 1)
        ratio = self.target_resolution / self.start_resolution
        if ratio < 1 or ratio != 2 ** round(math.log2(ratio)):
            raise ValueError(f"target_resolution must be start_resolution ({self.start_resolution}) times a power of "
                             f"two, reachable by doubling; the schedule cannot reach {self.target_resolution}")
        self.stable_steps = check_int("stable_steps", stable_steps, 1)
        self.fade_steps = check_int("fade_steps", fade_steps, 0)
        self.resolutions = [self.start_resolution * 2 ** i for i in range(round(math.log2(ratio)) + 1)]
        # (resolution, steps, fading) per phase
        self.phases = [(self.start_resolution, self.stable_steps, False)]
        for r in self.resolutions[1:]:
            if self.fade_steps:
                self.phases.append((r, self.fade_steps, True))
            self.phases.append((r, self.stable_steps, False))

    @property
    def total_steps(self) -> int:
        return sum(steps for _, steps, _ in self.phases)

    def stage(self, step: int) -> tuple[int, float]:
        """(resolution, alpha) of training step ``step`` (an int >= 0)."""
        step = check_int("step", step, 0)
        for resolution, steps, fading in self.phases:
            if step < steps:
                return resolution, step / steps if fading else 1.0
            step -= steps
        return self.target_resolution, 1.0

    def __repr__(self) -> str:
        return (f"ProgressiveSchedule({self.resolutions}, stable_steps={self.stable_steps}, "
                f"fade_steps={self.fade_steps}, total_steps={self.total_steps})")


def progressive_reals(real: torch.Tensor, resolution: int, alpha: float = 1.0) -> torch.Tensor:
    """Real images as the discriminator must see them at a stage: box-downsampled to ``resolution``
    and, during a fade-in (alpha < 1), blended as the generator's output is:
    lerp(upsample_nearest(avg_pool2x2(x)), x, alpha) (ProGAN's ``process_reals``).
    real (B, C, S, S) with S a multiple of resolution -> (B, C, resolution, resolution)."""
    size = real.shape[-1]
    if real.dim() != 4 or real.shape[-2] != size or size % resolution:
        raise ValueError(f"real must be square images (B, C, S, S) with S a multiple of {resolution}, "
                         f"got {tuple(real.shape)}")
    x = F.avg_pool2d(real, size // resolution) if size != resolution else real
    if alpha < 1:
        x = torch.lerp(upsample_nearest(F.avg_pool2d(x, 2)), x, alpha)
    return x


class ProGANTrainer:
    """Progressive growing on a :class:`fastgen.gan.GANTrainer`.

    Each :meth:`train_step` sets the schedule's stage of the current step on G, D and the EMA copy,
    downsamples (and, while fading, blends) the real batch to that resolution with
    :func:`progressive_reals`, and runs one GANTrainer step on it.

    The defaults are the paper's: WGAN-GP (lambda 10) with the drift term epsilon = 0.001, n_critic 1,
    Adam lr 1e-3, betas (0, 0.99), an EMA of G (decay 0.999). Differences from the official code: one
    Adam state for the whole run (ProGAN resets it at each new resolution; here a new layer's moments
    start at zero when it first gets a gradient, the older layers keep theirs) and one batch size for
    every resolution.

    Args:
        generator, discriminator: :class:`ProGANGenerator` / :class:`ProGANDiscriminator` (anything with
            ``img_resolution``, ``img_channels`` and ``set_stage``) of one resolution and channel count.
        schedule: a :class:`ProgressiveSchedule` whose resolutions the networks have.
        **kwargs: GANTrainer's arguments (loss, penalty, penalty_weight, drift_weight, n_critic, lr,
            betas, ema_decay, device, seed, ...), overriding the defaults above.

    Attributes: ``trainer`` (the GANTrainer: its checkpoints resume this), ``schedule``, ``step``.
    """

    def __init__(self, generator, discriminator, schedule: ProgressiveSchedule, **kwargs):
        if not isinstance(schedule, ProgressiveSchedule):
            raise TypeError(f"schedule must be a ProgressiveSchedule, got {type(schedule).__name__}")
        for name, net in (("generator", generator), ("discriminator", discriminator)):
            if not callable(getattr(net, "set_stage", None)) or not hasattr(net, "img_resolution"):
                raise TypeError(f"{name} must be a growing network with img_resolution and set_stage (ProGAN's), "
                                f"got {type(net).__name__}")
        g_shape = (generator.img_channels, generator.img_resolution)
        d_shape = (discriminator.img_channels, discriminator.img_resolution)
        if g_shape != d_shape:
            raise ValueError(f"discriminator takes images of {d_shape[0]} channels at up to {d_shape[1]}x{d_shape[1]} "
                             f"but the generator makes {g_shape[0]} channels at up to {g_shape[1]}x{g_shape[1]}")
        missing = [r for r in schedule.resolutions if r not in generator.resolutions]
        if missing:
            raise ValueError(f"schedule reaches resolutions {missing} that the networks (resolutions "
                             f"{generator.resolutions}) do not have")
        options = dict(loss="wgan", penalty="wgan-gp", penalty_weight=10.0, drift_weight=1e-3, lr=1e-3,
                       betas=(0.0, 0.99), ema_decay=0.999)
        options.update(kwargs)
        self.schedule = schedule
        self.trainer = GANTrainer(generator, discriminator, **options)

    @property
    def step(self) -> int:
        return self.trainer.step

    def stage(self) -> tuple[int, float]:
        """(resolution, alpha) of the next step."""
        return self.schedule.stage(self.trainer.step)

    def _apply_stage(self) -> tuple[int, float]:
        resolution, alpha = self.stage()
        for net in (self.trainer.generator, self.trainer.discriminator, self.trainer.ema):
            if net is not None:
                net.set_stage(resolution, alpha)
        return resolution, alpha

    def train_step(self, real: torch.Tensor) -> dict[str, float]:
        """One GANTrainer step at the current stage; ``real`` (B, C, T, T) at the schedule's target
        resolution T. Returns GANTrainer's losses plus "resolution" and "alpha"."""
        target = self.schedule.target_resolution
        if not isinstance(real, torch.Tensor) or real.dim() != 4 or real.shape[-2:] != (target, target):
            got = tuple(real.shape) if isinstance(real, torch.Tensor) else type(real).__name__
            raise ValueError(f"real must be images (B, C, {target}, {target}) at the schedule's target resolution, "
                             f"got {got}")
        resolution, alpha = self._apply_stage()
        record = self.trainer.train_step(progressive_reals(real, resolution, alpha))
        return {**record, "resolution": resolution, "alpha": alpha}

    def fit(self, batches: Iterable, steps: int | None = None, *, progress: bool = True) -> list[dict]:
        """``steps`` train_step calls (None: to the end of the schedule) on batches from ``batches``
        (tensors, or (images, labels) pairs whose labels are ignored). Returns one dict per step."""
        steps = max(0, self.schedule.total_steps - self.step) if steps is None else check_int("steps", steps, 0)
        iterator = iter(batches)
        history = []
        bar = progress_bar(progress, steps, "ProGAN training")
        try:
            for i in range(steps):
                try:
                    real = next(iterator)
                except StopIteration:
                    raise ValueError(f"batches ran out after {i} of {steps} steps") from None
                if isinstance(real, (tuple, list)):
                    real = real[0]
                history.append({"step": self.step + 1, **self.train_step(real)})
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return history

    @torch.no_grad()
    def sample(self, n: int, **kwargs) -> torch.Tensor:
        """n samples at the current stage (GANTrainer.sample's arguments: use_ema, generator)."""
        self._apply_stage()
        return self.trainer.sample(n, **kwargs)

    def save_checkpoint(self, path: str) -> None:
        """The GANTrainer's checkpoint (the stage follows from its step count)."""
        self.trainer.save_checkpoint(path)

    def load_checkpoint(self, path: str) -> None:
        self.trainer.load_checkpoint(path)
        self._apply_stage()
