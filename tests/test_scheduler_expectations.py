"""fastgen's schedulers against the full-loop numbers diffusers' own scheduler test suite hard-codes
(huggingface/diffusers, tests/schedulers/test_scheduler_<name>.py: ``test_full_loop_*`` and the
full-loop checks of ``test_switch`` / ``test_full_uneven_loop``). Each case runs the loop that test
runs, with the same config, steps, generator and tolerances, and asserts the same ``result_sum`` /
``result_mean``. diffusers 0.42.1's own class runs the same loop first: where it does not reproduce
a number (the hub test file may be from another release), the case is skipped with the reason
rather than holding fastgen to a number diffusers itself misses. Adapted to CPU (``torch_device``
is "cpu"; the ``*_device`` tests equal the plain ones there and are not repeated)."""
import pytest
import torch

import fastgen.diffusion as fd

diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.usefixtures("one_thread")


# Fixtures of diffusers' tests/schedulers/test_schedulers.py (SchedulerCommonTest): the sample is
# arange(4*3*8*8) laid out as (C, H, W, B), scaled to [0, 1) and permuted to (B, C, H, W); the noise
# is the same but flipped; the model is sample * t / (t + 1), a tensor t reshaped to broadcast over
# sample and cast to its dtype.
def dummy_sample_deter():
    n = 4 * 3 * 8 * 8
    return (torch.arange(n).reshape(3, 8, 8, 4) / n).permute(3, 0, 1, 2)


def dummy_noise_deter():
    n = 4 * 3 * 8 * 8
    return (torch.arange(n).flip(-1).reshape(3, 8, 8, 4) / n).permute(3, 0, 1, 2)


def dummy_model(sample, t):
    if isinstance(t, torch.Tensor):
        t = t.reshape(-1, *(1,) * (sample.ndim - 1)).to(sample.device).to(sample.dtype)
    return sample * t / (t + 1)


# get_scheduler_config of each diffusers test class
SIGMA_CFG = {"num_train_timesteps": 1100, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}
DDPM_CFG = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
            "variance_type": "fixed_small", "clip_sample": True}
DDIM_CFG = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
            "clip_sample": True}
PNDM_CFG = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}
DPM_CFG = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
           "solver_order": 2, "prediction_type": "epsilon", "thresholding": False, "sample_max_value": 1.0,
           "algorithm_type": "dpmsolver++", "solver_type": "midpoint", "lower_order_final": False,
           "euler_at_final": False, "lambda_min_clipped": -float("inf"), "variance_type": None,
           "final_sigmas_type": "sigma_min"}
DPM_SINGLE_CFG = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
                  "solver_order": 2, "prediction_type": "epsilon", "thresholding": False, "sample_max_value": 1.0,
                  "algorithm_type": "dpmsolver++", "solver_type": "midpoint", "lambda_min_clipped": -float("inf"),
                  "variance_type": None}
UNIPC_CFG = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
             "solver_order": 2, "solver_type": "bh2", "final_sigmas_type": "sigma_min"}
LCM_CFG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.0120, "beta_schedule": "scaled_linear",
           "prediction_type": "epsilon"}
EDM_EULER_CFG = {"num_train_timesteps": 256, "sigma_min": 0.002, "sigma_max": 80.0}
EDM_DPM_CFG = {"sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5, "num_train_timesteps": 1000,
               "solver_order": 2, "prediction_type": "epsilon", "thresholding": False, "sample_max_value": 1.0,
               "algorithm_type": "dpmsolver++", "solver_type": "midpoint", "lower_order_final": False,
               "euler_at_final": False, "final_sigmas_type": "sigma_min"}


# ---- the loops of the diffusers tests ---------------------------------------------------------
def loop_sigma(s, steps, generator=False, t_start=None):
    """Euler / EulerAncestral / Heun / LMS / KDPM2 / KDPM2Ancestral: the sample is *replaced* by
    scale_model_input's output before the model and the step (as diffusers' tests do)."""
    s.set_timesteps(steps)
    kw = {"generator": torch.manual_seed(0)} if generator else {}
    sample = dummy_sample_deter() * s.init_noise_sigma
    timesteps = s.timesteps
    if t_start is not None:
        timesteps = s.timesteps[t_start * s.order:]
        sample = s.add_noise(sample, dummy_noise_deter(), timesteps[:1])
    for t in timesteps:
        sample = s.scale_model_input(sample, t)
        sample = s.step(dummy_model(sample, t), t, sample, **kw).prev_sample
    return sample


def loop_edm_euler(s, steps):
    """test_scheduler_edm_euler.py: the model sees the scaled sample, the step the unscaled one."""
    s.set_timesteps(steps)
    sample = dummy_sample_deter() * s.init_noise_sigma
    for t in s.timesteps:
        out = dummy_model(s.scale_model_input(sample, t), t)
        sample = s.step(out, t, sample).prev_sample
    return sample


def loop_plain(s, steps, t_start=None, skip=0, step_args=(), generator=False):
    """DDIM (eta=0.0 positional) / DPMSolver* / UniPC / EDMDPMSolver / LCM (generator positional)."""
    s.set_timesteps(steps)
    sample = dummy_sample_deter()
    timesteps = s.timesteps[skip:]
    if t_start is not None:
        timesteps = s.timesteps[t_start * s.order:]
        sample = s.add_noise(sample, dummy_noise_deter(), timesteps[:1])
    args = tuple(torch.manual_seed(0) if a == "generator" else a for a in step_args)
    kw = {"generator": torch.manual_seed(0)} if generator else {}
    for t in timesteps:
        sample = s.step(dummy_model(sample, t), t, sample, *args, **kw).prev_sample
    return sample


def loop_ddpm(s, t_start=None):
    """test_scheduler_ddpm.py: all 1000 training timesteps (python ints), no set_timesteps."""
    generator = torch.manual_seed(0)
    sample = dummy_sample_deter()
    if t_start is None:
        timesteps = list(reversed(range(len(s))))
    else:
        timesteps = s.timesteps[t_start * s.order:]
        sample = s.add_noise(sample, dummy_noise_deter(), timesteps[:1])
    for t in timesteps:
        sample = s.step(dummy_model(sample, t), t, sample, generator=generator).prev_sample
    return sample


def loop_pndm(s, steps):
    s.set_timesteps(steps)
    sample = dummy_sample_deter()
    for t in s.prk_timesteps:
        sample = s.step_prk(dummy_model(sample, t), t, sample).prev_sample
    for t in s.plms_timesteps:
        sample = s.step_plms(dummy_model(sample, t), t, sample).prev_sample
    return sample


# diffusers 0.42.1 gives 387.94659423828125 (the hub number, 387.9466), fastgen 387.9676513671875: a
# 0.021 gap, twice the test's 1e-2. The gap is all in the step at t=1, where diffusers forms
# beta_t = 1 - abar_1 / abar_0 in float32 (relative error ~5e-4): diffusers' float64 twin (the same
# float32 alphas_cumprod, tables in float64, the same float32 noise) gives 387.9485237, which fastgen's
# float64-built coefficients match to 1.4e-7 elementwise while diffusers' float32 result is 5.4e-5 off.
# The hard-coded number records diffusers' float32 rounding, not the DDPM math; the tolerance is kept.
DDPM_WITH_NOISE_XFAIL = ("fastgen 387.96765 vs diffusers 0.42.1 387.94659 (expected 387.9466, tol 1e-2): "
                         "diffusers' float32 beta_t cancellation at t=1; fastgen matches the float64 result")


# (test id, class, config overrides on the base config, loop, loop kwargs,
#  expected sum or None, sum tol, expected mean, mean tol) -- numbers copied from the diffusers test
def case(tid, cls, cfg, loop, kw, exp_sum, sum_tol, exp_mean, mean_tol):
    return pytest.param(cls, cfg, loop, kw, exp_sum, sum_tol, exp_mean, mean_tol, id=tid)


CASES = [
    # test_scheduler_euler.py
    case("Euler-no_noise", "EulerDiscreteScheduler", SIGMA_CFG, loop_sigma, {"steps": 10, "generator": True},
         10.0807, 1e-2, 0.0131, 1e-3),
    case("Euler-v_prediction", "EulerDiscreteScheduler", {**SIGMA_CFG, "prediction_type": "v_prediction"},
         loop_sigma, {"steps": 10, "generator": True}, 0.0002, 1e-2, 2.2676e-06, 1e-3),
    case("Euler-karras_sigmas", "EulerDiscreteScheduler", {**SIGMA_CFG, "use_karras_sigmas": True}, loop_sigma,
         {"steps": 10, "generator": True}, 124.52299499511719, 1e-2, 0.16213932633399963, 1e-3),
    # test_scheduler_dpm_multi.py at 9519ffcf (its config has final_sigmas_type="sigma_min"; full_loop
    # passes generator=torch.manual_seed(0); test_switch asserts the same 0.3301)
    case("DPMSolverMultistep-no_noise", "DPMSolverMultistepScheduler", DPM_CFG, loop_plain,
         {"steps": 10, "generator": True}, None, None, 0.3301, 1e-3),
    case("DPMSolverMultistep-with_noise", "DPMSolverMultistepScheduler", DPM_CFG, loop_plain,
         {"steps": 10, "t_start": 5}, 318.4111, 1e-2, 0.4146, 1e-3),
    case("DPMSolverMultistep-no_noise_thres", "DPMSolverMultistepScheduler",
         {**DPM_CFG, "thresholding": True, "dynamic_thresholding_ratio": 0.87, "sample_max_value": 0.5},
         loop_plain, {"steps": 10, "generator": True}, None, None, 1.1364, 1e-3),
    case("DPMSolverMultistep-v_prediction", "DPMSolverMultistepScheduler",
         {**DPM_CFG, "prediction_type": "v_prediction"}, loop_plain, {"steps": 10, "generator": True},
         None, None, 0.2251, 1e-3),
    case("DPMSolverMultistep-karras_and_v_prediction", "DPMSolverMultistepScheduler",
         {**DPM_CFG, "prediction_type": "v_prediction", "use_karras_sigmas": True}, loop_plain,
         {"steps": 10, "generator": True}, None, None, 0.2096, 1e-3),
    case("DPMSolverMultistep-lu_and_v_prediction", "DPMSolverMultistepScheduler",
         {**DPM_CFG, "prediction_type": "v_prediction", "use_lu_lambdas": True}, loop_plain,
         {"steps": 10, "generator": True}, None, None, 0.1554, 1e-3),
    # test_scheduler_unipc.py (test_switch asserts the same 0.2464)
    case("UniPC-no_noise", "UniPCMultistepScheduler", UNIPC_CFG, loop_plain, {"steps": 10}, None, None, 0.2464, 1e-3),
    case("UniPC-karras", "UniPCMultistepScheduler", {**UNIPC_CFG, "use_karras_sigmas": True}, loop_plain,
         {"steps": 10}, None, None, 0.2925, 1e-3),
    case("UniPC-v_prediction", "UniPCMultistepScheduler", {**UNIPC_CFG, "prediction_type": "v_prediction"},
         loop_plain, {"steps": 10}, None, None, 0.1014, 1e-3),
    case("UniPC-karras_and_v_prediction", "UniPCMultistepScheduler",
         {**UNIPC_CFG, "prediction_type": "v_prediction", "use_karras_sigmas": True}, loop_plain, {"steps": 10},
         None, None, 0.1966, 1e-3),
    case("UniPC-with_noise", "UniPCMultistepScheduler", UNIPC_CFG, loop_plain, {"steps": 10, "t_start": 8},
         315.5757, 1e-2, 0.4109, 1e-3),
    # test_scheduler_pndm.py
    case("PNDM-no_noise", "PNDMScheduler", PNDM_CFG, loop_pndm, {"steps": 10}, 198.1318, 1e-2, 0.2580, 1e-3),
    case("PNDM-v_prediction", "PNDMScheduler", {**PNDM_CFG, "prediction_type": "v_prediction"}, loop_pndm,
         {"steps": 10}, 67.3986, 1e-2, 0.0878, 1e-3),
    case("PNDM-set_alpha_to_one", "PNDMScheduler", {**PNDM_CFG, "set_alpha_to_one": True, "beta_start": 0.01},
         loop_pndm, {"steps": 10}, 230.0399, 1e-2, 0.2995, 1e-3),
    case("PNDM-no_set_alpha_to_one", "PNDMScheduler", {**PNDM_CFG, "set_alpha_to_one": False, "beta_start": 0.01},
         loop_pndm, {"steps": 10}, 186.9482, 1e-2, 0.2434, 1e-3),
    # test_scheduler_ddim.py (eta=0.0 passed positionally)
    case("DDIM-no_noise", "DDIMScheduler", DDIM_CFG, loop_plain, {"steps": 10, "step_args": (0.0,)},
         172.0067, 1e-2, 0.223967, 1e-3),
    case("DDIM-v_prediction", "DDIMScheduler", {**DDIM_CFG, "prediction_type": "v_prediction"}, loop_plain,
         {"steps": 10, "step_args": (0.0,)}, 52.5302, 1e-2, 0.0684, 1e-3),
    case("DDIM-set_alpha_to_one", "DDIMScheduler", {**DDIM_CFG, "set_alpha_to_one": True, "beta_start": 0.01},
         loop_plain, {"steps": 10, "step_args": (0.0,)}, 149.8295, 1e-2, 0.1951, 1e-3),
    case("DDIM-no_set_alpha_to_one", "DDIMScheduler", {**DDIM_CFG, "set_alpha_to_one": False, "beta_start": 0.01},
         loop_plain, {"steps": 10, "step_args": (0.0,)}, 149.0784, 1e-2, 0.1941, 1e-3),
    case("DDIM-with_noise", "DDIMScheduler", DDIM_CFG, loop_plain, {"steps": 10, "t_start": 8, "step_args": (0.0,)},
         354.5418, 1e-2, 0.4616, 1e-3),
    # test_scheduler_ddpm.py
    case("DDPM-no_noise", "DDPMScheduler", DDPM_CFG, loop_ddpm, {}, 258.9606, 1e-2, 0.3372, 1e-3),
    case("DDPM-v_prediction", "DDPMScheduler", {**DDPM_CFG, "prediction_type": "v_prediction"}, loop_ddpm, {},
         202.0296, 1e-2, 0.2631, 1e-3),
    pytest.param("DDPMScheduler", DDPM_CFG, loop_ddpm, {"t_start": 998}, 387.9466, 1e-2, 0.5051, 1e-3,
                 id="DDPM-with_noise", marks=pytest.mark.xfail(strict=True, reason=DDPM_WITH_NOISE_XFAIL)),
    # test_scheduler_euler_ancestral.py
    case("EulerAncestral-no_noise", "EulerAncestralDiscreteScheduler", SIGMA_CFG, loop_sigma,
         {"steps": 10, "generator": True}, 152.3192, 1e-2, 0.1983, 1e-3),
    case("EulerAncestral-v_prediction", "EulerAncestralDiscreteScheduler",
         {**SIGMA_CFG, "prediction_type": "v_prediction"}, loop_sigma, {"steps": 10, "generator": True},
         108.4439, 1e-2, 0.1412, 1e-3),
    case("EulerAncestral-with_noise", "EulerAncestralDiscreteScheduler", SIGMA_CFG, loop_sigma,
         {"steps": 10, "generator": True, "t_start": 8}, 56163.0508, 1e-2, 73.1290, 1e-3),
    # test_scheduler_heun.py (cpu branch)
    case("Heun-no_noise", "HeunDiscreteScheduler", SIGMA_CFG, loop_sigma, {"steps": 10}, 0.1233, 1e-2, 0.0002, 1e-3),
    case("Heun-v_prediction", "HeunDiscreteScheduler", {**SIGMA_CFG, "prediction_type": "v_prediction"}, loop_sigma,
         {"steps": 10}, 4.6934e-07, 1e-2, 6.1112e-10, 1e-3),
    case("Heun-karras_sigmas", "HeunDiscreteScheduler", {**SIGMA_CFG, "use_karras_sigmas": True}, loop_sigma,
         {"steps": 10}, 0.00015, 1e-2, 1.9869554535034695e-07, 1e-2),
    # test_scheduler_lms.py
    case("LMS-no_noise", "LMSDiscreteScheduler", SIGMA_CFG, loop_sigma, {"steps": 10}, 1006.388, 1e-2, 1.31, 1e-3),
    case("LMS-v_prediction", "LMSDiscreteScheduler", {**SIGMA_CFG, "prediction_type": "v_prediction"}, loop_sigma,
         {"steps": 10}, 0.0017, 1e-2, 2.2676e-06, 1e-3),
    case("LMS-karras_sigmas", "LMSDiscreteScheduler", {**SIGMA_CFG, "use_karras_sigmas": True}, loop_sigma,
         {"steps": 10}, 3812.9927, 1e-2, 4.9648, 1e-3),
    # test_scheduler_kdpm2_discrete.py (cpu branch)
    case("KDPM2-no_noise", "KDPM2DiscreteScheduler", SIGMA_CFG, loop_sigma, {"steps": 10}, 20.4125, 1e-2, 0.0266, 1e-3),
    case("KDPM2-v_prediction", "KDPM2DiscreteScheduler", {**SIGMA_CFG, "prediction_type": "v_prediction"},
         loop_sigma, {"steps": 10}, 4.6934e-07, 1e-2, 6.1112e-10, 1e-3),
    case("KDPM2-with_noise", "KDPM2DiscreteScheduler", SIGMA_CFG, loop_sigma, {"steps": 10, "t_start": 8},
         70408.4062, 1e-2, 91.6776, 1e-3),
    # test_scheduler_kdpm2_ancestral.py
    case("KDPM2Ancestral-no_noise", "KDPM2AncestralDiscreteScheduler", SIGMA_CFG, loop_sigma,
         {"steps": 10, "generator": True}, 13979.9433, 1e-2, 18.2030, 5e-3),
    case("KDPM2Ancestral-v_prediction", "KDPM2AncestralDiscreteScheduler",
         {**SIGMA_CFG, "prediction_type": "v_prediction"}, loop_sigma, {"steps": 10, "generator": True},
         331.8133, 1e-2, 0.4320, 1e-3),
    case("KDPM2Ancestral-with_noise", "KDPM2AncestralDiscreteScheduler", SIGMA_CFG, loop_sigma,
         {"steps": 10, "generator": True, "t_start": 8}, 93087.3437, 1e-2, 121.2074, 5e-3),
    # test_scheduler_dpm_single.py at 40ef851b (test_switch asserts the same 0.2791). Its config has no
    # final_sigmas_type, so 0.42.1's default "zero" applies and diffusers misses these numbers (they
    # are the "sigma_min" ones): no_noise, v_prediction, uneven_loop and with_noise skip at run time;
    # the karras cases are reproduced.
    case("DPMSolverSinglestep-no_noise", "DPMSolverSinglestepScheduler", DPM_SINGLE_CFG, loop_plain, {"steps": 10},
         None, None, 0.2791, 1e-3),
    case("DPMSolverSinglestep-v_prediction", "DPMSolverSinglestepScheduler",
         {**DPM_SINGLE_CFG, "prediction_type": "v_prediction"}, loop_plain, {"steps": 10}, None, None, 0.1453, 1e-3),
    case("DPMSolverSinglestep-uneven_loop", "DPMSolverSinglestepScheduler", DPM_SINGLE_CFG, loop_plain,
         {"steps": 50, "skip": 3}, None, None, 0.2574, 1e-3),
    case("DPMSolverSinglestep-karras", "DPMSolverSinglestepScheduler", {**DPM_SINGLE_CFG, "use_karras_sigmas": True},
         loop_plain, {"steps": 10}, None, None, 0.2248, 1e-3),
    case("DPMSolverSinglestep-karras_and_v_prediction", "DPMSolverSinglestepScheduler",
         {**DPM_SINGLE_CFG, "prediction_type": "v_prediction", "use_karras_sigmas": True}, loop_plain,
         {"steps": 10}, None, None, 0.0649, 1e-3),
    case("DPMSolverSinglestep-with_noise", "DPMSolverSinglestepScheduler", DPM_SINGLE_CFG, loop_plain,
         {"steps": 10, "t_start": 5}, 269.2187, 1e-2, 0.3505, 1e-3),
    # test_scheduler_lcm.py at af8a47dd (generator passed positionally; an older version had 280.5618 for
    # the multistep sum, which 0.42.1 does not reproduce)
    case("LCM-onestep", "LCMScheduler", LCM_CFG, loop_plain, {"steps": 1, "step_args": ("generator",)},
         18.7097, 1e-3, 0.0244, 1e-3),
    case("LCM-multistep", "LCMScheduler", LCM_CFG, loop_plain, {"steps": 10, "step_args": ("generator",)},
         197.7616, 1e-3, 0.2575, 1e-3),
    # test_scheduler_edm_euler.py
    case("EDMEuler-no_noise", "EDMEulerScheduler", EDM_EULER_CFG, loop_edm_euler, {"steps": 10},
         34.1855, 1e-3, 0.044, 1e-3),
    # test_scheduler_edm_dpmsolver_multistep.py
    case("EDMDPMSolverMultistep-no_noise", "EDMDPMSolverMultistepScheduler", EDM_DPM_CFG, loop_plain, {"steps": 10},
         None, None, 0.0001, 1e-3),
    case("EDMDPMSolverMultistep-with_noise", "EDMDPMSolverMultistepScheduler", EDM_DPM_CFG, loop_plain,
         {"steps": 10, "t_start": 5}, 8.1661, 1e-2, 0.0106, 1e-3),
    case("EDMDPMSolverMultistep-no_noise_thres", "EDMDPMSolverMultistepScheduler",
         {**EDM_DPM_CFG, "thresholding": True, "dynamic_thresholding_ratio": 0.87, "sample_max_value": 0.5},
         loop_plain, {"steps": 10}, None, None, 0.0080, 1e-3),
    case("EDMDPMSolverMultistep-v_prediction", "EDMDPMSolverMultistepScheduler",
         {**EDM_DPM_CFG, "prediction_type": "v_prediction"}, loop_plain, {"steps": 10}, None, None, 0.0092, 1e-3),
]


def _misses(sample, exp_sum, sum_tol, exp_mean, mean_tol):
    """The diffusers test's asserts, as a list of what fails."""
    got_sum = torch.sum(torch.abs(sample)).item()
    got_mean = torch.mean(torch.abs(sample)).item()
    out = []
    if exp_sum is not None and not abs(got_sum - exp_sum) < sum_tol:
        out.append(f"result_sum {got_sum!r} vs expected {exp_sum} (tol {sum_tol})")
    if not abs(got_mean - exp_mean) < mean_tol:
        out.append(f"result_mean {got_mean!r} vs expected {exp_mean} (tol {mean_tol})")
    return out


@pytest.mark.parametrize("name, config, loop, loop_kw, exp_sum, sum_tol, exp_mean, mean_tol", CASES)
def test_full_loop_expectation(name, config, loop, loop_kw, exp_sum, sum_tol, exp_mean, mean_tol):
    theirs = loop(getattr(diffusers, name)(**config), **loop_kw)
    missed = _misses(theirs, exp_sum, sum_tol, exp_mean, mean_tol)
    if missed:
        pytest.skip(f"diffusers {diffusers.__version__} itself misses the hub test's number: " + "; ".join(missed))
    ours = loop(getattr(fd, name)(**config), **loop_kw)
    missed = _misses(ours, exp_sum, sum_tol, exp_mean, mean_tol)
    assert not missed, (f"fastgen {name} misses the number diffusers {diffusers.__version__} reproduces: "
                        + "; ".join(missed) + f" (diffusers: sum {torch.sum(theirs.abs()).item()!r}, "
                        f"mean {torch.mean(theirs.abs()).item()!r})")


def test_covers_every_scheduler_with_expectations():
    """Every fastgen scheduler whose diffusers test hard-codes a full-loop number is covered here;
    FlowMatchEulerDiscreteScheduler's test (test_scheduler_flow_match_euler_discrete.py) has none."""
    covered = {p.values[0] for p in CASES}
    assert covered == set(fd.SCHEDULERS) - {"FlowMatchEulerDiscreteScheduler"}
