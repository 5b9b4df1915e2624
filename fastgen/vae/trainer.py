"""The autoencoder / VAE training loop, and VAE-GAN: Adam, clipping, EMA, atomic checkpoints, exact resume.

One :meth:`VAETrainer.train_step` on a batch x:

    [VAE-GAN only]  D step: minimise discriminator_loss(D(x), D(x_hat.detach()))        (fastgen.gan.losses)
    model step:     minimise model(x)["loss"]  (VAE: -log p(x|z) + beta KL; Autoencoder: -log p(x|z))
                    [VAE-GAN: + adversarial_weight * adversarial_reconstruction_loss(D, x_hat)]
                    Adam on clip_grad_norm_(grads, grad_clip); then ema <- lerp(ema, model, 1 - ema_decay)

x_hat is the likelihood's mean at the sampled z (the model's "reconstruction"). The VAE-GAN is this
thin composition of the VAE with GAN's existing adversarial term (Larsen et al. 2016 also replace
the pixel likelihood with D's features; this keeps the likelihood, so the ELBO stays a bound).

Checkpoints, the EMA update and the progress bar are the package's own (:mod:`fastgen.checkpoint`,
:func:`fastgen._io.progress_bar`), as in the diffusion and GAN trainers. Randomness: the VAE's eps
comes from the trainer's ``torch.Generator`` (on the training device, seeded with ``seed``), which a
checkpoint holds with torch's CPU (and CUDA) states, so resumed training continues exactly as
uninterrupted training would, given the same batches after the checkpoint.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn

from .. import checkpoint
from .._fit import fit_windowed
from .._validate import check_int
from ..gan import losses as gan_losses
from ..models.autoencoder import Autoencoder
from ..models.vae import VAE

__all__ = ["VAETrainer"]

_FORMAT = "fastgen.vae.VAETrainer/1"


def _is_int(value: object, lo: int, hi: int | None = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= lo and (hi is None or value < hi)


_CHECKPOINT_VALUES = {"step": lambda v: _is_int(v, 0), "seed": lambda v: _is_int(v, 0, 2**63)}


def _number(name: str, value: object, *, lo: float, hi: float = math.inf, lo_open: bool = True,
            none_ok: bool = False) -> float | None:
    if value is None and none_ok:
        return None
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) \
        and (value > lo if lo_open else value >= lo) and value < hi
    if not ok:
        bound = f"{'>' if lo_open else '>='} {lo:g}" + ("" if hi == math.inf else f" and < {hi:g}")
        raise ValueError(f"{name} must be {'None or ' if none_ok else ''}a finite number {bound}, got {value!r}")
    return float(value)


class VAETrainer:
    """Trains a :class:`fastgen.models.VAE` or :class:`fastgen.models.Autoencoder` (optionally as a VAE-GAN).

    Args:
        model: the VAE or Autoencoder; moved to ``device``.
        lr, betas, weight_decay: of the model's Adam(W) optimizer.
        ema_decay: None, or keep an exponential moving average of the model with this decay in
            (0, 1), updated after every step (:func:`fastgen.checkpoint.update_ema`).
        grad_clip: None, or clip the model's global gradient 2-norm to this value (> 0).
        discriminator: None, or an nn.Module mapping images (B, C, H, W) to logits: trains a VAE-GAN.
        adversarial_loss: one of :data:`fastgen.gan.losses.LOSS_KINDS`, for D and for the model's term.
        adversarial_weight: the weight (>= 0) of the adversarial term in the model's loss.
        d_lr, d_betas: the discriminator's Adam (DCGAN's 2e-4, (0.5, 0.999)).
        device: where to train. None: where the model's parameters are.
        seed: an int in [0, 2**63); seeds the trainer's generator (the VAE's eps).

    Attributes: ``model``, ``ema`` (or None), ``optimizer``, ``discriminator`` and ``d_optimizer``
    (or None), ``device``, ``step``, ``seed``.
    """

    def __init__(self, model: nn.Module, *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 0.0, ema_decay: float | None = None, grad_clip: float | None = None,
                 discriminator: nn.Module | None = None, adversarial_loss: str = "ns",
                 adversarial_weight: float = 0.1, d_lr: float = 2e-4, d_betas: tuple[float, float] = (0.5, 0.999),
                 device: torch.device | str | None = None, seed: int = 0):
        if not isinstance(model, (VAE, Autoencoder)):
            raise TypeError(f"model must be a fastgen.models.VAE or Autoencoder, got {type(model).__name__}")
        lr = _number("lr", lr, lo=0.0)
        weight_decay = _number("weight_decay", weight_decay, lo=0.0, lo_open=False)
        self.ema_decay = _number("ema_decay", ema_decay, lo=0.0, hi=1.0, none_ok=True)
        self.grad_clip = _number("grad_clip", grad_clip, lo=0.0, none_ok=True)
        if discriminator is not None and not isinstance(discriminator, nn.Module):
            raise TypeError(f"discriminator must be None or a torch.nn.Module, got {type(discriminator).__name__}")
        if adversarial_loss not in gan_losses.LOSS_KINDS:
            raise ValueError(f"adversarial_loss must be one of {gan_losses.LOSS_KINDS}, got {adversarial_loss!r}")
        self.adversarial_weight = _number("adversarial_weight", adversarial_weight, lo=0.0, lo_open=False)
        d_lr = _number("d_lr", d_lr, lo=0.0)
        self.seed = check_int("seed", seed, 0)
        if self.seed >= 2**63:
            raise ValueError(f"seed must be < 2**63, got {self.seed}")

        if device is not None:
            model.to(device)
        self._params = [p for p in model.parameters() if p.requires_grad]
        if not self._params:
            raise ValueError("model has no trainable parameters")
        self.device = self._params[0].device
        self.model = model
        self.optimizer = torch.optim.AdamW(self._params, lr=lr, betas=betas, weight_decay=weight_decay)
        self.ema = checkpoint.ema_copy(model) if self.ema_decay is not None else None
        self.discriminator, self.d_optimizer, self.adversarial_loss = None, None, adversarial_loss
        if discriminator is not None:
            discriminator.to(self.device)
            d_params = [p for p in discriminator.parameters() if p.requires_grad]
            if not d_params:
                raise ValueError("discriminator has no trainable parameters")
            self.discriminator = discriminator
            self.d_optimizer = torch.optim.Adam(d_params, lr=d_lr, betas=d_betas)
        self._rng = torch.Generator(device=self.device).manual_seed(self.seed)
        self.step = 0

    # --- one step -------------------------------------------------------------------------------------

    def _check_batch(self, x: object) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor batch (B, C, H, W), got {type(x).__name__}")
        if x.device != self.device:
            raise ValueError(f"x is on {x.device} but the trainer is on {self.device}; move the batch there")
        if x.dtype != self._params[0].dtype:
            raise TypeError(f"x must have the dtype of the model's parameters, {self._params[0].dtype}, got {x.dtype}")
        if x.dim() != 4 or x.shape[0] == 0:
            raise ValueError(f"x must be a non-empty batch (B, C, H, W), got shape {tuple(x.shape)}")
        return x

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if isinstance(self.model, VAE):
            return self.model(x, generator=self._rng)
        return self.model(x)

    def _step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One step; returns 0-d device tensors (no host sync)."""
        x = self._check_batch(x)
        self.model.train()
        out = self._forward(x)
        values: dict[str, torch.Tensor] = {}
        loss = out["loss"]
        if self.discriminator is not None:
            D, recon = self.discriminator, out["reconstruction"]
            self.d_optimizer.zero_grad(set_to_none=True)
            d_loss = gan_losses.discriminator_loss(D(x), D(recon.detach()), self.adversarial_loss)
            d_loss.backward()
            self.d_optimizer.step()
            adv = gan_losses.adversarial_reconstruction_loss(D, recon, self.adversarial_loss)
            values["d_loss"], values["adversarial"] = d_loss.detach(), adv.detach()
            loss = loss + self.adversarial_weight * adv
        self.optimizer.zero_grad(set_to_none=True)
        # inputs=: the adversarial term's gradient stops at the model, D's .grad stays untouched
        loss.backward(inputs=self._params)
        values["loss"] = out["loss"].detach()
        if "elbo" in out:
            values["elbo"], values["kl"] = out["elbo"].detach().mean(), out["kl"].detach().mean()
        if self.grad_clip is not None:
            values["grad_norm"] = torch.nn.utils.clip_grad_norm_(self._params, self.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            checkpoint.update_ema(self.ema, self.model, self.ema_decay)
        self.step += 1
        return values

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        """One step on a batch x (B, C, H, W) on the trainer's device, in the parameters' dtype and in
        the likelihood's range.

        Returns Python floats, read in one transfer: "loss" (the model's: -log p(x|z) + beta KL,
        batch mean), for a VAE "elbo" and "kl" (batch means, nats), with grad_clip "grad_norm"
        (before clipping), for a VAE-GAN "d_loss" and "adversarial" (the model's unweighted term).
        """
        values = self._step(x)
        return dict(zip(values, torch.stack([v.float() for v in values.values()]).tolist()))

    # --- training loop --------------------------------------------------------------------------------

    def fit(self, batches: Iterable, steps: int, *, progress: bool = True, checkpoint_path: str | None = None,
            checkpoint_every: int | None = None, log_every: int = 50) -> list[dict]:
        """Run ``steps`` steps on batches from ``batches`` (x, or (x, label) pairs such as
        :func:`fastgen.data.digit_batches` yields; labels are ignored). It must yield at least ``steps``.

        Args as :meth:`fastgen.diffusion.DiffusionTrainer.fit`: a checkpoint (atomic) every
        ``checkpoint_every`` steps and at the end when ``checkpoint_path`` is given; values read
        from the device once per ``log_every`` steps.

        Returns one record per logging point: {"step", and the mean of each train_step value since
        the previous record}.
        """
        return fit_windowed(self, lambda batch: self._step(batch[0] if isinstance(batch, (tuple, list)) else batch),
                            batches, steps, description="VAE training", progress=progress,
                            checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every, log_every=log_every)

    # --- checkpoints ----------------------------------------------------------------------------------

    def _structure(self) -> dict:
        """What a checkpoint must match to be resumed here (lr, beta, weights and decay may change)."""
        return {"model": type(self.model).__name__, "ema": self.ema is not None,
                "adversarial_loss": None if self.discriminator is None else self.adversarial_loss}

    def _parts(self) -> dict:
        return {"model": self.model, "ema": self.ema, "optimizer": self.optimizer,
                "discriminator": self.discriminator, "d_optimizer": self.d_optimizer}

    def save_checkpoint(self, path: str) -> None:
        """Write the model, EMA, optimizers, discriminator, step, seed and random states to ``path``,
        atomically and checksummed (:mod:`fastgen.checkpoint`)."""
        checkpoint.save(path, format=_FORMAT, structure=self._structure(), parts=self._parts(),
                        values={"step": self.step, "seed": self.seed}, generator=self._rng)

    def load_checkpoint(self, path: str) -> None:
        """Restore a :meth:`save_checkpoint` file into this trainer (same architecture, EMA on/off and
        adversarial setting). A corrupt, foreign or incomplete file raises
        :class:`fastgen.checkpoint.CheckpointError` (a ValueError) and changes nothing."""
        values = checkpoint.load(path, format=_FORMAT, structure=self._structure(), parts=self._parts(),
                                 values=_CHECKPOINT_VALUES, generator=self._rng)
        self.step, self.seed = values["step"], values["seed"]
