"""The diffusion training objective in one call: draw timesteps, noise x0, run the model, the loss.

    t ~ U{0, ..., T-1} per sample,   x_t = sqrt(abar[t]) x0 + sqrt(1 - abar[t]) eps,
    loss = mean((model(x_t, t) - target)^2),   target = eps | x0 | sqrt(abar) eps - sqrt(1 - abar) x0

(Ho et al. 2020, Algorithm 1; v-prediction: Salimans & Ho 2022.) With a Philox seed, eps is
generated inside the noising kernel and regenerated inside the loss kernels (forward and
backward), so it never exists in memory: a step moves only x0, x_t, the prediction and its
gradient.

Where eps comes from:
* ``seed`` given: Philox eps from that seed on every device (reproducible across devices).
* no ``seed``, CUDA: a Philox seed drawn from ``generator`` (or torch's default generator); eps is
  regenerated in the kernels.
* no ``seed``, CPU: eps = torch.randn(..., generator=generator), drawn once and passed to both ops.
  On the CPU the in-kernel normal costs ~40-60 ns per element (scalar libm log and cos of
  Box-Muller, kept scalar so that the loss regenerates add_noise's eps bit for bit), against
  ~8 ns per element for torch.randn; regenerating eps three times (noising, loss forward, loss
  backward) is then ~10x slower than drawing it once and reading it twice. Measured at
  256x3x32x32 float32, one thread, without a model (noising + loss + gradient): ~100-170 ms with
  in-kernel eps, ~11-16 ms with torch.randn eps, ~13-17 ms for the eager torch step.
"""
from __future__ import annotations

import torch

from .. import _rng, _validate
from ..ops import add_noise, diffusion_loss


def _draw_timesteps(batch: int, num_train: int, generator, device: torch.device) -> torch.Tensor:
    draw_device = generator.device if generator is not None else device
    t = torch.randint(0, num_train, (batch,), generator=generator, device=draw_device, dtype=torch.int64)
    return t.to(device, non_blocking=True)


def _model_output(out):
    """The prediction tensor of a model's result: diffusers' UNet2DModel returns an object with ``.sample``."""
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)):  # diffusers with return_dict=False
        return out[0]
    return out


def training_loss(model, x0: torch.Tensor, alphas_cumprod: torch.Tensor, *, prediction_type: str = "epsilon",
                  timesteps=None, seed=None, generator: torch.Generator | None = None, impl: str = "auto",
                  model_kwargs: dict | None = None) -> torch.Tensor:
    """The denoising loss of ``model`` on a batch of clean samples ``x0``: a float32 scalar.

    Args:
        model: callable ``model(x_t, t, **model_kwargs)`` returning the prediction (x0's shape), or
            an object with ``.sample`` (diffusers' UNet2DModel), or a tuple whose first item it is.
        x0: clean samples (B, ...), float32 / float16 / bfloat16 (float64 runs the references).
        alphas_cumprod: (T,) cumulative alpha products on x0's device.
        prediction_type: "epsilon", "sample" or "v_prediction".
        timesteps: int64 (B,) (or an int / shape () / (1,)); None draws them uniformly from
            [0, T) with ``generator`` (or torch's default generator).
        seed: Philox seed of eps (int or int64 state [seed, offset] on x0's device); see the
            module docstring for what happens without one.
        generator: torch.Generator for the timesteps and, without a seed, for eps (CPU) or the
            Philox seed (CUDA).
        impl: implementation of add_noise and diffusion_loss ("auto", "triton", "cpu", ...).
        model_kwargs: extra keyword arguments for the model (class labels, conditioning).
    """
    x0 = _validate.check_floating("x0", x0)
    if prediction_type not in ("epsilon", "sample", "v_prediction"):  # checked before the model runs
        raise ValueError(f"prediction_type must be one of ('epsilon', 'sample', 'v_prediction'), got {prediction_type!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    table = _validate.check_table("alphas_cumprod", alphas_cumprod, "x0", x0)
    if timesteps is None:
        timesteps = _draw_timesteps(x0.shape[0], table.numel(), generator, x0.device)
    noise = None
    if seed is None:
        if x0.device.type == "cpu":
            noise = _rng.randn_like_diffusers(x0.shape, generator, x0.device, x0.dtype)
        else:
            # a state tensor on the device: drawing it from a CUDA generator costs no host sync
            drawn = torch.randint(0, 2**62, (1,), generator=generator, dtype=torch.int64,
                                  device=generator.device if generator is not None else "cpu")
            seed = torch.cat([drawn, torch.zeros_like(drawn)]).to(x0.device, non_blocking=True)
    x_t = add_noise(x0, timesteps, table, noise, seed=seed, impl=impl)
    t = timesteps if isinstance(timesteps, torch.Tensor) else torch.full((x0.shape[0],), timesteps, device=x0.device)
    pred = _model_output(model(x_t, t, **(model_kwargs or {})))
    return diffusion_loss(pred, x0, timesteps, table, noise, seed=seed, prediction_type=prediction_type, impl=impl)
