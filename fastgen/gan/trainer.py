"""The GAN training loop: every loss and gradient penalty, n_critic, lazy regularization, EMA, AMP, exact resume.

One :meth:`GANTrainer.train_step` is one discriminator step on a real batch and, every
``n_critic``-th call, one generator step (Goodfellow et al. 2014, Algorithm 1; Gulrajani et al.
2017, Algorithm 1 for n_critic > 1):

    D step   z ~ N(0, I) -> fake = G(z) (no graph to G);
             minimise discriminator_loss(D(real), D(fake)) [+ gain * penalty, when due]
    G step   fresh z ~ N(0, I); minimise generator_loss(D(G(z))), gradients to G only;
             then ema <- lerp(ema, G, 1 - ema_decay)

The D objective is :func:`fastgen.gan.penalty.discriminator_objective` (shared D forwards, fused
penalty ops). With ``lazy_interval`` = k > 1 the penalty is applied on D steps 0, k, 2k, ... with
gain k, added to that step's loss: no optimizer step is added, so Adam needs none of StyleGAN2's
lr / beta correction, which is for a penalty step of its own
(:class:`fastgen.gan.regularizers.LazyRegularization`).

Randomness: every latent and every WGAN-GP interpolation weight comes from the trainer's own
``torch.Generator`` (on the training device, seeded with ``seed``); nothing else in the loop draws
random numbers except the models themselves (dropout: torch's default generators). A checkpoint
holds both, so training resumed from it continues exactly as uninterrupted training would, given
the same batches after the checkpoint (the batch stream is the caller's: resume it too, e.g. by
restoring its generator's state).
"""
from __future__ import annotations

import logging
import math
import os
from typing import Iterable

import torch
import torch.nn as nn

from .. import checkpoint
from .._io import atomic_write, check_writable, progress_bar
from ..imaging import image_grid
from .._validate import check_int
from . import losses
from .penalty import PENALTY_KINDS, discriminator_objective, gradient_penalty
from .regularizers import LazyRegularization

logger = logging.getLogger("fastgen")

__all__ = ["GANTrainer", "AMP_DTYPES", "linear_lr_decay"]

AMP_DTYPES = (None, torch.bfloat16, torch.float16)
_FORMAT = "fastgen.gan.GANTrainer/1"
# The plain values of a checkpoint, each with the test it must pass to be restored.
_CHECKPOINT_VALUES = {"step": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0}
# Preview files: this many images (an 8 x 8 grid) or 2-D points (PacGAN's evaluation count), drawn
# from a latent stream of their own so that every preview shows the same z and none moves training.
_PREVIEW_IMAGES = 64
_PREVIEW_POINTS = 2500
_PREVIEW_SEED_OFFSET = 1
_SCATTER_SIZE = 512  # pixels per side of a 2-D scatter plot


def _first_parameter(name: str, module: object) -> torch.Tensor:
    if not isinstance(module, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(module).__name__}")
    try:
        return next(module.parameters())
    except StopIteration:
        raise TypeError(f"{name} ({type(module).__name__}) has no parameters to train") from None


def _check_optimizer(name: str, optimizer: object, module: nn.Module, module_name: str) -> torch.optim.Optimizer:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"{name} must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    own = {id(p) for p in module.parameters()}
    if any(id(p) not in own for group in optimizer.param_groups for p in group["params"]):
        raise ValueError(f"{name} holds parameters that are not the {module_name}'s "
                         "(an optimizer built for another model?)")
    return optimizer


class GANTrainer:
    """Trains ``generator`` against ``discriminator`` with any loss of :mod:`fastgen.gan.losses`.

    Args:
        generator: an nn.Module with an int attribute ``latent_dim``; ``generator(z)``, z
            (B, latent_dim) of its parameters' dtype, returns samples (B, ...) shaped like the real data.
            Class-conditional: an int attribute ``c_dim`` > 0 (the number of classes) and
            ``generator(z, c)`` with c (B, c_dim) one-hot in z's dtype.
        discriminator: an nn.Module mapping (B, ...) samples to logits with one row per sample
            (``discriminator(x, c)`` and the same ``c_dim`` when conditional).
            Use one without batch statistics (no BatchNorm) with a gradient penalty.
        loss: one of :data:`fastgen.gan.losses.LOSS_KINDS` ("ns", "minimax", "wgan", "lsgan", "hinge").
        penalty: None or one of :data:`fastgen.gan.penalty.PENALTY_KINDS` ("wgan-gp",
            "wgan-gp-one-sided", "r1", "r2"), applied to the discriminator.
        penalty_weight: the penalty's weight (lambda of WGAN-GP, gamma of R1/R2), a number >= 0.
        lazy_interval: apply the penalty every ``lazy_interval`` D steps with gain lazy_interval
            (StyleGAN2 uses 16 for R1); > 1 needs a penalty.
        n_critic: D steps per G step (WGAN-GP uses 5), an int >= 1.
        g_optimizer, d_optimizer: optimizers over the generator's / discriminator's parameters;
            None builds ``torch.optim.Adam(params, lr, betas, foreach=True)`` (the lazy penalty joins a regular D
            step, so no lr / beta correction applies).
        lr, betas: the default Adam optimizers' hyper-parameters (DCGAN's 2e-4, (0.5, 0.999)).
        lr_schedule: None, or a callable (G steps done, an int >= 0) -> a factor >= 0: both optimizers'
            learning rates are their initial ones times lr_schedule(k) once k G steps are done
            (torch.optim.lr_scheduler.LambdaLR over each, stepped after every G step), e.g.
            :func:`linear_lr_decay`. The rate lives in the optimizers' state, so checkpoints keep it.
        ema_decay: None, or keep an exponential moving average of G's parameters with this decay
            in (0, 1) (e.g. 0.999), updated after every G step; its buffers (batch-norm statistics)
            are copied from G, as StyleGAN2 does. :meth:`sample` uses it.
        g_regularizer: None, or a regulariser of G applied on its G steps: ``g_regularizer(z,
            generator=...)`` -> a scalar, called with a fresh z of half the batch (StyleGAN2's
            pl_batch_shrink) and the trainer's torch.Generator for its own noise, outside autocast;
            e.g. ``StyleGAN2Generator.path_length_penalty`` (its running mean is a buffer of G, so
            checkpoints keep it).
        g_regularizer_weight: its weight (2 for StyleGAN2's path length), a number >= 0.
        g_lazy_interval: apply it every ``g_lazy_interval`` G steps with that gain (StyleGAN2: 4).
        drift_weight: ProGAN's drift term, drift_weight * mean(D(real)^2) added to every D step's
            loss (Karras et al. 2018 use 0.001 with WGAN-GP), a number >= 0.
        amp_dtype: None (full precision), torch.bfloat16 or torch.float16: the forward passes run
            under ``torch.autocast`` on the device; the gradient penalty (a gradient of a gradient)
            is computed outside autocast, in the parameters' precision (float32). float16 adds a
            ``torch.amp.GradScaler`` per network (whose inf check synchronises with the host).
        device: where to train; G and D are moved there. None: where G's parameters are.
        seed: seeds the trainer's generator of latents and interpolation weights, an int in [0, 2**63).

    Attributes: ``generator``, ``discriminator``, ``g_optimizer``, ``d_optimizer``, ``ema`` (the
    averaged copy of G, or None), ``device``, ``step`` (train_step calls so far; the G steps are
    ``step // n_critic``).
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, *, loss: str = "ns", penalty: str | None = None,
                 penalty_weight: float = 10.0, lazy_interval: int = 1, n_critic: int = 1,
                 g_optimizer: torch.optim.Optimizer | None = None, d_optimizer: torch.optim.Optimizer | None = None,
                 lr: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999), ema_decay: float | None = None,
                 lr_schedule=None, g_regularizer=None, g_regularizer_weight: float = 2.0, g_lazy_interval: int = 1,
                 drift_weight: float = 0.0, amp_dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None, seed: int = 0):
        _first_parameter("generator", generator)
        _first_parameter("discriminator", discriminator)
        latent_dim = getattr(generator, "latent_dim", None)
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise TypeError(f"generator must have an int attribute latent_dim >= 1 (the size of z), got {latent_dim!r}")
        if loss not in losses.LOSS_KINDS:
            raise ValueError(f"loss must be one of {losses.LOSS_KINDS}, got {loss!r}")
        if penalty is not None and penalty not in PENALTY_KINDS:
            raise ValueError(f"penalty must be None or one of {PENALTY_KINDS}, got {penalty!r}")
        if (isinstance(penalty_weight, bool) or not isinstance(penalty_weight, (int, float))
                or not math.isfinite(penalty_weight) or penalty_weight < 0):
            raise ValueError(f"penalty_weight must be a finite number >= 0, got {penalty_weight!r}")
        self.lazy = LazyRegularization(check_int("lazy_interval", lazy_interval, 1))
        if self.lazy.interval > 1 and penalty is None:
            raise ValueError(f"lazy_interval={self.lazy.interval} needs a penalty: there is nothing to apply lazily")
        self.n_critic = check_int("n_critic", n_critic, 1)
        self.num_classes = _class_count(generator, discriminator)
        if g_regularizer is not None and not callable(g_regularizer):
            raise TypeError(f"g_regularizer must be None or a callable (z, generator=...) -> scalar, got "
                            f"{type(g_regularizer).__name__}")
        if (isinstance(g_regularizer_weight, bool) or not isinstance(g_regularizer_weight, (int, float))
                or not math.isfinite(g_regularizer_weight) or g_regularizer_weight < 0):
            raise ValueError(f"g_regularizer_weight must be a finite number >= 0, got {g_regularizer_weight!r}")
        self.g_lazy = LazyRegularization(check_int("g_lazy_interval", g_lazy_interval, 1))
        if self.g_lazy.interval > 1 and g_regularizer is None:
            raise ValueError(f"g_lazy_interval={self.g_lazy.interval} needs a g_regularizer: there is nothing to apply")
        self.g_regularizer, self.g_regularizer_weight = g_regularizer, float(g_regularizer_weight)
        if (isinstance(drift_weight, bool) or not isinstance(drift_weight, (int, float))
                or not math.isfinite(drift_weight) or drift_weight < 0):
            raise ValueError(f"drift_weight must be a finite number >= 0, got {drift_weight!r}")
        self.drift_weight = float(drift_weight)
        if ema_decay is not None and (isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float))
                                      or not 0 < ema_decay < 1):
            raise ValueError(f"ema_decay must be None or a number in (0, 1), got {ema_decay!r}")
        if amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {AMP_DTYPES}, got {amp_dtype!r}")
        self.seed = check_int("seed", seed, 0)
        if self.seed >= 2**63:
            raise ValueError(f"seed must be < 2**63, got {self.seed}")

        if device is not None:
            generator.to(device)
            discriminator.to(device)
        param = _first_parameter("generator", generator)
        self.device, self._dtype = param.device, param.dtype
        d_device = _first_parameter("discriminator", discriminator).device
        if d_device != self.device:
            raise ValueError(f"discriminator is on {d_device} but generator is on {self.device}; "
                             "pass device= to move both")

        self.generator, self.discriminator, self.latent_dim = generator, discriminator, latent_dim
        self.loss, self.penalty, self.penalty_weight = loss, penalty, float(penalty_weight)
        self.ema_decay, self.amp_dtype = ema_decay, amp_dtype
        if lr_schedule is not None and not callable(lr_schedule):
            raise TypeError(f"lr_schedule must be None or a callable (G steps done) -> lr factor, got "
                            f"{type(lr_schedule).__name__}")
        self._g_params = [p for p in generator.parameters() if p.requires_grad]
        d_params = [p for p in discriminator.parameters() if p.requires_grad]
        if not self._g_params or not d_params:
            frozen = "generator" if not self._g_params else "discriminator"
            raise ValueError(f"the {frozen} has no trainable parameters (all have requires_grad=False)")
        # foreach: one multi-tensor kernel per update term instead of a Python loop over the parameters
        # (torch's default on CUDA, not on the CPU); on the CPU the updates are bit-identical to the loop's.
        if g_optimizer is None:
            g_optimizer = torch.optim.Adam(self._g_params, lr=lr, betas=betas, foreach=True)
        if d_optimizer is None:
            d_optimizer = torch.optim.Adam(d_params, lr=lr, betas=betas, foreach=True)
        self.g_optimizer = _check_optimizer("g_optimizer", g_optimizer, generator, "generator")
        self.d_optimizer = _check_optimizer("d_optimizer", d_optimizer, discriminator, "discriminator")
        # GradScalers only for float16 (bfloat16 has float32's range); disabled ones are no-ops.
        self._g_scaler = torch.amp.GradScaler(self.device.type, enabled=amp_dtype == torch.float16)
        self._d_scaler = torch.amp.GradScaler(self.device.type, enabled=amp_dtype == torch.float16)

        # after the optimizers are checked; LambdaLR sets the rates to initial * lr_schedule(0) now
        self._lr_schedulers = [] if lr_schedule is None else [
            torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule) for opt in (self.g_optimizer, self.d_optimizer)]
        self.ema = None
        if ema_decay is not None:
            self.ema = checkpoint.ema_copy(generator)
        self._rng = torch.Generator(device=self.device).manual_seed(self.seed)
        self.step = 0

    # --- one step -------------------------------------------------------------------------------------

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _latents(self, batch: int) -> torch.Tensor:
        return torch.randn(batch, self.latent_dim, generator=self._rng, device=self.device, dtype=self._dtype)

    def _check_real(self, real: object) -> torch.Tensor:
        if not isinstance(real, torch.Tensor):
            raise TypeError(f"real must be a torch.Tensor batch, got {type(real).__name__}")
        if real.device != self.device:
            raise ValueError(f"real is on {real.device} but the trainer is on {self.device}; move the batch there")
        if real.dtype != self._dtype:
            raise TypeError(f"real must have the dtype of the generator's parameters, {self._dtype}, got {real.dtype}")
        if real.dim() < 1 or real.shape[0] == 0:
            raise ValueError(f"real must be a non-empty batch (B, ...), got shape {tuple(real.shape)}")
        return real

    def _conditioning(self, labels: object, batch: int) -> torch.Tensor | None:
        """labels (B,) int64 class indices -> c (B, num_classes) one-hot in the parameters' dtype."""
        if not self.num_classes:
            if labels is not None:
                raise ValueError("labels were given but the generator is unconditional (it has no c_dim > 0)")
            return None
        if labels is None:
            raise ValueError(f"labels must be given: the generator and discriminator are class-conditional "
                             f"(c_dim={self.num_classes})")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.shape != (batch,):
            got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise TypeError(f"labels must be an int64 tensor of shape ({batch},), got {got}")
        if labels.device != self.device:
            raise ValueError(f"labels are on {labels.device} but the trainer is on {self.device}")
        if bool(((labels < 0) | (labels >= self.num_classes)).any()):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got values in "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        return torch.nn.functional.one_hot(labels, self.num_classes).to(self._dtype)

    def _networks(self, c: torch.Tensor | None):
        """(G as z -> samples, D as x -> logits), with the class conditioning bound in."""
        if c is None:
            return self.generator, self.discriminator
        return (lambda z: self.generator(z, c)), _WithLabels(self.discriminator, c)

    def _d_objective(self, D, real: torch.Tensor, fake: torch.Tensor, due: bool) -> tuple[torch.Tensor, dict]:
        if not due:
            with self._autocast():
                return discriminator_objective(D, real, fake, loss=self.loss, drift=self.drift_weight)
        if self.amp_dtype is None:
            return discriminator_objective(D, real, fake, loss=self.loss, penalty=self.penalty,
                                           weight=self.penalty_weight, gain=self.lazy.gain, generator=self._rng,
                                           drift=self.drift_weight)
        # Under AMP the penalty gets its own full-precision forward (real and fake are in the
        # parameters' dtype): a gradient of a gradient in 16 bits loses most of its precision, and
        # the penalty's target (||grad|| = 1) is an absolute scale.
        with self._autocast():
            d_loss, parts = discriminator_objective(D, real, fake, loss=self.loss, drift=self.drift_weight)
        with torch.autocast(self.device.type, enabled=False):
            pen = gradient_penalty(D, real, fake, kind=self.penalty, weight=self.penalty_weight, generator=self._rng)
        return d_loss + self.lazy.gain * pen, {"loss": parts["loss"], "penalty": pen.detach()}

    def train_step(self, real: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
        """One D step on ``real`` and, when this is the n_critic-th call, one G step.

        Args:
            real: a batch (B, ...) of real samples on the trainer's device, in the dtype of the
                generator's parameters (float32 usually; AMP casts inside).
            labels: class-conditional models only: (B,) int64 classes of ``real``. The fake
                samples of the step are drawn for the same classes (the data's class
                distribution, as StyleGAN2-ADA samples its labels).

        Returns {"d_loss": D's adversarial loss, "penalty": the weighted penalty (before the lazy
        gain; only on steps that apply it), "g_loss": G's loss (only on steps with a G step),
        "g_regularizer": the weighted G regulariser (before its lazy gain; only where applied)} as
        Python floats, read from the device in one transfer: the step's only host synchronisation
        (float16 AMP adds the GradScalers' inf checks).
        """
        real = self._check_real(real)
        batch = real.shape[0]
        c = self._conditioning(labels, batch)
        G, D = self._networks(c)
        values: dict[str, torch.Tensor] = {}

        with torch.no_grad(), self._autocast():
            fake = G(self._latents(batch))
        fake = fake.to(self._dtype)
        if fake.shape != real.shape:
            raise ValueError(f"the generator makes samples of shape {tuple(fake.shape)} but the real batch has shape "
                             f"{tuple(real.shape)}")
        due = self.penalty is not None and self.lazy.due(self.step)
        self.d_optimizer.zero_grad(set_to_none=True)
        total, parts = self._d_objective(D, real, fake, due)
        self._d_scaler.scale(total).backward()
        self._d_scaler.step(self.d_optimizer)
        self._d_scaler.update()
        values["d_loss"] = parts["loss"]
        if due:
            values["penalty"] = parts["penalty"]

        if (self.step + 1) % self.n_critic == 0:
            self.g_optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                g_loss = losses.generator_loss(D(G(self._latents(batch))), self.loss)
            total = g_loss
            if self.g_regularizer is not None and self.g_lazy.due(self.step // self.n_critic):
                # a gradient of a gradient (path length): in full precision, like the D penalty
                half = max(1, batch // 2)
                with torch.autocast(self.device.type, enabled=False):
                    args = (self._latents(half),) if c is None else (self._latents(half), c[:half])
                    reg = self.g_regularizer_weight * self.g_regularizer(*args, generator=self._rng)
                total = g_loss + self.g_lazy.gain * reg
                values["g_regularizer"] = reg.detach()
            # inputs=: the gradient flows through D to G without touching D's .grad.
            self._g_scaler.scale(total).backward(inputs=self._g_params)
            self._g_scaler.step(self.g_optimizer)
            self._g_scaler.update()
            if self.ema is not None:
                checkpoint.update_ema(self.ema, self.generator, self.ema_decay)
            for scheduler in self._lr_schedulers:
                scheduler.step()
            values["g_loss"] = g_loss.detach()

        self.step += 1
        floats = torch.stack([v.to(torch.float32) for v in values.values()]).tolist()
        return dict(zip(values, floats))

    # --- sampling -------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, *, use_ema: bool = True, generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """n samples (n, ...) of G on the trainer's device, in full precision, with G in eval mode.

        ``use_ema``: use the EMA copy where the trainer keeps one (else G). z ~ N(0, I) is drawn
        from ``generator`` (a torch.Generator on the trainer's device; None: torch's default one),
        never from the trainer's own, so the training latents are unaffected (a generator=None
        call does advance torch's default generator, which a model with dropout trains on).
        ``labels``: class-conditional models: (n,) int64 classes; None: 0, 1, ..., C - 1, 0, 1, ...
        """
        n = check_int("n", n, 1)
        model = self.ema if use_ema and self.ema is not None else self.generator
        z = torch.randn(n, self.latent_dim, generator=generator, device=self.device, dtype=self._dtype)
        if self.num_classes and labels is None:
            labels = torch.arange(n, device=self.device) % self.num_classes
        c = self._conditioning(labels, n)
        was_training = model.training
        model.eval()
        try:
            return model(z) if c is None else model(z, c)
        finally:
            model.train(was_training)

    def save_samples(self, path: str, *, real: torch.Tensor | None = None, use_ema: bool = True,
                     modes: torch.Tensor | None = None) -> None:
        """Write a PNG preview of G's samples to ``path`` atomically (needs Pillow).

        The same latents every call (a fixed stream seeded from ``seed``). Images (N, 1 or 3, H, W),
        values in [-1, 1]: an 8 x 8 grid. 2-D points (N, 2): a scatter plot of 2500 samples (blue)
        over ``real`` (grey, which also sets the axes; else the samples do), with ``modes`` ((K, 2)
        mixture centres, optional) marked by red crosses on top.
        """
        def preview(n: int) -> torch.Tensor:
            rng = torch.Generator(device=self.device).manual_seed(self.seed + _PREVIEW_SEED_OFFSET)
            return self.sample(n, use_ema=use_ema, generator=rng)

        samples = preview(_PREVIEW_IMAGES)
        if samples.dim() == 2 and samples.shape[1] == 2:
            image = scatter_plot(preview(_PREVIEW_POINTS), real, modes=modes)
        elif samples.dim() == 4 and samples.shape[1] in (1, 3):
            image = image_grid(samples)
        else:
            raise ValueError(f"previews are drawn for 2-D points (N, 2) or images (N, 1 or 3, H, W); the generator "
                             f"makes samples of shape {tuple(samples.shape[1:])}")
        atomic_write(path, lambda f: image.save(f, format="PNG"))

    # --- training loop --------------------------------------------------------------------------------

    def fit(self, batches: Iterable[torch.Tensor], steps: int, *, progress: bool = True,
            checkpoint_path: str | None = None, checkpoint_every: int | None = None, sample_every: int | None = None,
            sample_dir: str | None = None) -> list[dict]:
        """Run ``steps`` train_step calls on batches drawn from ``batches``.

        Args:
            batches: an iterable of real batches on the trainer's device (``(images, labels)``
                pairs for class-conditional models); it must yield at least
                ``steps`` of them (a DataLoader ends after one epoch: loop it over epochs;
                :func:`fastgen.data.toy_batches` never ends).
            steps: train_step calls, an int >= 0 (so ``steps // n_critic`` G steps from step 0).
            progress: show a tqdm progress bar with the latest losses.
            checkpoint_path: save a checkpoint there (atomically) every ``checkpoint_every`` steps
                of the trainer's count and at the end.
            checkpoint_every: an int >= 1; needs checkpoint_path.
            sample_every, sample_dir: write a preview (:meth:`save_samples`) to
                ``sample_dir/step_<step>.png`` every ``sample_every`` steps, and at the end whenever
                sample_dir is given; sample_every needs sample_dir.

        Returns one dict per step: {"step": the trainer's step count after it, **train_step's losses}.
        """
        steps = check_int("steps", steps, 0)
        if checkpoint_every is not None:
            checkpoint_every = check_int("checkpoint_every", checkpoint_every, 1)
            if checkpoint_path is None:
                raise ValueError("checkpoint_every needs checkpoint_path")
        if sample_every is not None:
            sample_every = check_int("sample_every", sample_every, 1)
            if sample_dir is None:
                raise ValueError("sample_every needs sample_dir")
        if checkpoint_path is not None:
            check_writable(checkpoint_path, "checkpoint_path")  # now, not after hours of training
        history: list[dict] = []
        real = None
        checkpointed_at = sampled_at = None
        iterator = iter(batches)
        bar = progress_bar(progress, steps, "GAN training")
        try:
            for i in range(steps):
                try:
                    real = next(iterator)
                except StopIteration:
                    raise ValueError(f"batches ran out after {i} of {steps} steps") from None
                labels = None
                if isinstance(real, (tuple, list)):  # (images, labels) of a class-conditional data set
                    if len(real) != 2:
                        raise ValueError(f"a batch must be a tensor or an (images, labels) pair, got {len(real)} items")
                    real, labels = real
                record = self.train_step(real, labels)
                history.append({"step": self.step, **record})
                if bar is not None:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in record.items()}, refresh=False)
                    bar.update(1)
                if checkpoint_every is not None and self.step % checkpoint_every == 0:
                    self.save_checkpoint(checkpoint_path)
                    checkpointed_at = self.step
                if sample_every is not None and self.step % sample_every == 0:
                    self.save_samples(os.path.join(sample_dir, f"step_{self.step:08d}.png"), real=real)
                    sampled_at = self.step
        finally:
            if bar is not None:
                bar.close()
        if checkpoint_path is not None and checkpointed_at != self.step:
            self.save_checkpoint(checkpoint_path)
        if sample_dir is not None and sampled_at != self.step:
            self.save_samples(os.path.join(sample_dir, f"step_{self.step:08d}.png"), real=real)
        return history

    # --- checkpoints ----------------------------------------------------------------------------------

    def _structure(self) -> dict:
        """What a checkpoint must match to be resumed here (weights, lr and decay may change)."""
        return {"loss": self.loss, "penalty": self.penalty, "n_critic": self.n_critic,
                "lazy_interval": self.lazy.interval, "ema": self.ema is not None, "amp_dtype": str(self.amp_dtype)}

    def _parts(self) -> dict:
        return {"generator": self.generator, "discriminator": self.discriminator,
                "g_optimizer": self.g_optimizer, "d_optimizer": self.d_optimizer,
                "g_scaler": self._g_scaler, "d_scaler": self._d_scaler, "ema": self.ema}

    def save_checkpoint(self, path: str) -> None:
        """Write everything training needs to continue exactly to ``path``, atomically and checksummed
        (:mod:`fastgen.checkpoint`).

        Holds G, D, both optimizers, the EMA, the GradScalers, the step count and the random
        states: torch's CPU generator, the device's (CUDA) default generator and the trainer's own.
        """
        checkpoint.save(path, format=_FORMAT, structure=self._structure(), parts=self._parts(),
                        values={"step": self.step}, generator=self._rng)

    def load_checkpoint(self, path: str) -> None:
        """Restore a checkpoint of :meth:`save_checkpoint` into this trainer (built with the same
        networks and loss / penalty / n_critic / lazy_interval / EMA / AMP settings).

        The file is verified (checksum) and validated whole first: a corrupt, foreign or incomplete
        one raises :class:`fastgen.checkpoint.CheckpointError` (a ValueError) and changes nothing.
        """
        values = checkpoint.load(path, format=_FORMAT, structure=self._structure(), parts=self._parts(),
                                 values=_CHECKPOINT_VALUES, generator=self._rng)
        self.step = values["step"]
        for scheduler in self._lr_schedulers:  # the rates came back with the optimizers; the count follows the step
            scheduler.last_epoch = self.step // self.n_critic


# --- previews ---------------------------------------------------------------------------------------------

def _class_count(generator: nn.Module, discriminator: nn.Module) -> int:
    """The number of classes of a class-conditional pair (their ``c_dim``), 0 for unconditional ones."""
    counts = []
    for name, module in (("generator", generator), ("discriminator", discriminator)):
        c_dim = getattr(module, "c_dim", 0) or 0
        if isinstance(c_dim, bool) or not isinstance(c_dim, int) or c_dim < 0:
            raise TypeError(f"{name}.c_dim must be an int >= 0 (the number of classes), got {c_dim!r}")
        counts.append(c_dim)
    if counts[0] != counts[1]:
        raise ValueError(f"generator.c_dim ({counts[0]}) and discriminator.c_dim ({counts[1]}) must agree: both "
                         "unconditional (0) or both conditional on the same classes")
    return counts[0]


class _WithLabels(nn.Module):
    """D with its class conditioning bound: x (k B, ...) -> D(x, c repeated k times), so the joined
    [real; fake] forward of fastgen.gan.penalty (same classes for both) sees the right labels."""

    def __init__(self, discriminator: nn.Module, c: torch.Tensor):
        super().__init__()
        self.discriminator, self.c = discriminator, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] % self.c.shape[0]:
            raise ValueError(f"a batch of {x.shape[0]} does not match the {self.c.shape[0]} class labels")
        return self.discriminator(x, self.c.repeat(x.shape[0] // self.c.shape[0], 1))


def _pil():
    """PIL's Image and ImageDraw modules; Pillow is needed for previews only, so it is imported here."""
    try:
        from PIL import Image, ImageDraw
    except ImportError as exc:
        raise ImportError(f"sample previews are PNG files drawn with Pillow, which is not installed "
                          f"(pip install Pillow): {exc}") from exc
    return Image, ImageDraw


def scatter_plot(points: torch.Tensor, reference: torch.Tensor | None, size: int = _SCATTER_SIZE,
                  modes: torch.Tensor | None = None):
    """A white PIL image with ``reference`` points (grey) under ``points`` (blue), 3 x 3 pixels each,
    and ``modes`` (K, 2) as red crosses (13 pixels, 2 wide) on top; the square view covers the
    reference's finite points (else the points') with a 10% margin."""
    Image, ImageDraw = _pil()

    points = points.detach().float().cpu()
    reference = None if reference is None else reference.detach().float().cpu().reshape(-1, 2)
    frame = points if reference is None else reference
    frame = frame[torch.isfinite(frame).all(dim=1)]
    if frame.shape[0] == 0:
        center, half = torch.zeros(2), 1.0
    else:
        lo, hi = frame.min(dim=0).values, frame.max(dim=0).values
        center, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2 * 1.1, 1e-6)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    offsets = torch.cartesian_prod(torch.arange(-1, 2), torch.arange(-1, 2))

    def centres(xy: torch.Tensor) -> torch.Tensor:
        xy = xy[torch.isfinite(xy).all(dim=1)]
        px = ((xy - center) / half * (size / 2)).round().long()
        return torch.stack([size // 2 + px[:, 0], size // 2 - px[:, 1]], dim=1)  # y grows upwards

    def pixels(xy: torch.Tensor) -> list:
        px = (centres(xy)[:, None, :] + offsets[None]).reshape(-1, 2)
        px = px[((px >= 0) & (px < size)).all(dim=1)]
        return [tuple(p) for p in px.tolist()]

    if reference is not None:
        draw.point(pixels(reference), fill=(190, 190, 190))
    draw.point(pixels(points), fill=(31, 119, 180))
    if modes is not None:
        for x, y in centres(modes.detach().float().cpu().reshape(-1, 2)).tolist():  # PIL clips what lies outside
            draw.line([(x - 6, y), (x + 6, y)], fill=(214, 39, 40), width=2)
            draw.line([(x, y - 6), (x, y + 6)], fill=(214, 39, 40), width=2)
    return image


def linear_lr_decay(steps: int, start: float = 0.5, final: float = 0.01):
    """An ``lr_schedule`` for :class:`GANTrainer`: factor 1 for the first ``start * steps`` G steps, then
    linear down to ``final`` at G step ``steps`` (and ``final`` after it). ``steps`` an int >= 1,
    ``start`` in [0, 1], ``final`` >= 0. Returns a callable int -> float."""
    steps = check_int("steps", steps, 1)
    for name, value, upper in (("start", start, 1.0), ("final", final, math.inf)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= upper:
            raise ValueError(f"{name} must be a number in [0, {upper}], got {value!r}")
    begin = int(start * steps)

    def factor(k: int) -> float:
        return 1.0 + (final - 1.0) * min(1.0, max(0, k - begin) / max(1, steps - begin))
    return factor
