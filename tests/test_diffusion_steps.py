"""fastgen.ops ddpm_step / ddim_step / dpmpp_2m_step and the coefficient builders, against
diffusers' scheduler steps (the reference) on every implementation, per-sample schedule
values, Philox noise, the builders' 16-column rows (state = x0, history only in H1) and bad input."""
import pytest
import torch

from fastgen import _layout, _rng
from fastgen.ops import ddim_step, ddpm_step, dpmpp_2m_step
from fastgen.ops.sampling_step import H1, H2, H3, H4, NUM_COEFS, O0, OX, S0, SE, SX
from fastgen.ops.step_coefficients import ddim_coefficients, ddpm_coefficients, dpmpp_coefficients
from helpers import assert_close, impl_params

diffusers = pytest.importorskip("diffusers")

SHAPE = (3, 2, 5, 7)  # odd sizes


def close(ours, theirs, name="output"):
    assert_close(ours, theirs, atol=2e-5 * float(theirs.abs().max()) + 1e-7, rtol=2e-5, name=name)


def scheduler_pair(cls, n, **config):
    sched = getattr(diffusers, cls)(**config)
    sched.set_timesteps(n)
    return sched


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("prediction_type,variance_type,clip", [("epsilon", "fixed_small", 1.0),
                                                                  ("v_prediction", "fixed_large", None),
                                                                  ("sample", "fixed_small_log", 0.5)])
def test_ddpm_step_matches_diffusers(device, impl, prediction_type, variance_type, clip):
    sched = scheduler_pair("DDPMScheduler", 10, prediction_type=prediction_type, variance_type=variance_type,
                           clip_sample=clip is not None, clip_sample_range=clip or 1.0)
    x, m = torch.randn(SHAPE), torch.randn(SHAPE)
    t = int(sched.timesteps[3])
    abar, abar_prev = sched.alphas_cumprod[t].item(), sched.alphas_cumprod[int(sched.previous_timestep(t))].item()
    ref = sched.step(m, t, x, generator=torch.Generator().manual_seed(5))
    out, x0 = ddpm_step(m.to(device), x.to(device), abar, abar_prev, prediction_type=prediction_type,
                        variance_type=variance_type, clip_sample_range=clip, generator=torch.Generator().manual_seed(5),
                        return_pred_original=True, impl=impl)
    close(out.cpu(), ref.prev_sample)
    close(x0.cpu(), ref.pred_original_sample, "x0")
    assert x0.dtype == torch.float32


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("eta,use_clipped", [(0.0, False), (1.0, False), (0.4, True)])
def test_ddim_step_matches_diffusers(device, impl, eta, use_clipped):
    sched = scheduler_pair("DDIMScheduler", 8, prediction_type="v_prediction", set_alpha_to_one=False)
    x, m, z = torch.randn(SHAPE), torch.randn(SHAPE), torch.randn(SHAPE)
    for t in [int(sched.timesteps[0]), int(sched.timesteps[-1])]:  # the last step lands on final_alpha_cumprod
        prev = t - 1000 // 8
        abar_prev = sched.alphas_cumprod[prev].item() if prev >= 0 else sched.final_alpha_cumprod.item()
        ref = sched.step(m, t, x, eta=eta, use_clipped_model_output=use_clipped, variance_noise=z)
        out = ddim_step(m.to(device), x.to(device), sched.alphas_cumprod[t].item(), abar_prev, eta=eta,
                        prediction_type="v_prediction", clip_sample_range=1.0, use_clipped_model_output=use_clipped,
                        noise=z.to(device), impl=impl)
        close(out.cpu(), ref.prev_sample, f"t={t}")


def test_per_sample_schedule_values_match_scalar_calls():
    x, m, z = torch.randn(SHAPE), torch.randn(SHAPE), torch.randn(SHAPE)
    abar = torch.tensor([0.9, 0.5, 0.01])
    abar_prev = torch.tensor([0.95, 0.6, 1.0])
    out = ddim_step(m, x, abar, abar_prev, eta=1.0, noise=z)
    out_ddpm = ddpm_step(m, x, abar, abar_prev, noise=z, clip_sample_range=1.0)
    for b in range(3):
        sl = slice(b, b + 1)
        close(out[sl], ddim_step(m[sl], x[sl], float(abar[b]), float(abar_prev[b]), eta=1.0, noise=z[sl]))
        close(out_ddpm[sl], ddpm_step(m[sl], x[sl], float(abar[b]), float(abar_prev[b]), noise=z[sl],
                                      clip_sample_range=1.0))


@pytest.mark.parametrize("device,impl", impl_params())
@pytest.mark.parametrize("algorithm_type,solver_type", [("dpmsolver++", "midpoint"), ("dpmsolver++", "heun"),
                                                        ("sde-dpmsolver++", "midpoint"), ("sde-dpmsolver++", "heun")])
def test_dpmpp_2m_step_matches_diffusers(device, impl, algorithm_type, solver_type):
    sched = scheduler_pair("DPMSolverMultistepScheduler", 4, algorithm_type=algorithm_type, solver_type=solver_type)
    s = sched.sigmas.double()
    alpha, sigma = 1 / (s * s + 1).sqrt(), s / (s * s + 1).sqrt()
    x = torch.randn(SHAPE)
    prev_x0 = None
    for i, t in enumerate(sched.timesteps):
        m, z = torch.tanh(x) * 0.7, torch.randn(SHAPE)
        ref = sched.step(m, t, x, variance_noise=z).prev_sample
        second = 0 < i < 3  # diffusers: first order at the start and at the final step to sigma = 0
        out, x0 = dpmpp_2m_step(m.to(device), x.to(device), prev_x0 if second else None, alpha_t=float(alpha[i + 1]),
                                sigma_t=float(sigma[i + 1]), alpha_s0=float(alpha[i]), sigma_s0=float(sigma[i]),
                                alpha_s1=float(alpha[i - 1]) if second else None,
                                sigma_s1=float(sigma[i - 1]) if second else None,
                                algorithm_type=algorithm_type, solver_type=solver_type, noise=z.to(device), impl=impl)
        close(out.cpu(), ref, f"step {i}")
        close(x0.cpu(), sched.model_outputs[-1], f"x0 at step {i}")
        assert x0.dtype == torch.float32
        x, prev_x0 = ref, x0


def test_seed_noise_is_philox_and_eta0_reads_no_noise():
    x, m = torch.randn(SHAPE), torch.randn(SHAPE)
    clean = ddim_step(m, x, 0.3, 0.5, eta=0.0)
    nan_noise = torch.full(SHAPE, float("nan"))
    assert torch.equal(ddim_step(m, x, 0.3, 0.5, eta=0.0, noise=nan_noise), clean)  # eta = 0 never reads z
    out = ddim_step(m, x, 0.3, 0.5, eta=1.0, seed=123)
    assert torch.equal(out, ddim_step(m, x, 0.3, 0.5, eta=1.0, seed=123))
    z = _layout.flat_as(_rng.philox_normal_ref(torch.tensor([123, 0]), x.numel()), x)
    close(out, ddim_step(m, x, 0.3, 0.5, eta=1.0, noise=z))
    # no noise source at all still draws (a fresh seed), it never silently drops the noise term
    assert not torch.equal(ddpm_step(m, x, 0.3, 0.5), ddpm_step(m, x, 0.3, 0.5))


def test_builders_shapes_and_dtypes():
    a = torch.rand(4, 5, dtype=torch.float64) * 0.9 + 0.05
    rows = ddpm_coefficients(a, 1.0)
    assert rows.shape == (4, 5, NUM_COEFS) and rows.dtype == torch.float32
    assert ddim_coefficients(0.5, 0.7, eta=0.0).shape == (NUM_COEFS,)
    assert dpmpp_coefficients(a, 1 - a, a, a).shape == (4, 5, NUM_COEFS)
    # the final DPM step to sigma = 0 lands on x0 exactly: out = x0
    final = dpmpp_coefficients(1.0, 0.0, 0.6, 0.8)
    assert final.isfinite().all() and final[OX] == 0 and final[O0] == 1


def test_builder_rows_keep_x0_as_state_and_use_only_h1():
    """Every built row has state = x0 (S0 = 1, SX = SE = 0); only DPM-Solver++'s second order
    reads history, in slot H1."""
    a = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)
    rows = torch.cat([ddpm_coefficients(a, a.sqrt()), ddim_coefficients(a, a.sqrt(), eta=0.5),
                      dpmpp_coefficients(a.sqrt(), (1 - a).sqrt(), a, (1 - a * a).sqrt()),
                      dpmpp_coefficients(a.sqrt(), (1 - a).sqrt(), a, (1 - a * a).sqrt(), a * a, (1 - a ** 4).sqrt())])
    assert rows.shape == (12, NUM_COEFS)
    assert (rows[:, S0] == 1).all() and (rows[:, [SX, SE, H2, H3, H4]] == 0).all()
    assert (rows[:9, H1] == 0).all() and (rows[9:, H1] != 0).all()


def test_bad_input():
    x, m = torch.randn(SHAPE), torch.randn(SHAPE)
    with pytest.raises(ValueError, match=r"alpha_prod_t must lie in \[0.0, 1.0\)"):
        ddpm_step(m, x, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"alpha_prod_t_prev must lie in \[0.0, 1.0\]"):
        ddim_step(m, x, 0.5, 1.5)
    with pytest.raises(ValueError, match=r"alpha_prod_t must be a scalar or of shape \(3,\)"):
        ddim_step(m, x, torch.rand(2), 0.5)
    with pytest.raises(TypeError, match="alpha_prod_t must be a floating tensor"):
        ddim_step(m, x, torch.tensor([1, 2, 3]), 0.5)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        ddim_step(m, x, 0.5, 0.6, prediction_type="x0")
    with pytest.raises(ValueError, match="variance_type must be one of"):
        ddpm_step(m, x, 0.5, 0.6, variance_type="learned")
    with pytest.raises(ValueError, match="eta must be a number >= 0"):
        ddim_step(m, x, 0.5, 0.6, eta=-0.5)
    with pytest.raises(ValueError, match="prev_x0, alpha_s1 and sigma_s1 must all be given"):
        dpmpp_2m_step(m, x, x, alpha_t=0.9, sigma_t=0.4, alpha_s0=0.8, sigma_s0=0.6)
    with pytest.raises(ValueError, match="algorithm_type must be one of"):
        dpmpp_2m_step(m, x, None, alpha_t=0.9, sigma_t=0.4, alpha_s0=0.8, sigma_s0=0.6, algorithm_type="dpmsolver")
    with pytest.raises(ValueError, match="model_output must have the shape"):
        ddim_step(m[:1], x, 0.5, 0.6)
