"""DPMSolverMultistep (complete), DPMSolverSinglestep and UniPCMultistep against diffusers 0.42 (the
reference): timesteps and sigmas bit for bit, every step's prev_sample over whole loops against
diffusers' float64 twin (with diffusers' own float32 error as slack), generator streams in
lockstep, add_noise, begin_index, custom timesteps / sigmas, a diffusers pipeline, torch.compile
(fullgraph: a host read in step would break the graph) and the errors."""
import copy
import logging
import warnings

import pytest
import torch

from fastgen.diffusion.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from fastgen.diffusion.scheduling_dpmsolver_singlestep import DPMSolverSinglestepScheduler
from fastgen.diffusion.scheduling_unipc_multistep import UniPCMultistepScheduler
from helpers import assert_close
from scheduler_helpers import close_to_exact, exact_twin, fake_model, float32_noise_in

diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (2, 3, 4, 4)
OURS = {"DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
        "DPMSolverSinglestepScheduler": DPMSolverSinglestepScheduler,
        "UniPCMultistepScheduler": UniPCMultistepScheduler}


@pytest.fixture(autouse=True)
def _quiet_and_float32_noise(monkeypatch):
    """diffusers' float64 twin must draw the float32 run's noise (singlestep draws in the model
    output's dtype): patch its randn_tensor to draw float32 and cast. Silence the deprecation
    warnings of the noise-prediction algorithm types and singlestep's lower_order_final notice."""
    from diffusers.schedulers import scheduling_dpmsolver_multistep, scheduling_dpmsolver_singlestep

    float32_noise_in(monkeypatch, scheduling_dpmsolver_multistep, scheduling_dpmsolver_singlestep)
    logging.getLogger("fastgen").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.getLogger("fastgen").setLevel(logging.NOTSET)


def pair(kind, config):
    return getattr(diffusers, kind)(**config), OURS[kind](**config)


def step_parity(kind, config, num_inference_steps, set_kwargs=None, model=fake_model, edit=None):
    """Both schedulers step by step on the same inputs (diffusers' trajectory); every prev_sample
    against diffusers' float64 twin. ``edit(i, x)`` changes the sample between steps (inpainting)."""
    theirs, ours = pair(kind, config)
    kwargs = set_kwargs or {}
    theirs.set_timesteps(num_inference_steps, **kwargs)
    ours.set_timesteps(num_inference_steps, **kwargs)
    exact = exact_twin(theirs)
    assert torch.equal(ours.timesteps, theirs.timesteps), (ours.timesteps, theirs.timesteps)
    assert ours.timesteps.dtype == theirs.timesteps.dtype == torch.int64
    assert torch.equal(ours.sigmas, theirs.sigmas), (ours.sigmas, theirs.sigmas)
    assert ours.num_inference_steps == theirs.num_inference_steps
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    gens = [torch.Generator().manual_seed(3) for _ in range(3)]
    noisy = kind != "UniPCMultistepScheduler"
    for i, t in enumerate(theirs.timesteps):
        if edit is not None:
            x = edit(i, x)
        m = model(x, t)
        extra = [{"generator": g} if noisy else {} for g in gens]
        a = theirs.step(m, t, x, **extra[0]).prev_sample
        e = exact.step(m.double(), t, x.double(), **extra[1]).prev_sample
        b = ours.step(m.clone(), t, x.clone(), **extra[2]).prev_sample
        if i == len(theirs.timesteps) - 1 and unipc_nan_final(theirs):
            # diffusers 0.42 returns NaN here (0 * inf); fastgen returns the limit: x0 of the
            # corrected sample (alpha_t = 1 at sigma_t = 0)
            assert a.isnan().all() and e.isnan().all()
            limits = []
            for s in (theirs, exact):
                x0 = s.model_outputs[-1]
                if not s.predict_x0:
                    sigma = s.sigmas[i]
                    x0 = (s.last_sample - sigma / (sigma**2 + 1) ** 0.5 * x0) * (sigma**2 + 1) ** 0.5
                limits.append(x0)
            close_to_exact(b, limits[0], limits[1], "the limit at sigma = 0")
            break
        close_to_exact(b, a, e, f"prev_sample at step {i} (t={int(t)})")
        x = a
    if noisy:
        assert torch.equal(gens[0].get_state(), gens[2].get_state()), "generator streams diverged"
    return ours


def unipc_nan_final(theirs) -> bool:
    """Where diffusers' UniPC ends in NaN: a last step to sigma = 0 with bh1 (B_h = -inf times a
    zero residual) or predict_x0=False (sigma_t * (e^h - 1) = 0 * inf)."""
    return (isinstance(theirs, diffusers.UniPCMultistepScheduler) and float(theirs.sigmas[-1]) == 0
            and (theirs.config.solver_type == "bh1" or not theirs.config.predict_x0))


def ids(config):
    return ",".join(f"{k}={v}" for k, v in config.items())[:80] or "default"


SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


# -- DPM++ 2M Karras: the Stable Diffusion sampler ---------------------------------------------

@pytest.mark.parametrize("schedule", [{}, SD], ids=["linear", "scaled_linear"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("num_inference_steps", [10, 20, 25])
def test_dpmpp_2m_karras(schedule, prediction_type, num_inference_steps):
    config = {**schedule, "prediction_type": prediction_type, "use_karras_sigmas": True}
    ours = step_parity("DPMSolverMultistepScheduler", config, num_inference_steps)
    assert all(s.dtype == torch.float32 for s in ours.model_outputs if s is not None)


DPM_MULTISTEP_CONFIGS = [
    {"solver_order": 3},
    {"solver_order": 3, "lower_order_final": False, "final_sigmas_type": "sigma_min"},
    {"solver_order": 3, "algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True, **SD},
    {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun", "use_karras_sigmas": True},
    {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
    {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_type": "heun", "solver_order": 3},
    {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "prediction_type": "sample"},
    {"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min", "solver_type": "heun"},
    {"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min", "prediction_type": "v_prediction"},
    {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
    {"thresholding": True, "prediction_type": "v_prediction", "solver_order": 3},
    {"thresholding": True, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min",
     "prediction_type": "v_prediction"},
    {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min", "lower_order_final": False},
    {"use_exponential_sigmas": True, "solver_order": 3},
    {"use_beta_sigmas": True, "prediction_type": "v_prediction"},
    {"use_lu_lambdas": True, **SD},
    {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0},
    {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "solver_order": 3, "solver_type": "heun"},
    {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction",
     "use_karras_sigmas": True},
    {"euler_at_final": True, "final_sigmas_type": "sigma_min", "timestep_spacing": "leading", "steps_offset": 1},
]


@pytest.mark.parametrize("config", DPM_MULTISTEP_CONFIGS, ids=ids)
@pytest.mark.parametrize("num_inference_steps", [1, 3, 8, 16])
def test_dpm_multistep_matches_diffusers(config, num_inference_steps):
    step_parity("DPMSolverMultistepScheduler", config, num_inference_steps)


def test_dpm_multistep_dynamic_shifting_and_custom_timesteps():
    config = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "use_dynamic_shifting": True}
    ours = step_parity("DPMSolverMultistepScheduler", config, 6, {"mu": 0.7})
    assert ours.config.flow_shift == 1.0  # as diffusers: mu replaces the shift, not the saved config
    ours.set_timesteps(6)  # the shift mu set stays, as in diffusers
    theirs = diffusers.DPMSolverMultistepScheduler(**config)
    theirs.set_timesteps(6, mu=0.7)
    theirs.set_timesteps(6)
    assert torch.equal(ours.sigmas, theirs.sigmas)
    for kind in ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler"):
        theirs, ours = pair(kind, {"solver_order": 3, "final_sigmas_type": "sigma_min"})
        ts = [999, 850, 600, 420, 300, 120, 40, 5]
        theirs.set_timesteps(timesteps=ts)
        ours.set_timesteps(timesteps=ts)
        assert torch.equal(ours.timesteps, theirs.timesteps) and torch.equal(ours.sigmas, theirs.sigmas)
        x = torch.randn(SHAPE)
        for t in theirs.timesteps:
            m = fake_model(x, t)
            a = theirs.step(m, t, x).prev_sample
            assert_close(ours.step(m, t, x).prev_sample, a, atol=1e-5 * float(a.abs().max()), rtol=1e-5,
                         name=f"{kind} t={int(t)}")
            x = a


def test_dpm_multistep_learned_variance_and_variance_noise():
    def six_channels(x, t):
        out = fake_model(x, t)
        return torch.cat([out, out * 0.0 + 7.0], dim=1)  # the second half (the variance) is ignored

    for config in [{"variance_type": "learned_range"},
                   {"variance_type": "learned", "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}]:
        step_parity("DPMSolverMultistepScheduler", config, 5, model=six_channels)
    theirs, ours = pair("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True})
    theirs.set_timesteps(5)
    ours.set_timesteps(5)
    x = torch.randn(SHAPE)
    for t in theirs.timesteps:
        z = torch.randn(SHAPE)
        a = theirs.step(fake_model(x, t), t, x, variance_noise=z).prev_sample
        assert_close(ours.step(fake_model(x, t), t, x, variance_noise=z).prev_sample, a,
                     atol=1e-5 * float(a.abs().max()), rtol=1e-5, name=f"t={int(t)}")
        x = a


SCHEDULE_CONFIGS = [
    {"use_karras_sigmas": True}, {"use_karras_sigmas": True, "beta_schedule": "squaredcos_cap_v2"},
    {"use_karras_sigmas": True, "rescale_betas_zero_snr": True}, {"use_exponential_sigmas": True, **SD},
    {"use_beta_sigmas": True, "final_sigmas_type": "sigma_min"}, {"use_lu_lambdas": True},
    {"use_lu_lambdas": True, "beta_schedule": "squaredcos_cap_v2"}, {"use_flow_sigmas": True, "flow_shift": 3.0},
    {"lambda_min_clipped": -5.1, "beta_schedule": "squaredcos_cap_v2"}, {"timestep_spacing": "leading", **SD},
]


@pytest.mark.parametrize("kind", list(OURS))
@pytest.mark.parametrize("config", SCHEDULE_CONFIGS, ids=ids)
def test_schedules_match_diffusers(kind, config):
    """timesteps (int64) and sigmas (float32) bit for bit, for every step count up to 60."""
    dropped = {"DPMSolverMultistepScheduler": (),  # options the other two do not take
               "DPMSolverSinglestepScheduler": ("use_lu_lambdas", "timestep_spacing", "rescale_betas_zero_snr"),
               "UniPCMultistepScheduler": ("use_lu_lambdas", "lambda_min_clipped")}[kind]
    config = {k: v for k, v in config.items() if k not in dropped}
    theirs, ours = pair(kind, config)
    for n in range(1, 61):
        theirs.set_timesteps(n)
        ours.set_timesteps(n)
        assert torch.equal(ours.timesteps, theirs.timesteps), (n, ours.timesteps, theirs.timesteps)
        assert torch.equal(ours.sigmas, theirs.sigmas), (n, ours.sigmas, theirs.sigmas)


# -- DPMSolverSinglestep -----------------------------------------------------------------------

SINGLESTEP_CONFIGS = [
    {},
    {"solver_order": 1},
    {"solver_order": 3},
    {"solver_order": 3, "solver_type": "heun", "use_karras_sigmas": True, **SD},
    {"solver_order": 3, "final_sigmas_type": "sigma_min"},
    {"solver_order": 2, "final_sigmas_type": "sigma_min", "prediction_type": "v_prediction"},
    {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3},
    {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_type": "heun", "solver_order": 3,
     "prediction_type": "sample"},
    {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
    {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun", "use_karras_sigmas": True},
    {"thresholding": True, "prediction_type": "v_prediction", "solver_order": 3},
    {"use_exponential_sigmas": True, "solver_order": 3},
    {"use_beta_sigmas": True},
    {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 2.0, "solver_order": 3},
    {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1, "solver_order": 3},
]


@pytest.mark.parametrize("config", SINGLESTEP_CONFIGS, ids=ids)
@pytest.mark.parametrize("num_inference_steps", [1, 3, 8, 16])
def test_dpm_singlestep_matches_diffusers(config, num_inference_steps):
    ours = step_parity("DPMSolverSinglestepScheduler", config, num_inference_steps)
    theirs = diffusers.DPMSolverSinglestepScheduler(**config)
    theirs.set_timesteps(num_inference_steps)
    assert ours.order_list == theirs.order_list
    assert ours.config.lower_order_final == theirs.config.lower_order_final  # set_timesteps may switch it on


def test_dpm_singlestep_block_start_is_the_callers_sample():
    """The later sub-steps of a block start from the block's first sample, held by reference as
    diffusers holds it: a caller who edits the sample mid-block gets diffusers' result."""
    def edit(i, x):
        return x * 0.9 + 0.05 if i % 3 == 1 else x

    step_parity("DPMSolverSinglestepScheduler", {"solver_order": 3, "final_sigmas_type": "sigma_min"}, 9, edit=edit)


# -- UniPC -------------------------------------------------------------------------------------

UNIPC_CONFIGS = [
    {},
    {"solver_order": 1},
    {"solver_order": 3},
    {"solver_type": "bh1", "solver_order": 3},
    {"predict_x0": False},
    {"predict_x0": False, "solver_order": 3, "solver_type": "bh1", "prediction_type": "v_prediction"},
    {"use_karras_sigmas": True, **SD},
    {"use_karras_sigmas": True, "solver_order": 3, "prediction_type": "v_prediction", **SD},
    {"use_exponential_sigmas": True, "final_sigmas_type": "sigma_min"},
    {"use_beta_sigmas": True},
    {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min", "predict_x0": False, "solver_order": 3},
    {"disable_corrector": [0, 2]},
    {"thresholding": True, "prediction_type": "v_prediction", "solver_order": 3},
    {"thresholding": True, "predict_x0": False},  # diffusers thresholds only with predict_x0
    {"lower_order_final": False, "final_sigmas_type": "sigma_min", "solver_order": 3},
    {"prediction_type": "sample", "timestep_spacing": "leading", "steps_offset": 1},
    {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0},
    {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "use_karras_sigmas": True, "solver_order": 3},
    {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "shift_terminal": 0.1, "flow_shift": 2.0},
    {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "final_sigmas_type": "sigma_min"},
]


@pytest.mark.parametrize("config", UNIPC_CONFIGS, ids=ids)
@pytest.mark.parametrize("num_inference_steps", [1, 3, 8, 16])
def test_unipc_matches_diffusers(config, num_inference_steps):
    if "shift_terminal" in config and num_inference_steps == 1:
        pytest.skip("one step stretched to shift_terminal divides 0 by 0 in diffusers (sigma NaN)")
    ours = step_parity("UniPCMultistepScheduler", config, num_inference_steps)
    assert all(s.dtype == torch.float32 for s in ours.model_outputs if s is not None)


def test_unipc_flow_options():
    flow = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
    step_parity("UniPCMultistepScheduler", {**flow, "use_dynamic_shifting": True}, 6, {"mu": 0.8})
    step_parity("UniPCMultistepScheduler", {**flow, "use_dynamic_shifting": True, "time_shift_type": "linear"}, 6,
                {"mu": 1.3})
    # custom flow sigmas (num_inference_steps is their count)
    theirs, ours = pair("UniPCMultistepScheduler", {**flow, "solver_order": 3})
    import numpy as np

    custom = np.array([1.0, 0.8, 0.55, 0.3, 0.12, 0.05])
    theirs.set_timesteps(sigmas=custom.copy())
    ours.set_timesteps(sigmas=custom.copy())
    assert torch.equal(ours.sigmas, theirs.sigmas) and torch.equal(ours.timesteps, theirs.timesteps)
    x = torch.randn(SHAPE)
    for t in theirs.timesteps:
        a = theirs.step(fake_model(x, t), t, x).prev_sample
        assert_close(ours.step(fake_model(x, t), t, x).prev_sample, a, atol=1e-5 * float(a.abs().max()), rtol=1e-5,
                     name=f"t={int(t)}")
        x = a


def test_unipc_corrector_uses_the_corrected_sample_when_the_caller_edits_x():
    """diffusers' corrector starts from its own last_sample, not from the sample passed in; an
    inpainting pipeline blends the sample between steps. fastgen rebuilds last_sample from its own
    previous prev_sample, so it agrees."""
    mask = (torch.arange(SHAPE[-1]) % 2 == 0).float()
    known = torch.randn(SHAPE)

    def blend(i, x):
        return x if i == 0 else mask * known + (1 - mask) * x

    for config in [{"solver_order": 3}, {"predict_x0": False, "solver_type": "bh1"}]:
        step_parity("UniPCMultistepScheduler", config, 8, edit=blend)


@pytest.mark.parametrize("kind,config", [
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "solver_order": 3, **SD}),
    ("DPMSolverSinglestepScheduler", {"solver_order": 3, "algorithm_type": "sde-dpmsolver++"}),
    ("UniPCMultistepScheduler", {"solver_order": 3}),
    ("UniPCMultistepScheduler", {"predict_x0": False, "final_sigmas_type": "sigma_min", "disable_corrector": [3]}),
], ids=lambda v: v if isinstance(v, str) else ids(v))
def test_full_loops_on_their_own_trajectories(kind, config):
    """The pipelines' loop: each scheduler is fed its own prev_sample (UniPC then reads it once, as
    x). Every step against diffusers' float64 twin on its own trajectory, within twice diffusers'
    float32 error."""
    theirs, ours = pair(kind, config)
    theirs.set_timesteps(12)
    ours.set_timesteps(12)
    exact = exact_twin(theirs)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    xs = [x0.clone(), x0.double(), x0.clone()]
    gens = [torch.Generator().manual_seed(3) for _ in range(3)]
    kw = [{} if kind.startswith("UniPC") else {"generator": g} for g in gens]
    for i, t in enumerate(theirs.timesteps):
        xs = [s.step(fake_model(x, t), t, x, **k).prev_sample for s, x, k in zip((theirs, exact, ours), xs, kw)]
        err_theirs, err_ours = (float((xs[j].double() - xs[1]).abs().max()) for j in (0, 2))
        assert err_ours <= 2 * err_theirs + 1e-5 * float(xs[1].abs().max()), (i, err_ours, err_theirs)


def test_unipc_refuses_a_prev_sample_changed_in_place():
    sched = UniPCMultistepScheduler()
    sched.set_timesteps(5)
    x = torch.randn(SHAPE)
    x = sched.step(fake_model(x, 999), sched.timesteps[0], x).prev_sample
    x.mul_(0.5)  # diffusers' corrector would still start from its own last_sample
    with pytest.raises(RuntimeError, match="modified in place"):
        sched.step(fake_model(x, 0), sched.timesteps[1], x)


# -- shared API --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(OURS))
def test_add_noise_begin_index_and_full_loop_from_the_middle(kind):
    config = {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    theirs, ours = pair(kind, config)
    # before set_timesteps diffusers looks t up in its whole (reversed) schedule; so does fastgen
    t = torch.tensor([3, 870])
    assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), name="add_noise before set_timesteps")
    theirs.set_timesteps(10)
    ours.set_timesteps(10)
    for t in [theirs.timesteps[[1, 7]], torch.tensor([5, 999]), theirs.timesteps[[9, 0]].float()]:
        assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), name=f"add_noise at {t.tolist()}")
    # img2img: start at step 4, from the noised image; begin_index set, add_noise uses it
    theirs.set_begin_index(4)
    ours.set_begin_index(4)
    t = theirs.timesteps[4:5].repeat(2)
    x = theirs.add_noise(x0, noise, t)
    assert_close(ours.add_noise(x0, noise, t), x, name="add_noise with begin_index")
    ga, gb = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    for t in theirs.timesteps[4:]:
        m = fake_model(x, t)
        kw_a, kw_b = ({}, {}) if kind.startswith("UniPC") else ({"generator": ga}, {"generator": gb})
        a = theirs.step(m, t, x, **kw_a).prev_sample
        assert_close(ours.step(m, t, x, **kw_b).prev_sample, a, atol=1e-5 * float(a.abs().max()), rtol=1e-5,
                     name=f"t={int(t)}")
        x = a
    assert ours.step_index == theirs.step_index == 10
    with pytest.raises(ValueError, match="call set_timesteps again"):
        ours.step(m, t, x)
    # without begin_index the first timestep finds the position (here 6), as diffusers finds it
    theirs.set_timesteps(10)
    ours.set_timesteps(10)
    t = theirs.timesteps[6]
    a = theirs.step(fake_model(x, t), t, x, **({} if kind.startswith("UniPC") else {"generator": ga})).prev_sample
    b = ours.step(fake_model(x, t), t, x, **({} if kind.startswith("UniPC") else {"generator": gb})).prev_sample
    assert_close(b, a, atol=1e-5 * float(a.abs().max()), rtol=1e-5, name="mid start")
    assert ours.step_index == theirs.step_index == 7


@pytest.mark.parametrize("kind", list(OURS))
def test_float16_samples(kind):
    """Half-precision samples: fastgen's error against diffusers' float64 twin stays within twice
    diffusers' own error in float16 (fastgen computes in float32 and keeps its history float32)."""
    config = {"use_karras_sigmas": True, "solver_order": 3, **SD}
    theirs, ours = pair(kind, config)
    theirs.set_timesteps(8)
    ours.set_timesteps(8)
    exact = exact_twin(theirs)
    x = torch.randn(SHAPE).half()
    for i, t in enumerate(theirs.timesteps):
        m = fake_model(x.float(), t).half()
        a = theirs.step(m, t, x).prev_sample
        e = exact.step(m.double(), t, x.double()).prev_sample
        b = ours.step(m, t, x).prev_sample
        assert b.dtype == torch.float16
        err_theirs, err_ours = float((a.double() - e).abs().max()), float((b.double() - e).abs().max())
        assert err_ours <= 2 * err_theirs + 1e-3 * float(e.abs().max()), (i, err_ours, err_theirs)
        x = a


@pytest.mark.parametrize("kind", ["DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler"])
def test_diffusers_pipeline_with_fastgen_scheduler(kind):
    # (UniPC's step takes no generator, so diffusers' DDPMPipeline cannot drive it)
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    config = {"num_train_timesteps": 100, "use_karras_sigmas": True, "solver_order": 3,
              "final_sigmas_type": "sigma_min"}
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=getattr(diffusers, kind)(**config))
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=6,
                    output_type="np").images
    pipe.scheduler = OURS[kind].from_config(pipe.scheduler.config)
    got = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=6, output_type="np").images
    assert_close(torch.from_numpy(got), torch.from_numpy(expected), atol=2e-5, rtol=1e-5, name="images")


@pytest.mark.parametrize("kind,config", [
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++",
                                     "solver_order": 3, "thresholding": True}),
    ("DPMSolverSinglestepScheduler", {"solver_order": 3, "algorithm_type": "sde-dpmsolver++"}),
    ("UniPCMultistepScheduler", {"solver_order": 3, "thresholding": True}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_step_compiles_without_graph_breaks(kind, config):
    """torch.compile(fullgraph=True) of whole steps: a host read of a device value (``.item()``,
    a data-dependent branch) would be a graph break, and fullgraph turns it into an error."""
    torch._dynamo.reset()  # each step's host state (step index, order) is a new guard: start from none
    ours = OURS[kind](**config)
    ours.set_timesteps(4)
    ours.set_noise_seed(5)
    ours.cpu_noise = "philox"  # the in-kernel noise the accelerators use: a traced draw, no torch.randn
    eager = copy.deepcopy(ours)
    x = torch.randn(1, 1, 2, 2)

    def one_step(sched, m, t, x):
        return sched.step(m, t, x).prev_sample

    compiled = torch.compile(one_step, fullgraph=True, backend="eager")
    for t in ours.timesteps[:3]:
        m = fake_model(x, t)
        got, want = compiled(ours, m, int(t), x), one_step(eager, m, int(t), x)
        assert_close(got, want, name=f"compiled step at t={int(t)}")
        x = want


def test_errors():
    with pytest.raises(ValueError, match="algorithm_type must be one of"):
        DPMSolverMultistepScheduler(algorithm_type="dpm")
    with pytest.raises(ValueError, match="final_sigmas_type"):
        DPMSolverMultistepScheduler(algorithm_type="dpmsolver")
    with pytest.raises(NotImplementedError, match="solver_order=3 with algorithm_type='sde-dpmsolver'"):
        DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver", solver_order=3, final_sigmas_type="sigma_min")
    with pytest.raises(ValueError, match="Only one of"):
        DPMSolverMultistepScheduler(use_karras_sigmas=True, use_beta_sigmas=True)
    with pytest.raises(ValueError, match="solver_order must be 1, 2 or 3"):
        DPMSolverMultistepScheduler(solver_order=0)
    with pytest.raises(NotImplementedError, match="beta_schedule"):
        UniPCMultistepScheduler(beta_schedule="sigmoid")
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        UniPCMultistepScheduler(prediction_type="eps")
    with pytest.raises(NotImplementedError, match="solver_p"):
        UniPCMultistepScheduler(solver_p=diffusers.DDIMScheduler())
    with pytest.raises(NotImplementedError, match="solver_order must be 1, 2 or 3"):
        UniPCMultistepScheduler(solver_order=4)
    with pytest.raises(ValueError, match="shift_terminal"):
        UniPCMultistepScheduler(shift_terminal=0.1)
    with pytest.raises(NotImplementedError, match="thresholding=True with algorithm_type='dpmsolver'"):
        DPMSolverSinglestepScheduler(thresholding=True, algorithm_type="dpmsolver", final_sigmas_type="sigma_min")
    with pytest.raises(ValueError, match="solver_type must be"):
        DPMSolverSinglestepScheduler(solver_type="euler")
    assert UniPCMultistepScheduler(solver_type="midpoint").config.solver_type == "bh2"  # diffusers' mapping
    assert DPMSolverMultistepScheduler(algorithm_type="deis").config.algorithm_type == "dpmsolver++"
    x = torch.randn(SHAPE)
    for cls in OURS.values():
        sched = cls(use_karras_sigmas=True)
        with pytest.raises(ValueError, match="before set_timesteps"):
            sched.step(x, 10, x)
        with pytest.raises(ValueError, match="num_inference_steps must lie in"):
            sched.set_timesteps(0)
        if cls is not UniPCMultistepScheduler:
            with pytest.raises(ValueError, match="timesteps cannot be combined with use_karras_sigmas"):
                sched.set_timesteps(timesteps=[900, 500])
            with pytest.raises(ValueError, match="exactly one of"):
                sched.set_timesteps()
        sched.set_timesteps(3)
        with pytest.raises(ValueError, match="model_output must have the shape"):
            sched.step(x[:1], sched.timesteps[0], x)
    with pytest.raises(ValueError, match="only supported when `use_flow_sigmas=True`"):
        UniPCMultistepScheduler().set_timesteps(sigmas=[1.0, 0.5])
    with pytest.raises(ValueError, match="`mu` must be passed"):
        UniPCMultistepScheduler(use_dynamic_shifting=True).set_timesteps(4)
    with pytest.raises(ValueError, match="mu is only taken with use_dynamic_shifting"):
        DPMSolverMultistepScheduler().set_timesteps(4, mu=0.5)
    # a higher-order last step to sigma = 0: diffusers gives inf (order 2) or fails (order 3)
    sched = UniPCMultistepScheduler(lower_order_final=False)
    sched.set_timesteps(3)
    with pytest.raises(ValueError, match="lower_order_final=False with final_sigmas_type='zero'"):
        for t in sched.timesteps:
            x = sched.step(fake_model(x, t), t, x).prev_sample
