"""What the scheduler tests share: the fake model, diffusers' float64 twin and the closeness rules
against it, the float32 noise patch that keeps the twin in lockstep, a tiny diffusers UNet."""
from __future__ import annotations

import copy

import torch

from helpers import assert_close

# every float table a diffusers scheduler's step reads (those a scheduler lacks are skipped)
TWIN_TABLES = ("alphas_cumprod", "final_alpha_cumprod", "one", "sigmas", "alpha_t", "sigma_t", "lambda_t",
               "sigmas_interpol", "sigmas_up", "sigmas_down")


def fake_model(x, t):
    """A fixed 'network': nonlinear in x and dependent on t, so every coefficient matters."""
    return 0.3 * x + torch.tanh(x) * (0.5 + float(t) / 1000.0)


def close(ours, theirs, name):
    # float32 rounding: both compute the same math in float32, in a different order; x0 from an
    # epsilon model at high noise divides by sqrt(abar) ~ 0.006, so the tolerance scales with the
    # tensor's magnitude as well as elementwise
    assert_close(ours, theirs, atol=1e-5 * float(theirs.abs().max()) + 1e-7, rtol=1e-5, name=name)


def exact_twin(theirs):
    """A copy of a diffusers scheduler (after set_timesteps) whose tables are float64: fed float64
    tensors it computes the same math from the same float32 schedule values in float64."""
    twin = copy.deepcopy(theirs)
    for name in TWIN_TABLES:
        if isinstance(getattr(twin, name, None), torch.Tensor):
            setattr(twin, name, getattr(twin, name).double())
    return twin


def close_to_exact(ours, theirs, exact, name):
    """fastgen's float32 result has diffusers' dtype, is at least about as close to the float64
    result as diffusers' float32 result is (the flash-attention rule), and within float32 rounding of it."""
    assert ours.dtype == theirs.dtype, f"{name}: dtype {ours.dtype} != diffusers' {theirs.dtype}"
    slack = 2 * float((theirs.double() - exact).abs().max())
    assert_close(ours, exact, atol=1e-5 * float(exact.abs().max()) + slack + 1e-7, rtol=1e-5, name=name)


def float32_noise_in(monkeypatch, *modules) -> None:
    """diffusers' float64 twin must draw the float32 run's numbers: patch ``randn_tensor`` in the
    diffusers scheduler ``modules`` to draw float32 and cast. The float32 runs draw exactly as before."""
    from diffusers.utils.torch_utils import randn_tensor

    def randn32(shape, generator=None, device=None, dtype=None, **kw):
        return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32, **kw).to(dtype)

    for module in modules:
        monkeypatch.setattr(module, "randn_tensor", randn32)


def tiny_unet(seed=0):
    import diffusers

    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2).eval()
