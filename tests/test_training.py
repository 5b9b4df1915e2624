"""fastgen.diffusion.training_loss against the textbook training step written out in torch."""
import types

import pytest
import torch
import torch.nn.functional as F

from fastgen import _rng
from fastgen.diffusion import training_loss
from helpers import assert_close

T = 1000


def alphas_cumprod():
    return torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0).float()


class TinyModel(torch.nn.Module):
    """A 1x1 convolution plus a learned per-timestep bias: enough to have parameters and use t."""

    def __init__(self, channels=3, wrap=False):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 1)
        self.t_bias = torch.nn.Embedding(T, channels)
        self.wrap = wrap

    def forward(self, x, t):
        out = self.conv(x) + self.t_bias(t)[:, :, None, None]
        return types.SimpleNamespace(sample=out) if self.wrap else out


def textbook_step(model, x0, t, table, eps, prediction_type):
    a = table[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    target = {"epsilon": eps, "sample": x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction_type]
    out = model(x_t, t)
    return F.mse_loss(getattr(out, "sample", out), target)


@pytest.mark.parametrize("impl", ["cpu", "reference"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_seeded_step_matches_textbook(impl, prediction_type):
    model, x0, table = TinyModel(), torch.randn(4, 3, 6, 6), alphas_cumprod()
    t = torch.tensor([0, 17, 500, 999])
    loss = training_loss(model, x0, table, prediction_type=prediction_type, timesteps=t, seed=77, impl=impl)
    got = torch.autograd.grad(loss, list(model.parameters()))
    eps = _rng.philox_normal_ref(torch.tensor([77, 0]), x0.numel()).view_as(x0)
    want_loss = textbook_step(model, x0, t, table, eps, prediction_type)
    want = torch.autograd.grad(want_loss, list(model.parameters()))
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert_close(loss, want_loss, atol=1e-6, rtol=1e-5)
    for g, w in zip(got, want):
        assert_close(g, w, atol=1e-6, rtol=1e-5, name="parameter gradient")


def test_unseeded_cpu_step_draws_timesteps_then_noise_from_the_generator():
    model, x0, table = TinyModel(wrap=True), torch.randn(5, 3, 4, 4), alphas_cumprod()
    loss = training_loss(model, x0, table, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, T, (5,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    assert_close(loss, textbook_step(model, x0, t, table, eps, "epsilon"), atol=1e-6, rtol=1e-5)
    again = training_loss(model, x0, table, generator=torch.Generator().manual_seed(3))
    assert torch.equal(loss, again)
    other = training_loss(model, x0, table, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(loss, other)


def test_model_kwargs_and_tuple_output():
    calls = []

    def model(x, t, scale):
        calls.append(scale)
        return (x * scale,)

    x0 = torch.randn(2, 3, 4, 4)
    loss = training_loss(model, x0, alphas_cumprod(), prediction_type="sample", timesteps=0, seed=1,
                         model_kwargs={"scale": 1.0})
    assert calls == [1.0]
    # abar[0] ~ 1: x_t is nearly x0, so the sample-prediction loss of the identity model is tiny
    assert loss < 1e-3


def test_with_diffusers_unet():
    diffusers = pytest.importorskip("diffusers")
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 8), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    x0, table = torch.randn(2, 3, 8, 8), alphas_cumprod()
    t = torch.tensor([10, 900])
    loss = training_loss(unet, x0, table, timesteps=t, seed=5, prediction_type="v_prediction")
    loss.backward()
    eps = _rng.philox_normal_ref(torch.tensor([5, 0]), x0.numel()).view_as(x0)
    with torch.no_grad():
        want = textbook_step(unet, x0, t, table, eps, "v_prediction")
    assert_close(loss.detach(), want, atol=1e-5, rtol=1e-4)
    assert all(p.grad is not None for p in unet.parameters() if p.requires_grad)


def test_bad_prediction_type_fails_before_the_model_runs():
    def model(x, t):
        raise AssertionError("the model must not run")

    with pytest.raises(ValueError, match=r"prediction_type must be one of \('epsilon', 'sample', 'v_prediction'\)"):
        training_loss(model, torch.randn(2, 3), alphas_cumprod(), prediction_type="x0")
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        training_loss(model, torch.randn(2, 3), alphas_cumprod(), generator=3)
