"""PNDM, LCM, EDMEuler, EDMDPMSolverMultistep and FlowMatchEulerDiscrete against diffusers 0.42:
whole loops step by step on diffusers' trajectory with the same generator stream, every output
compared with diffusers' float64 twin (diffusers' own float32 error as slack), the schedules bit
for bit, the noising functions, begin indices, errors, and one torch.compile(fullgraph=True) step
each (a graph break there would be a host read inside step)."""
import numpy as np
import pytest
import torch

from fastgen.diffusion.scheduling_edm import EDMDPMSolverMultistepScheduler, EDMEulerScheduler
from fastgen.diffusion.scheduling_flow_match import FlowMatchEulerDiscreteScheduler
from fastgen.diffusion.scheduling_lcm import LCMScheduler
from fastgen.diffusion.scheduling_pndm import PNDMScheduler
from helpers import assert_close
from scheduler_helpers import close, exact_twin, fake_model, float32_noise_in

diffusers = pytest.importorskip("diffusers")

SHAPE = (2, 3, 4, 4)
OURS = {c.__name__: c for c in (PNDMScheduler, LCMScheduler, EDMEulerScheduler, EDMDPMSolverMultistepScheduler,
                                FlowMatchEulerDiscreteScheduler)}
SD15_PNDM = {"skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1, "beta_schedule": "scaled_linear",
             "beta_start": 0.00085, "beta_end": 0.012}


@pytest.fixture(autouse=True)
def _float32_noise_in_diffusers(monkeypatch):
    from diffusers.schedulers import (scheduling_edm_dpmsolver_multistep, scheduling_edm_euler,
                                      scheduling_flow_match_euler_discrete, scheduling_lcm)

    float32_noise_in(monkeypatch, scheduling_edm_dpmsolver_multistep, scheduling_edm_euler,
                     scheduling_flow_match_euler_discrete, scheduling_lcm)


def close_to_exact(ours, theirs, exact, name):
    """fastgen's float32 result is at least about as close to the float64 result as diffusers'
    float32 result is, and within float32 rounding of it. (Where diffusers' float32 result is NaN
    and the float64 one is not, e.g. EDM's third-order step from sigma_min to sigma_min, whose h
    is 0 in float32, fastgen must match the float64 result.)"""
    slack = 2 * float((theirs.double() - exact).abs().nan_to_num(0.0).max())
    assert_close(ours, exact, atol=1e-5 * float(exact.abs().max()) + slack + 1e-7, rtol=1e-5, name=name)


def run_parity(ours, theirs, set_kwargs=None, step_kwargs=None, fields=("prev_sample",), scale=1.0, seed=3,
               timesteps_equal=True):
    """Set both up with ``set_kwargs``, then step both (and diffusers' float64 twin) along diffusers'
    trajectory: scale_model_input bit for bit where there is one, every ``field`` of every step
    against the twin, and the generators in lockstep at the end."""
    set_kwargs, step_kwargs = set_kwargs or {}, step_kwargs or {}
    theirs.set_timesteps(**set_kwargs)
    ours.set_timesteps(**set_kwargs)
    if timesteps_equal:
        assert torch.equal(ours.timesteps, theirs.timesteps), (ours.timesteps, theirs.timesteps)
    if getattr(theirs, "sigmas", None) is not None:
        assert torch.equal(ours.sigmas, theirs.sigmas), (ours.sigmas, theirs.sigmas)
    exact = exact_twin(theirs)
    x = scale * torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    gens = [torch.Generator().manual_seed(seed) for _ in range(3)]
    kw = [dict(step_kwargs, generator=g) for g in gens] if "generator" in _step_params(theirs) else [step_kwargs] * 3
    for i, t in enumerate(theirs.timesteps):
        x_in = x
        if type(theirs).__name__.startswith("EDM"):
            x_in = theirs.scale_model_input(x, t)
            exact.scale_model_input(x.double(), t)
            assert torch.equal(ours.scale_model_input(x, t), x_in), f"scale_model_input at step {i}"
        m = fake_model(x_in, t)
        a = theirs.step(m, t, x, **kw[0])
        e = exact.step(m.double(), t, x.double(), **kw[1])
        b = ours.step(m.clone(), t, x.clone(), **kw[2])
        for field in fields:
            close_to_exact(b[field], a[field], e[field], f"{field} at step {i} (t={float(t)})")
        x = a.prev_sample
    assert torch.equal(gens[0].get_state(), gens[2].get_state()), "generator streams diverged"
    return x


def _step_params(scheduler):
    import inspect
    return inspect.signature(scheduler.step).parameters


def cfg_id(c):
    return ",".join(f"{k}={v}" for k, v in c.items())[:70] or "default"


# -- PNDM --------------------------------------------------------------------------------------

PNDM_CONFIGS = [
    SD15_PNDM,
    {},
    {"prediction_type": "v_prediction"},
    {"prediction_type": "v_prediction", "skip_prk_steps": True, "timestep_spacing": "trailing"},
    {"skip_prk_steps": True, "set_alpha_to_one": True, "beta_schedule": "squaredcos_cap_v2"},
    {"timestep_spacing": "linspace", "set_alpha_to_one": True},
    {"trained_betas": torch.linspace(1e-4, 0.03, 1000).tolist(), "skip_prk_steps": True,
     "timestep_spacing": "linspace"},
]


@pytest.mark.parametrize("config", PNDM_CONFIGS, ids=cfg_id)
@pytest.mark.parametrize("num_inference_steps", [1, 2, 4, 13])
def test_pndm_matches_diffusers(config, num_inference_steps):
    ours, theirs = PNDMScheduler(**config), diffusers.PNDMScheduler(**config)
    if not config.get("skip_prk_steps") and num_inference_steps < 4:
        with pytest.raises(ValueError, match="num_inference_steps must be >= 4 with skip_prk_steps=False"):
            ours.set_timesteps(num_inference_steps)
        return
    run_parity(ours, theirs, {"num_inference_steps": num_inference_steps})
    assert ours.counter == theirs.counter == len(theirs.timesteps)
    assert len(ours.ets) == len(theirs.ets) and all(a is not None for a in ours.ets)
    assert (ours.cur_sample is None) == (theirs.cur_sample is None)
    assert np.array_equal(ours.prk_timesteps, theirs.prk_timesteps)
    assert np.array_equal(ours.plms_timesteps, theirs.plms_timesteps)


def test_pndm_counter_state_and_img2img_start():
    """The first PLMS pair (same timestep twice, cur_sample kept, then dropped), and a loop that
    starts mid-schedule with counter 0 (img2img: diffusers reads abar from the timestep argument)."""
    ours, theirs = PNDMScheduler(**SD15_PNDM), diffusers.PNDMScheduler(**SD15_PNDM)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    assert int(ours.timesteps[1]) == int(ours.timesteps[2])
    x = torch.randn(SHAPE)
    for k, t in enumerate(theirs.timesteps[:3]):
        m = fake_model(x, t)
        a = theirs.step(m, t, x).prev_sample
        close(ours.step(m, t, x).prev_sample, a, f"call {k}")
        if k == 0:
            assert ours.cur_sample is x and ours.ets[0] is m  # held by reference, as diffusers holds them
        if k == 1:
            assert ours.cur_sample is None and len(ours.ets) == 1
        x = a
    ours.set_timesteps(20)
    theirs.set_timesteps(20)
    x = torch.randn(SHAPE)
    for t in theirs.timesteps[9:14]:
        m = fake_model(x, t)
        a = theirs.step(m, t, x).prev_sample
        close(ours.step(m, t, x).prev_sample, a, f"img2img t={int(t)}")
        x = a


def test_pndm_device_timestep_path(monkeypatch):
    """A timestep the host does not know (an accelerator tensor that is not a view of timesteps)
    indexes the table with one device add; emulated on CPU by hiding its value."""
    ours, plain = PNDMScheduler(**SD15_PNDM), PNDMScheduler(**SD15_PNDM)
    ours.set_timesteps(6)
    plain.set_timesteps(6)
    monkeypatch.setattr(ours, "_host_timestep", lambda t: None)
    x = torch.randn(SHAPE)
    for t in plain.timesteps:
        m = fake_model(x, t)
        a = plain.step(m, t, x).prev_sample
        assert torch.equal(ours.step(m, t.clone(), x).prev_sample, a)
        x = a


def test_pndm_from_config_add_noise_and_errors():
    theirs = diffusers.PNDMScheduler(**SD15_PNDM)
    ours = PNDMScheduler.from_config(theirs.config)
    assert ours.config.skip_prk_steps and ours.config.steps_offset == 1
    assert torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)
    x0, noise, t = torch.randn(SHAPE), torch.randn(SHAPE), torch.tensor([3, 870])
    close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), "add_noise")
    assert ours.scale_model_input(x0, 5) is x0 and ours.init_noise_sigma == 1.0 and ours.timesteps is None
    with pytest.raises(ValueError, match="prediction_type must be one of .*v_prediction"):
        PNDMScheduler(prediction_type="sample")
    with pytest.raises(ValueError, match="beta_schedule must be one of"):
        PNDMScheduler(beta_schedule="sigmoid")
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="set_timesteps"):
        ours.step(x, 1, x)
    ours.set_timesteps(2)
    with pytest.raises(ValueError, match=r"timestep must lie in \[0, 999\]"):
        ours.step(x, 1000, x)
    with pytest.raises(TypeError, match="timestep must be an int"):
        ours.step(x, torch.tensor(1.5), x)
    for t in ours.timesteps:
        ours.step(x, t, x)
    with pytest.raises(ValueError, match="call set_timesteps again"):
        ours.step(x, 1, x)
    prk = PNDMScheduler()
    prk.set_timesteps(5)
    with pytest.raises(ValueError, match="only run after the 12 Runge-Kutta calls"):
        prk.step_plms(x, int(prk.timesteps[0]), x)
    ours.set_timesteps(50)
    with pytest.raises(ValueError, match="past num_train_timesteps"):  # the pair's second call at t=999
        ours.step(x, int(ours.timesteps[0]), x)
        ours.step(x, 999, x)


def test_pndm_in_a_diffusers_pipeline():
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2).eval()
    pipe = diffusers.PNDMPipeline(unet=unet, scheduler=diffusers.PNDMScheduler(num_train_timesteps=100))
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0),
                    output_type="np").images
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config)
    got = pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert_close(torch.from_numpy(got), torch.from_numpy(expected), atol=2e-5, rtol=1e-5, name="images")


# -- FlowMatchEulerDiscrete ----------------------------------------------------------------------

FLOW_CASES = [
    ({}, {}),
    ({"shift": 3.0}, {}),  # SD3
    ({"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15}, {"mu": 0.8}),  # Flux
    ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, {"mu": 1.3}),
    ({"shift": 3.0, "shift_terminal": 0.02}, {}),
    ({"use_karras_sigmas": True, "shift": 2.0}, {}),
    ({"use_exponential_sigmas": True}, {}),
    ({"use_beta_sigmas": True, "shift": 3.0}, {}),
    ({"invert_sigmas": True, "shift": 2.0}, {}),
    ({"stochastic_sampling": True, "shift": 3.0}, {}),
    ({"stochastic_sampling": True, "use_dynamic_shifting": True}, {"mu": 0.5}),
]


@pytest.mark.parametrize("config,set_kwargs", FLOW_CASES, ids=lambda c: cfg_id(c))
@pytest.mark.parametrize("num_inference_steps", [2, 7])
def test_flow_match_matches_diffusers(config, set_kwargs, num_inference_steps):
    ours, theirs = FlowMatchEulerDiscreteScheduler(**config), diffusers.FlowMatchEulerDiscreteScheduler(**config)
    assert torch.equal(ours.sigmas, theirs.sigmas) and torch.equal(ours.timesteps, theirs.timesteps)
    assert (ours.sigma_min, ours.sigma_max, ours.shift) == (theirs.sigma_min, theirs.sigma_max, theirs.shift)
    run_parity(ours, theirs, dict(set_kwargs, num_inference_steps=num_inference_steps))
    assert ours.step_index == theirs.step_index == num_inference_steps


@pytest.mark.parametrize("set_kwargs", [
    {"sigmas": [1.0, 0.8, 0.45, 0.1]},
    {"timesteps": [1000.0, 700.0, 300.0]},
    {"sigmas": [0.9, 0.6, 0.2], "timesteps": [900.0, 600.0, 200.0]},
    {"num_inference_steps": 3, "sigmas": [0.9, 0.6, 0.2]},
], ids=cfg_id)
def test_flow_match_custom_sigmas_and_timesteps(set_kwargs):
    config = {"shift": 3.0}
    run_parity(FlowMatchEulerDiscreteScheduler(**config), diffusers.FlowMatchEulerDiscreteScheduler(**config),
               set_kwargs)
    dyn = {"use_dynamic_shifting": True}
    run_parity(FlowMatchEulerDiscreteScheduler(**dyn), diffusers.FlowMatchEulerDiscreteScheduler(**dyn),
               dict(set_kwargs, mu=1.1))


@pytest.mark.parametrize("stochastic", [False, True])
def test_flow_match_per_token_timesteps(stochastic):
    """Per-token sigmas (B, L) on (B, L, C) samples: diffusers' rule, not fused, same numbers."""
    config = {"stochastic_sampling": stochastic, "shift": 3.0}
    ours, theirs = FlowMatchEulerDiscreteScheduler(**config), diffusers.FlowMatchEulerDiscreteScheduler(**config)
    ours.set_timesteps(6)
    theirs.set_timesteps(6)
    x = torch.randn(2, 5, 3)
    ga, gb = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    for i, t in enumerate(theirs.timesteps[:4]):
        per_token = t * torch.rand(2, 5, generator=torch.Generator().manual_seed(i)).clamp_min(0.05)
        m = fake_model(x, t)
        a = theirs.step(m, t, x, per_token_timesteps=per_token, generator=ga).prev_sample
        b = ours.step(m, t, x, per_token_timesteps=per_token, generator=gb).prev_sample
        assert b.dtype == a.dtype
        close(b, a, f"per-token step {i}")
        x = a


def test_flow_match_scale_noise_begin_index_shift_and_dtypes():
    ours, theirs = FlowMatchEulerDiscreteScheduler(shift=3.0), diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    ours.set_timesteps(8)
    theirs.set_timesteps(8)
    x, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = theirs.timesteps[[2, 5]]
    assert torch.equal(ours.scale_noise(x, t, noise), theirs.scale_noise(x, t, noise))
    t1 = theirs.timesteps[3:4]
    assert torch.equal(ours.scale_noise(x, t1, noise), theirs.scale_noise(x, t1, noise))
    with pytest.raises(ValueError, match="not one of the scheduler's timesteps"):
        ours.scale_noise(x, torch.tensor([123.4]), noise)
    ours.set_begin_index(3)
    theirs.set_begin_index(3)
    assert torch.equal(ours.scale_noise(x, t, noise), theirs.scale_noise(x, t, noise))  # begin index wins
    # img2img: start at the begin index, whatever the first timestep says
    for t in theirs.timesteps[3:6]:
        m = fake_model(x, t)
        a = theirs.step(m, t, x).prev_sample
        close(ours.step(m, t, x).prev_sample, a, f"t={float(t)}")
        x = a
    assert ours.step_index == theirs.step_index == 6
    assert not hasattr(ours, "add_noise")  # as diffusers: flow matching noises with scale_noise
    # set_shift changes the next schedule
    ours.set_shift(1.5)
    theirs.set_shift(1.5)
    ours.set_timesteps(5)
    theirs.set_timesteps(5)
    assert torch.equal(ours.sigmas, theirs.sigmas) and ours.shift == 1.5
    # bf16 model output: diffusers computes in float32 and returns the model output's dtype
    xs = torch.randn(SHAPE)
    m = fake_model(xs, 0).to(torch.bfloat16)
    t = theirs.timesteps[0]
    a = theirs.step(m, t, xs).prev_sample
    b = ours.step(m, t, xs).prev_sample
    assert b.dtype == a.dtype == torch.bfloat16
    assert_close(b, a, atol=1e-2, rtol=1e-2, name="bf16")


def test_flow_match_errors():
    ours = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="`mu` must be passed"):
        ours.set_timesteps(4)
    with pytest.raises(ValueError, match="only one of|Only one of"):
        FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True, use_beta_sigmas=True)
    with pytest.raises(ValueError, match="time_shift_type"):
        FlowMatchEulerDiscreteScheduler(time_shift_type="log")
    ours = FlowMatchEulerDiscreteScheduler()
    with pytest.raises(ValueError, match="same length"):
        ours.set_timesteps(3, sigmas=[1.0, 0.5])
    with pytest.raises(ValueError, match="pass num_inference_steps, sigmas or timesteps"):
        ours.set_timesteps()
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="set_timesteps"):
        ours.step(x, ours.timesteps[0], x)
    ours.set_timesteps(2)
    with pytest.raises(ValueError, match="integer indices"):
        ours.step(x, 0, x)
    with pytest.raises(ValueError, match="not one of the scheduler's timesteps"):
        ours.step(x, 123.25, x)
    for t in ours.timesteps:
        ours.step(x, t, x)
    with pytest.raises(ValueError, match="call set_timesteps again"):
        ours.step(x, ours.timesteps[0], x)


# -- LCM -----------------------------------------------------------------------------------------

LCM_CASES = [
    ({}, {}),
    ({"prediction_type": "v_prediction", "timestep_scaling": 1.0}, {}),
    ({"prediction_type": "sample", "clip_sample": True, "clip_sample_range": 0.5}, {}),
    ({"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9}, {}),
    ({"set_alpha_to_one": False, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}, {}),
    ({"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}, {}),
    ({"original_inference_steps": 20, "clip_sample": True}, {}),
    ({}, {"strength": 0.5}),
    ({}, {"original_inference_steps": 100}),
]


@pytest.mark.parametrize("config,set_kwargs", LCM_CASES, ids=lambda c: cfg_id(c))
@pytest.mark.parametrize("num_inference_steps", [1, 4, 8])
def test_lcm_matches_diffusers(config, set_kwargs, num_inference_steps):
    run_parity(LCMScheduler(**config), diffusers.LCMScheduler(**config),
               dict(set_kwargs, num_inference_steps=num_inference_steps), fields=("prev_sample", "denoised"),
               scale=2.0)


@pytest.mark.parametrize("set_kwargs", [
    {"timesteps": [999, 759, 499, 259]},
    {"timesteps": [999, 759, 499, 259, 100], "strength": 0.6},  # the last-step rule then never applies
    {"timesteps": [899, 500, 3]},
], ids=cfg_id)
def test_lcm_custom_timesteps(set_kwargs):
    ours, theirs = LCMScheduler(), diffusers.LCMScheduler()
    run_parity(ours, theirs, set_kwargs, fields=("prev_sample", "denoised"))
    assert ours.custom_timesteps and ours.num_inference_steps == theirs.num_inference_steps


def test_lcm_begin_index_other_timesteps_outputs_and_noising():
    """set_begin_index, a step named by a timestep off the schedule (diffusers reads abar_t and the
    scalings from the argument), the output tuple, add_noise / get_velocity, previous_timestep."""
    ours, theirs = LCMScheduler(), diffusers.LCMScheduler()
    ours.set_timesteps(4)
    theirs.set_timesteps(4)
    ours.set_begin_index(1)
    theirs.set_begin_index(1)
    x, ga, gb = torch.randn(SHAPE), torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    for t in [int(theirs.timesteps[1]), 333, torch.tensor(120)]:
        m = fake_model(x, t)
        a = theirs.step(m, t, x, generator=ga)
        b = ours.step(m, t, x, generator=gb, return_dict=False)
        assert isinstance(b, tuple) and len(b) == 2
        close(b[0], a.prev_sample, f"prev_sample t={int(t)}")
        close(b[1], a.denoised, f"denoised t={int(t)}")
        x = a.prev_sample
    assert ours.step_index == theirs.step_index == 4
    x0, noise, t = torch.randn(SHAPE), torch.randn(SHAPE), torch.tensor([3, 870])
    close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), "add_noise")
    close(ours.get_velocity(x0, noise, t), theirs.get_velocity(x0, noise, t), "get_velocity")
    for t in theirs.timesteps:
        assert int(ours.previous_timestep(t)) == int(theirs.previous_timestep(t))
    out = ours.step  # the output object indexes like diffusers'
    ours.set_timesteps(2)
    o = out(fake_model(x, 999), ours.timesteps[0], x, generator=torch.Generator().manual_seed(0))
    assert o.keys() == ("prev_sample", "denoised") and o[1] is o.denoised and o["prev_sample"] is o.prev_sample


def test_lcm_errors():
    ours = LCMScheduler()
    with pytest.raises(ValueError, match="exactly one of"):
        ours.set_timesteps()
    with pytest.raises(ValueError, match="Can only pass one of"):
        ours.set_timesteps(4, timesteps=[999, 500])
    with pytest.raises(ValueError, match="cannot be larger than `original_inference_steps`"):
        ours.set_timesteps(60, strength=2.0)
    with pytest.raises(ValueError, match="descending"):
        ours.set_timesteps(timesteps=[500, 999])
    with pytest.raises(ValueError, match="must start before"):
        ours.set_timesteps(timesteps=[1000, 500])
    with pytest.raises(ValueError, match="smaller than `num_inference_steps`"):
        ours.set_timesteps(30, strength=0.5)
    with pytest.raises(ValueError, match="prediction_type"):
        LCMScheduler(prediction_type="eps")
    with pytest.raises(ValueError, match="beta_schedule"):
        LCMScheduler(beta_schedule="sigmoid")
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="set_timesteps"):
        ours.step(x, 999, x)
    ours.set_timesteps(2)
    with pytest.raises(ValueError, match="not one of the scheduler's timesteps"):
        ours.step(x, 998, x)
    for t in ours.timesteps:
        ours.step(x, t, x)
    with pytest.raises(ValueError, match="call set_timesteps again"):
        ours.step(x, ours.timesteps[0], x)


# -- EDMEuler ------------------------------------------------------------------------------------

EDM_EULER_CASES = [
    ({}, {}),
    ({"prediction_type": "v_prediction", "sigma_schedule": "exponential"}, {}),
    ({"final_sigmas_type": "sigma_min", "rho": 5.0, "sigma_data": 1.0}, {}),
    ({}, {"s_churn": 0.8}),
    ({"sigma_schedule": "exponential"}, {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 10.0, "s_noise": 1.003}),
]


@pytest.mark.parametrize("config,step_kwargs", EDM_EULER_CASES, ids=lambda c: cfg_id(c))
@pytest.mark.parametrize("num_inference_steps", [1, 4, 12])
def test_edm_euler_matches_diffusers(config, step_kwargs, num_inference_steps):
    ours, theirs = EDMEulerScheduler(**config), diffusers.EDMEulerScheduler(**config)
    assert torch.equal(ours.sigmas, theirs.sigmas) and torch.equal(ours.timesteps, theirs.timesteps)
    assert ours.init_noise_sigma == theirs.init_noise_sigma
    run_parity(ours, theirs, {"num_inference_steps": num_inference_steps}, step_kwargs,
               fields=("prev_sample", "pred_original_sample"), scale=80.0)


def test_edm_euler_ramp_sigmas_given_x0_begin_index_and_add_noise():
    ours, theirs = EDMEulerScheduler(), diffusers.EDMEulerScheduler()
    ramp = torch.tensor([0.0, 0.3, 0.55, 0.9])  # diffusers treats set_timesteps(sigmas=) as the ramp
    run_parity(ours, theirs, {"sigmas": ramp}, fields=("prev_sample", "pred_original_sample"), scale=80.0)
    ours.set_timesteps(6)
    theirs.set_timesteps(6)
    x = 80 * torch.randn(SHAPE)
    x0, noise, t = torch.randn(SHAPE), torch.randn(SHAPE), theirs.timesteps[[1, 4]]
    close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), "add_noise")
    ours.set_begin_index(2)
    theirs.set_begin_index(2)
    for t in theirs.timesteps[2:5]:
        x_in = theirs.scale_model_input(x, t)
        assert torch.equal(ours.scale_model_input(x, t), x_in)
        m = fake_model(x_in, t)
        given = 0.9 * torch.tanh(x / 80)  # a caller-supplied x0 (guidance rescaling does this)
        a = theirs.step(m, t, x, pred_original_sample=given, s_churn=1.0, generator=torch.Generator().manual_seed(0))
        b = ours.step(m, t, x, pred_original_sample=given, s_churn=1.0, generator=torch.Generator().manual_seed(0))
        close(b.prev_sample, a.prev_sample, f"given x0, t={float(t)}")
        assert b.pred_original_sample is given
        x = a.prev_sample
    close(ours.add_noise(x0, noise, t.reshape(1)), theirs.add_noise(x0, noise, t.reshape(1)), "add_noise at begin")


def test_edm_euler_errors():
    with pytest.raises(ValueError, match="sigma_schedule must be one of"):
        EDMEulerScheduler(sigma_schedule="linear")
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        EDMEulerScheduler(prediction_type="sample")
    with pytest.raises(ValueError, match="final_sigmas_type"):
        EDMEulerScheduler(final_sigmas_type="one")
    ours = EDMEulerScheduler()
    x = torch.randn(SHAPE)
    with pytest.raises(ValueError, match="set_timesteps"):
        ours.step(x, ours.timesteps[0], x)
    ours.set_timesteps(2)
    with pytest.raises(ValueError, match="integer indices"):
        ours.step(x, 1, x)
    for t in ours.timesteps:
        ours.step(x, t, ours.scale_model_input(x, t))
    with pytest.raises(ValueError, match="call set_timesteps again"):
        ours.step(x, ours.timesteps[0], x)


# -- EDMDPMSolverMultistep ----------------------------------------------------------------------

EDM_DPM_CONFIGS = [
    {},
    {"solver_order": 1},
    {"solver_order": 3},
    {"solver_order": 3, "final_sigmas_type": "sigma_min", "lower_order_final": False},
    {"solver_type": "heun", "prediction_type": "v_prediction"},
    {"algorithm_type": "sde-dpmsolver++"},
    {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun", "sigma_schedule": "exponential"},
    {"thresholding": True, "sample_max_value": 3.0, "dynamic_thresholding_ratio": 0.9},
    {"euler_at_final": True, "final_sigmas_type": "sigma_min", "rho": 3.0},
    {"algorithm_type": "deis", "solver_type": "bh2", "final_sigmas_type": "sigma_min"},
]


@pytest.mark.parametrize("config", EDM_DPM_CONFIGS, ids=cfg_id)
@pytest.mark.parametrize("num_inference_steps", [1, 2, 5, 16])
def test_edm_dpm_matches_diffusers(config, num_inference_steps):
    ours, theirs = EDMDPMSolverMultistepScheduler(**config), diffusers.EDMDPMSolverMultistepScheduler(**config)
    assert torch.equal(ours.sigmas, theirs.sigmas) and torch.equal(ours.timesteps, theirs.timesteps)
    assert dict(ours.config)["algorithm_type"] == theirs.config.algorithm_type
    run_parity(ours, theirs, {"num_inference_steps": num_inference_steps}, scale=80.0)
    assert all(x.dtype == torch.float32 for x in ours.model_outputs if x is not None)
    assert ours.lower_order_nums == theirs.lower_order_nums


def test_edm_dpm_begin_index_add_noise_and_errors():
    ours, theirs = EDMDPMSolverMultistepScheduler(), diffusers.EDMDPMSolverMultistepScheduler()
    ours.set_timesteps(8)
    theirs.set_timesteps(8)
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = theirs.timesteps[[0, 6]]
    close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), "add_noise")
    off = torch.tensor([-9.0, 0.1])  # diffusers maps a timestep off the schedule to the last step
    close(ours.add_noise(x0, noise, off), theirs.add_noise(x0, noise, off), "add_noise off schedule")
    x = 80 * torch.randn(SHAPE)
    ours.set_begin_index(3)
    theirs.set_begin_index(3)
    for t in theirs.timesteps[3:6]:
        x_in = theirs.scale_model_input(x, t)
        assert torch.equal(ours.scale_model_input(x, t), x_in)
        m = fake_model(x_in, t)
        a = theirs.step(m, t, x).prev_sample
        close(ours.step(m, t, x).prev_sample, a, f"t={float(t)}")
        x = a
    with pytest.raises(NotImplementedError, match="dpmsolver"):
        EDMDPMSolverMultistepScheduler(algorithm_type="dpmsolver")
    with pytest.raises(ValueError, match="`final_sigmas_type` zero is not supported"):
        EDMDPMSolverMultistepScheduler(algorithm_type="deis")
    with pytest.raises(ValueError, match="solver_order must be 1, 2 or 3"):
        EDMDPMSolverMultistepScheduler(solver_order=4)
    sde3 = EDMDPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=3)
    sde3.set_timesteps(5)
    x = torch.randn(SHAPE)
    with pytest.raises(NotImplementedError, match="third-order step"):
        for t in sde3.timesteps:
            x = sde3.step(x, t, x).prev_sample
    assert sde3.step_index == 2
    with pytest.raises(ValueError, match="set_timesteps"):
        EDMDPMSolverMultistepScheduler().step(x, 0.5, x)


# -- all five --------------------------------------------------------------------------------------

COMPILE_SETUPS = {
    "PNDMScheduler": ({"skip_prk_steps": True}, 10),
    "LCMScheduler": ({}, 4),
    "EDMEulerScheduler": ({}, 4),
    "EDMDPMSolverMultistepScheduler": ({"algorithm_type": "sde-dpmsolver++"}, 4),
    "FlowMatchEulerDiscreteScheduler": ({"stochastic_sampling": True}, 4),
}


@pytest.mark.parametrize("name", list(COMPILE_SETUPS))
def test_compiled_step_has_no_graph_break(name):
    """torch.compile(fullgraph=True) traces a whole step (scale_model_input too): any read of a tensor
    on the host inside it would be a graph break, hence an error here. Compared with eager."""
    config, n = COMPILE_SETUPS[name]
    scheds = [OURS[name](**config) for _ in range(2)]
    for s in scheds:
        s.set_timesteps(n)
        if hasattr(s, "set_begin_index"):
            s.set_begin_index(0)
    t = scheds[0].timesteps[0]
    t = int(t) if name in ("PNDMScheduler", "LCMScheduler") else float(t)
    x = torch.randn(1, 1, 2, 2)
    z = torch.randn(1, 1, 2, 2)

    def one_step(s, x, m):
        kwargs = {"generator": None} if name != "PNDMScheduler" else {}
        return s.step(m, t, s.scale_model_input(x, t), **kwargs).prev_sample

    for s in scheds:
        s.cpu_noise = "philox"  # the accelerators' in-kernel noise, traceable
        s.set_noise_seed(5)
    compiled = torch.compile(lambda x, m: one_step(scheds[0], x, m), fullgraph=True, backend="aot_eager")
    got = compiled(x, z)
    assert_close(got, one_step(scheds[1], x, z), name=f"{name} compiled step")


LOW_PRECISION = {
    "PNDMScheduler": (SD15_PNDM, {"num_inference_steps": 6}),
    "LCMScheduler": ({}, {"num_inference_steps": 4}),
    "EDMDPMSolverMultistepScheduler": ({"solver_order": 3}, {"num_inference_steps": 6}),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(LOW_PRECISION))
def test_low_precision_steps(name, dtype):
    """Half-precision samples and outputs: fastgen's error against diffusers' float64 twin stays within
    twice diffusers' own error in that dtype (it computes in float32 and keeps its states float32)."""
    config, set_kwargs = LOW_PRECISION[name]
    theirs, ours = getattr(diffusers, name)(**config), OURS[name](**config)
    theirs.set_timesteps(**set_kwargs)
    ours.set_timesteps(**set_kwargs)
    exact = exact_twin(theirs)
    x = torch.randn(SHAPE).to(dtype)
    gens = [torch.Generator().manual_seed(2) for _ in range(3)]
    kw = [{"generator": g} for g in gens] if "generator" in _step_params(theirs) else [{}] * 3
    for i, t in enumerate(theirs.timesteps):
        m = fake_model(x.float(), t).to(dtype)
        a = theirs.step(m, t, x, **kw[0]).prev_sample
        e = exact.step(m.double(), t, x.double(), **kw[1]).prev_sample
        b = ours.step(m, t, x, **kw[2]).prev_sample
        assert b.dtype == a.dtype == dtype
        err_theirs, err_ours = float((a.double() - e).abs().max()), float((b.double() - e).abs().max())
        assert err_ours <= 2 * err_theirs + 1e-3 * float(e.abs().max()), (i, err_ours, err_theirs)
        x = a


@pytest.mark.parametrize("name,config", [
    ("PNDMScheduler", SD15_PNDM),
    ("LCMScheduler", {"timestep_scaling": 5.0, "original_inference_steps": 40}),
    ("EDMEulerScheduler", {"sigma_schedule": "exponential", "sigma_data": 1.0}),
    ("EDMDPMSolverMultistepScheduler", {"algorithm_type": "deis", "final_sigmas_type": "sigma_min"}),
    ("FlowMatchEulerDiscreteScheduler", {"use_dynamic_shifting": True, "base_image_seq_len": 128, "shift": 3.0}),
])
def test_from_config_of_the_diffusers_scheduler(name, config, tmp_path):
    theirs = getattr(diffusers, name)(**config)
    ours = OURS[name].from_config(theirs.config)
    for key, value in theirs.config.items():
        if not key.startswith("_"):
            assert ours.config[key] == value, key
    ours.save_pretrained(tmp_path)
    again = getattr(diffusers, name).from_pretrained(tmp_path)
    assert {k: v for k, v in again.config.items() if not k.startswith("_")} == \
        {k: v for k, v in theirs.config.items() if not k.startswith("_")}


def test_edm_euler_churn_with_in_kernel_noise(monkeypatch):
    """The accelerators' noise source on CPU (Philox): a churn step draws z from the scheduler's
    stream, and pred_original_sample holds the same z (x0 is taken at the churned sample)."""
    from fastgen import _rng
    from diffusers.schedulers import scheduling_edm_euler

    ours, theirs = EDMEulerScheduler(), diffusers.EDMEulerScheduler()
    ours.cpu_noise = "philox"
    ours.set_noise_seed(11)
    ours.set_timesteps(5)
    theirs.set_timesteps(5)
    x = 80 * torch.randn(SHAPE)
    for k, t in enumerate(theirs.timesteps[:3]):
        z = _rng.philox_normal_ref(torch.tensor([11, k * x.numel()]), x.numel()).view(SHAPE)
        monkeypatch.setattr(scheduling_edm_euler, "randn_tensor", lambda *args, z=z, **kw: z)
        m = fake_model(theirs.scale_model_input(x, t), t)
        ours.scale_model_input(x, t)
        a = theirs.step(m, t, x, s_churn=2.0)
        b = ours.step(m, t, x, s_churn=2.0)
        close(b.prev_sample, a.prev_sample, f"prev_sample {k}")
        close(b.pred_original_sample, a.pred_original_sample, f"pred_original_sample {k}")
        assert int(ours.noise_state[1]) == (k + 1) * x.numel()
        x = a.prev_sample
