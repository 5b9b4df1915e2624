"""The diffusion training loop: the fused DDPM objective, AdamW, clipping, EMA, AMP, exact resume.

One :meth:`DiffusionTrainer.train_step` on a batch of clean samples x0 (Ho et al. 2020, Algorithm 1):

    t ~ U{0, ..., T-1} (the trainer's generator),  eps ~ N(0, I) (in-kernel Philox, see below)
    loss = training_loss(model, x0, abar)           # fused noising + loss, eps never in memory
    AdamW step on clip_grad_norm_(grads, grad_clip),  then ema <- lerp(ema, model, 1 - ema_decay)

Randomness, and why resume is exact: the timesteps come from the trainer's own ``torch.Generator``
(on the training device, seeded with ``seed``); eps comes from the Philox key
:func:`step_noise_seed` ``(seed, step)``, a pure function of the trainer's seed and step count, so
no noise state has to be carried; dropout draws from torch's default generators. A checkpoint holds
the step, the trainer's generator and torch's CPU (and CUDA) generator states, so training resumed
from it continues bit for bit as uninterrupted training would, given the same batches after the
checkpoint (the batch stream is the caller's: resume it too, e.g. by restoring its generator).

Host synchronisation: :meth:`train_step` reads the loss and gradient norm in one transfer (the
step's only sync). :meth:`fit` calls the step without reading anything and syncs once per
``log_every`` steps, so on a GPU the host runs ahead of the device in between.
"""
from __future__ import annotations

import logging
import math
from typing import Iterable

import torch
import torch.nn as nn

from .. import checkpoint
from .._fit import fit_windowed
from .._validate import check_int
from .sampler import philox_seed
from .sampler import sample as sample_loop
from .training import _draw_timesteps, training_loss

logger = logging.getLogger("fastgen")

__all__ = ["DiffusionTrainer", "step_noise_seed", "AMP_DTYPES"]

AMP_DTYPES = (None, torch.bfloat16)
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
_FORMAT = "fastgen.diffusion.DiffusionTrainer/1"


def _is_int(value: object, lo: int, hi: int | None = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= lo and (hi is None or value < hi)


# The plain values of a checkpoint, each with the test it must pass to be restored.
_CHECKPOINT_VALUES = {
    "step": lambda v: _is_int(v, 0),
    "seed": lambda v: _is_int(v, 0, 2**63),
    "sample_shape": lambda v: v is None or (isinstance(v, (tuple, list)) and all(_is_int(d, 0) for d in v)),
}


def step_noise_seed(seed: int, step: int) -> int:
    """The Philox key of eps at training step ``step`` (0-based) of a trainer seeded with ``seed``.

    Two SplitMix64 rounds: distinct (seed, step) pairs give unrelated keys in [0, 2**63), and
    the key of step k needs nothing but k, which is what makes resuming exact.
    """
    return philox_seed(philox_seed(seed) + step)


def _positive_or_none(name: str, value: object, *, below_one: bool = False) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be None or a finite number > 0, got {value!r}")
    if below_one and value >= 1:
        raise ValueError(f"{name} must be None or a number in (0, 1), got {value!r}")
    return float(value)


def _alphas_cumprod(schedule: object) -> torch.Tensor:
    """The (T,) float32 table of a scheduler (``.alphas_cumprod``) or of a tensor given directly."""
    table = getattr(schedule, "alphas_cumprod", schedule)
    if not isinstance(table, torch.Tensor):
        raise TypeError(f"scheduler_or_alphas_cumprod must be a scheduler with .alphas_cumprod (fastgen's or "
                        f"diffusers') or a (T,) tensor, got {type(schedule).__name__}")
    if table.dim() != 1 or table.numel() < 2 or not table.dtype.is_floating_point:
        raise ValueError(f"alphas_cumprod must be a floating (T,) tensor with T >= 2, got {table.dtype} "
                         f"{tuple(table.shape)}")
    if not bool(((table > 0) & (table <= 1)).all()) or not bool((table[1:] <= table[:-1]).all()):
        raise ValueError("alphas_cumprod must lie in (0, 1] and be non-increasing (a cumulative product of alphas)")
    return table.detach().to(torch.float32)


class DiffusionTrainer:
    """Trains a denoising model with :func:`fastgen.diffusion.training_loss`.

    Args:
        model: an nn.Module ``model(x_t, t[, y])`` -> prediction of x_t's shape (fastgen's UNet,
            or anything returning a tensor / an object with ``.sample`` / a tuple starting with one).
        scheduler_or_alphas_cumprod: a scheduler with ``.alphas_cumprod`` (fastgen's or diffusers'
            DDPMScheduler, ...) or the (T,) table itself; kept as float32 on the device.
        prediction_type: what the model predicts: "epsilon", "sample" or "v_prediction".
        lr, weight_decay: of the AdamW optimizer (DDPM: 2e-4 without weight decay).
        ema_decay: None, or keep an exponential moving average of the parameters with this decay in
            (0, 1), updated after every step (buffers are copied); :meth:`sample` uses it. With a
            few thousand steps use ~0.999: at 0.9999 the average still remembers the initial weights.
        grad_clip: None, or clip the global gradient 2-norm to this value (DDPM: 1.0).
        amp_dtype: None or torch.bfloat16: the model's forward (only) runs under ``torch.autocast``;
            the noising, the loss and the optimizer stay float32.
        channels_last: put the model's 4-D weights and every batch in channels_last memory format.
        compile: run the model through ``torch.compile(model, **compile_options)``; the
            optimizer, EMA and checkpoints keep working on the plain module.
        compile_options: keyword arguments for torch.compile (e.g. ``{"backend": "eager"}``).
        device: where to train; the model is moved there. None: where its parameters are.
        seed: an int >= 0; seeds the timesteps' generator and the per-step Philox keys.
        distributed: train data-parallel over torch.distributed's default process group (set up by the
            caller, e.g. under torchrun; every rank builds the same trainer): the model runs inside
            ``DistributedDataParallel`` (gradients averaged over ranks) and every rank passes its own
            shard of each global batch, rank r the samples r*b .. (r+1)*b - 1 of b * world_size (equal b
            on every rank). The timesteps are drawn for the whole global batch from the shared generator
            and eps is the global batch's Philox stream at the shard's offset, so a step is the
            one-process step on the global batch, up to the float summation order of the all-reduce.
            :meth:`save_checkpoint` writes on rank 0 only; every rank loads. Losses returned and logged
            are the rank's own shard's.

    Attributes: ``model`` (the plain module), ``ema`` (the averaged copy, or None), ``optimizer``,
    ``alphas_cumprod``, ``device``, ``step`` (train steps so far), ``seed``.
    """

    def __init__(self, model: nn.Module, scheduler_or_alphas_cumprod, *, prediction_type: str = "epsilon",
                 lr: float = 2e-4, weight_decay: float = 0.0, ema_decay: float | None = 0.9999,
                 grad_clip: float | None = 1.0, amp_dtype: torch.dtype | None = None, channels_last: bool = False,
                 compile: bool = False, compile_options: dict | None = None,
                 device: torch.device | str | None = None, seed: int = 0, distributed: bool = False):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        lr = _positive_or_none("lr", lr)
        if lr is None:
            raise ValueError("lr must be a finite number > 0, got None")
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
            raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
        self.ema_decay = _positive_or_none("ema_decay", ema_decay, below_one=True)
        self.grad_clip = _positive_or_none("grad_clip", grad_clip)
        if amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {AMP_DTYPES} (float16 would need a GradScaler), "
                             f"got {amp_dtype!r}")
        if compile_options is not None and not isinstance(compile_options, dict):
            raise TypeError(f"compile_options must be a dict or None, got {type(compile_options).__name__}")
        self.seed = check_int("seed", seed, 0)
        if self.seed >= 2**63:
            raise ValueError(f"seed must be < 2**63, got {self.seed}")

        if device is not None:
            model.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model has no trainable parameters (none, or all with requires_grad=False)")
        self.device = params[0].device
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.model, self.prediction_type = model, prediction_type
        self.amp_dtype, self.channels_last = amp_dtype, bool(channels_last)
        self.alphas_cumprod = _alphas_cumprod(scheduler_or_alphas_cumprod).to(self.device)
        self._params = params
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=float(weight_decay))
        self.rank, self.world_size = 0, 1
        forward = model
        if distributed:
            import torch.distributed as dist
            from torch.nn.parallel import DistributedDataParallel

            if not dist.is_available() or not dist.is_initialized():
                raise ValueError("distributed=True needs an initialised default process group "
                                 "(torch.distributed.init_process_group, e.g. under torchrun)")
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
            # broadcasts rank 0's weights, before the EMA copy below is taken
            forward = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda"
                                              else None)
        self._forward = torch.compile(forward, **(compile_options or {})) if compile else forward
        self.ema = None
        if self.ema_decay is not None:
            self.ema = checkpoint.ema_copy(model)
        self._rng = torch.Generator(device=self.device).manual_seed(self.seed)
        self.sample_shape: tuple[int, ...] | None = None  # of one sample, from the first batch
        self.step = 0

    # --- one step -------------------------------------------------------------------------------------

    def _model_call(self, x_t: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        """The model under autocast when asked; its prediction handed back in x_t's dtype, so the
        fused loss (and its gradient) is computed in float32."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self._forward(x_t, t, **kwargs)
        if hasattr(out, "sample"):
            out = out.sample
        elif isinstance(out, (tuple, list)):
            out = out[0]
        return out.to(x_t.dtype)

    def _check_batch(self, x0: object, y: object) -> tuple[torch.Tensor, dict]:
        if not isinstance(x0, torch.Tensor):
            raise TypeError(f"x0 must be a torch.Tensor batch (B, C, H, W), got {type(x0).__name__}")
        if x0.device != self.device:
            raise ValueError(f"x0 is on {x0.device} but the trainer is on {self.device}; move the batch there")
        if x0.dtype != self._params[0].dtype:
            raise TypeError(f"x0 must have the dtype of the model's parameters, {self._params[0].dtype}, got "
                            f"{x0.dtype} (amp_dtype casts inside the forward)")
        if x0.dim() < 2 or x0.shape[0] == 0:
            raise ValueError(f"x0 must be a non-empty batch (B, ...), got shape {tuple(x0.shape)}")
        if self.sample_shape is not None and tuple(x0.shape[1:]) != self.sample_shape:
            raise ValueError(f"x0 has samples of shape {tuple(x0.shape[1:])} but earlier batches had "
                             f"{self.sample_shape}")
        if self.channels_last:
            if x0.dim() != 4:
                raise ValueError(f"channels_last needs 4-D batches (B, C, H, W), got shape {tuple(x0.shape)}")
            x0 = x0.contiguous(memory_format=torch.channels_last)
        if y is None:
            return x0, {}
        if not isinstance(y, torch.Tensor) or y.shape != x0.shape[:1] or y.device != self.device:
            raise ValueError(f"y must be a tensor of shape ({x0.shape[0]},) (one label per sample) on {self.device}, "
                             f"got {(tuple(y.shape), y.device) if isinstance(y, torch.Tensor) else type(y).__name__}")
        return x0, {"y": y}

    def _step(self, x0: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One optimisation step; returns {"loss", ["grad_norm"]} as 0-d device tensors (no sync)."""
        x0, kwargs = self._check_batch(x0, y)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        seed, timesteps = step_noise_seed(self.seed, self.step), None
        if self.world_size > 1:  # this rank's slice of the global batch's timesteps and noise stream
            b, r = x0.shape[0], self.rank
            timesteps = _draw_timesteps(b * self.world_size, self.alphas_cumprod.numel(), self._rng,
                                        self.device)[r * b:(r + 1) * b]
            seed = torch.tensor([seed, r * x0.numel()], dtype=torch.int64).to(self.device, non_blocking=True)
        loss = training_loss(self._model_call, x0, self.alphas_cumprod, prediction_type=self.prediction_type,
                             timesteps=timesteps, seed=seed, generator=self._rng, model_kwargs=kwargs)
        loss.backward()
        values = {"loss": loss.detach()}
        if self.grad_clip is not None:
            # the norm before clipping: what the clip acted on
            values["grad_norm"] = torch.nn.utils.clip_grad_norm_(self._params, self.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            checkpoint.update_ema(self.ema, self.model, self.ema_decay)
        if self.sample_shape is None:
            self.sample_shape = tuple(x0.shape[1:])
        self.step += 1
        return values

    def train_step(self, x0: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, float]:
        """One step on a batch.

        Args:
            x0: clean samples (B, C, H, W) (any (B, ...) the model takes) on the trainer's device,
                in the model parameters' dtype (float32 usually), scaled as the model trains on
                them (e.g. [-1, 1]).
            y: optional (B,) class labels, passed to the model as ``y=``.

        Returns {"loss": the batch's loss, "grad_norm": the gradient norm before clipping (only
        with grad_clip)} as Python floats, read in one transfer: the step's only host sync.
        """
        values = self._step(x0, y)
        floats = torch.stack([v.float() for v in values.values()]).tolist()
        return dict(zip(values, floats))

    # --- training loop --------------------------------------------------------------------------------

    def fit(self, batches: Iterable, steps: int, *, progress: bool = True, checkpoint_path: str | None = None,
            checkpoint_every: int | None = None, log_every: int = 50) -> list[dict]:
        """Run ``steps`` steps on batches drawn from ``batches``.

        Args:
            batches: an iterable of x0 batches, or of (x0, y) pairs (e.g.
                :func:`fastgen.data.digit_batches` with ``epochs=None``; its labels are passed
                as ``y`` only when the model was built with ``num_classes``); it must yield at least
                ``steps`` of them.
            steps: an int >= 0.
            progress: a tqdm bar showing the latest logged loss.
            checkpoint_path: save a checkpoint there (atomically) every ``checkpoint_every`` steps
                of the trainer's count and at the end.
            checkpoint_every: an int >= 1; needs checkpoint_path.
            log_every: read the losses from the device every this many steps (an int >= 1).

        Returns one record per logging point: {"step": the trainer's step count, "loss": the mean
        loss over the steps since the last record, "grad_norm": their mean pre-clip norm}.
        """
        conditional = getattr(self.model, "num_classes", None) is not None

        def step(batch):
            x0, y = (batch[0], batch[1] if conditional else None) if isinstance(batch, (tuple, list)) \
                else (batch, None)
            return self._step(x0, y)

        return fit_windowed(self, step, batches, steps, description="diffusion training", progress=progress,
                            checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every, log_every=log_every)

    # --- sampling -------------------------------------------------------------------------------------

    def default_scheduler(self, kind: str = "ddim"):
        """A fastgen DDIM (or "ddpm") scheduler on the trainer's own noise schedule and prediction type."""
        from .scheduling_ddim import DDIMScheduler
        from .scheduling_ddpm import DDPMScheduler

        abar = self.alphas_cumprod.detach().double().cpu()
        betas = 1.0 - abar / torch.cat([abar.new_ones(1), abar[:-1]])
        cls = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}.get(kind)
        if cls is None:
            raise ValueError(f"kind must be 'ddim' or 'ddpm', got {kind!r}")
        return cls(num_train_timesteps=abar.numel(), trained_betas=betas.numpy(), prediction_type=self.prediction_type)

    def sample(self, n: int, *, num_inference_steps: int = 50, scheduler=None, seed: int = 0, use_ema: bool = True,
               shape: tuple[int, ...] | None = None, y: torch.Tensor | None = None,
               progress: bool = False) -> torch.Tensor:
        """``n`` samples (n, *shape) float32 on the trainer's device, through :func:`fastgen.diffusion.sample`.

        Args:
            n: number of samples, an int >= 1.
            num_inference_steps: denoising steps of the scheduler.
            scheduler: any diffusers-style scheduler; default :meth:`default_scheduler` (DDIM,
                eta 0, on the trainer's schedule). Its prediction type must be the trainer's.
            seed: the initial (and any step) noise; sampling never touches the training RNGs.
            use_ema: sample with the EMA weights where the trainer keeps them (else the model; the
                plain module either way, not the torch.compile'd one).
            shape: of one sample; default that of the training batches.
            y: (n,) class labels for a class-conditional model.

        Returns x_0 in the data's scale (e.g. [-1, 1]; DDIM clips there by default).
        """
        n = check_int("n", n, 1)
        shape = self.sample_shape if shape is None else tuple(shape)
        if shape is None:
            raise ValueError("shape is unknown before the first training step: pass shape=(C, H, W)")
        scheduler = self.default_scheduler() if scheduler is None else scheduler
        config = getattr(scheduler, "config", None)
        if config is not None and config.get("prediction_type", self.prediction_type) != self.prediction_type:
            raise ValueError(f"scheduler has prediction_type={config.get('prediction_type')!r} but the model was "
                             f"trained with {self.prediction_type!r}")
        model = self.ema if use_ema and self.ema is not None else self.model
        was_training = model.training
        model.eval()
        try:
            return sample_loop(model, scheduler, (n, *shape), num_inference_steps=num_inference_steps, seed=seed,
                               device=self.device, progress=progress, model_kwargs=None if y is None else {"y": y},
                               channels_last=self.channels_last and len(shape) == 3)
        finally:
            model.train(was_training)

    # --- checkpoints ----------------------------------------------------------------------------------

    def _structure(self) -> dict:
        """What a checkpoint must match to be resumed here (lr, decay and clipping may change)."""
        return {"prediction_type": self.prediction_type, "ema": self.ema is not None,
                "amp_dtype": str(self.amp_dtype), "num_train_timesteps": self.alphas_cumprod.numel()}

    def _parts(self) -> dict:
        return {"model": self.model, "ema": self.ema, "optimizer": self.optimizer}

    def save_checkpoint(self, path: str) -> None:
        """Write everything training needs to continue exactly to ``path``, atomically and checksummed
        (:mod:`fastgen.checkpoint`).

        Holds the model, the EMA, the optimizer, the step, the seed (hence the Philox keys to
        come) and the random states: the trainer's generator, torch's CPU and the device's CUDA one.
        Distributed: rank 0 writes (every rank holds the same weights and generator states), the others
        return at once.
        """
        if self.rank != 0:
            return
        values = {"step": self.step, "seed": self.seed, "sample_shape": self.sample_shape}
        checkpoint.save(path, format=_FORMAT, structure=self._structure(), parts=self._parts(), values=values,
                        generator=self._rng)

    def load_checkpoint(self, path: str) -> None:
        """Restore a checkpoint of :meth:`save_checkpoint` into this trainer (same model architecture,
        prediction type, EMA on/off, amp_dtype and schedule length); the seed is the checkpoint's.

        The file is verified (checksum) and validated whole first: a corrupt, foreign or incomplete
        one raises :class:`fastgen.checkpoint.CheckpointError` (a ValueError) and changes nothing.
        """
        values = checkpoint.load(path, format=_FORMAT, structure=self._structure(), parts=self._parts(),
                                 values=_CHECKPOINT_VALUES, generator=self._rng)
        self.step, self.seed = values["step"], values["seed"]
        self.sample_shape = None if values["sample_shape"] is None else tuple(values["sample_shape"])
