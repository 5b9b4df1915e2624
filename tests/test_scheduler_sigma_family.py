"""The k-diffusion sigma schedulers (Euler, Euler ancestral, Heun, LMS, KDPM2, KDPM2 ancestral) and
fastgen.diffusion.sigmas against diffusers 0.42 (the reference): schedules bit for bit, every
step's prev_sample and pred_original_sample against diffusers' float64 twin (with diffusers' own
float32 error as slack), generator streams in lockstep, add_noise, begin index, errors, and one
torch.compile(fullgraph=True) step each (a host read in step would break the graph)."""
import copy

import numpy as np
import pytest
import torch

from fastgen.diffusion import sigmas as S
from fastgen.diffusion.scheduling_euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from fastgen.diffusion.scheduling_heun import HeunDiscreteScheduler
from fastgen.diffusion.scheduling_kdpm2 import KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler
from fastgen.diffusion.scheduling_lms import LMSDiscreteScheduler, lms_coefficients
from helpers import assert_close
from scheduler_helpers import close_to_exact, exact_twin, fake_model, float32_noise_in

diffusers = pytest.importorskip("diffusers")
# diffusers 0.42 under numpy 2 warns (DeprecationWarning) on every np.array(tensor) of its sigma
# code: tens of thousands per run, which only cost time here
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SHAPE = (2, 3, 4, 4)
OURS = {cls.__name__: cls for cls in (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, HeunDiscreteScheduler,
                                      LMSDiscreteScheduler, KDPM2DiscreteScheduler, KDPM2AncestralDiscreteScheduler)}
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
STEPS_BEFORE_SET_TIMESTEPS = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler")  # as diffusers'


@pytest.fixture(autouse=True)
def _float32_noise_in_diffusers(monkeypatch):
    from diffusers.schedulers import (scheduling_euler_ancestral_discrete, scheduling_euler_discrete,
                                      scheduling_k_dpm_2_ancestral_discrete)

    float32_noise_in(monkeypatch, scheduling_euler_discrete, scheduling_euler_ancestral_discrete,
                     scheduling_k_dpm_2_ancestral_discrete)


def check_schedule(ours, theirs):
    assert ours.timesteps.dtype == theirs.timesteps.dtype, (ours.timesteps.dtype, theirs.timesteps.dtype)
    assert torch.equal(ours.timesteps, theirs.timesteps), (ours.timesteps, theirs.timesteps)
    assert torch.equal(ours.sigmas, theirs.sigmas), (ours.sigmas, theirs.sigmas)
    assert torch.equal(torch.as_tensor(ours.init_noise_sigma), torch.as_tensor(theirs.init_noise_sigma))
    assert ours.num_inference_steps == theirs.num_inference_steps
    for name in ("sigmas_interpol", "sigmas_up", "sigmas_down"):
        if hasattr(theirs, name):
            torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=0, atol=0, equal_nan=True,
                                       msg=name)


def loop_parity(name, config, num_inference_steps=None, step_kwargs=None, set_kwargs=None, begin_index=None,
                seed=3):
    """Both schedulers over a whole loop on diffusers' trajectory: schedule, scale_model_input
    (bit for bit), every prev_sample / pred_original_sample against the float64 twin, and the
    generator streams (same number of normals drawn)."""
    if config.get("use_beta_sigmas"):
        pytest.importorskip("scipy", reason="use_beta_sigmas needs scipy (not a fastgen dependency)")
    theirs, ours = getattr(diffusers, name)(**config), OURS[name](**config)
    set_kwargs = set_kwargs or {"num_inference_steps": num_inference_steps}
    theirs.set_timesteps(**set_kwargs)
    ours.set_timesteps(**set_kwargs)
    check_schedule(ours, theirs)
    exact = exact_twin(theirs)
    timesteps = theirs.timesteps
    if begin_index is not None:
        for s in (theirs, ours, exact):
            s.set_begin_index(begin_index)
        timesteps = timesteps[begin_index:]
    gen_kw = "generator" in theirs.step.__code__.co_varnames
    gens = [torch.Generator().manual_seed(seed) for _ in range(3)]
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * theirs.init_noise_sigma
    for i, t in enumerate(timesteps):
        xa, xb = theirs.scale_model_input(x, t), ours.scale_model_input(x.clone(), t)
        exact.scale_model_input(x.double(), t)
        assert torch.equal(xb, xa), f"scale_model_input at step {i}"
        m = fake_model(xa, t)
        kw = [dict(step_kwargs or {}, **({"generator": g} if gen_kw else {})) for g in gens]
        a = theirs.step(m, t, x, **kw[0])
        e = exact.step(m.double(), t, x.double(), **kw[1])
        b = ours.step(m.clone(), t, x.clone(), **kw[2])
        assert ours.step_index == theirs.step_index
        close_to_exact(b.prev_sample, a.prev_sample, e.prev_sample, f"prev_sample at step {i} (t={float(t)})")
        close_to_exact(b.pred_original_sample, a.pred_original_sample, e.pred_original_sample,
                       f"pred_original_sample at step {i}")
        if hasattr(theirs, "state_in_first_order"):
            assert ours.state_in_first_order == theirs.state_in_first_order
        x = a.prev_sample
    assert torch.equal(gens[0].get_state(), gens[2].get_state()), "generator streams diverged"


def _ids(c):
    return ",".join(f"{k}={v}" for k, v in c.items())[:70] or "default"


# -- fastgen.diffusion.sigmas ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["karras", "exponential", "beta"])
@pytest.mark.parametrize("n", [1, 2, 7, 30])
def test_sigma_conversions_match_diffusers(kind, n):
    if kind == "beta":
        pytest.importorskip("scipy", reason="beta sigmas need scipy (not a fastgen dependency)")
    theirs = diffusers.EulerDiscreteScheduler(**SD)
    train = S.train_sigmas(theirs.alphas_cumprod)
    assert np.array_equal(train, np.array(((1 - theirs.alphas_cumprod) / theirs.alphas_cumprod) ** 0.5))
    spaced = S.interpolate_sigmas(S.spaced_sigma_timesteps(1000, n, "linspace"), train)
    ours = getattr(S, f"{kind}_sigmas")(spaced, n)
    expected = getattr(theirs, f"_convert_to_{kind}")(in_sigmas=spaced, num_inference_steps=n)
    assert ours.dtype == np.float64 and np.array_equal(ours, expected)
    log_sigmas = np.log(train)
    ts = S.sigma_to_t(ours, log_sigmas)
    assert np.array_equal(ts, np.array([theirs._sigma_to_t(s, log_sigmas) for s in ours]))
    # explicit bounds (diffusers reads them from config.sigma_min / sigma_max)
    bounded = diffusers.EulerDiscreteScheduler(sigma_min=0.05, sigma_max=20.0)
    assert np.array_equal(getattr(S, f"{kind}_sigmas")(spaced, n, sigma_min=0.05, sigma_max=20.0),
                          getattr(bounded, f"_convert_to_{kind}")(in_sigmas=spaced, num_inference_steps=n))


def test_sigma_helpers_spacing_and_errors():
    for spacing in ("linspace", "leading", "trailing"):
        for n in (1, 3, 10, 999):
            theirs = diffusers.EulerDiscreteScheduler(timestep_spacing=spacing, steps_offset=1)
            theirs.set_timesteps(n)
            ts = S.spaced_sigma_timesteps(1000, n, spacing, 1)
            assert ts.dtype == np.float32 and np.array_equal(ts, theirs.timesteps.numpy())
    assert np.allclose(S.karras_sigmas([10.0, 0.1], 5, rho=1.0), np.linspace(10.0, 0.1, 5), rtol=1e-14)
    with pytest.raises(ValueError, match="Only one of"):
        S.check_one_sigma_type(True, False, True)
    with pytest.raises(ValueError, match="timestep_spacing"):
        S.spaced_sigma_timesteps(1000, 10, "uniform")
    with pytest.raises(ValueError, match="interpolation_type"):
        S.interpolate_sigmas(np.arange(3.0), np.ones(10, np.float32), "cubic")
    with pytest.raises(ValueError, match="final_sigmas_type"):
        S.final_sigma("one", torch.ones(3))
    assert S.sigma_to_t(np.float64(5.0), np.log(np.linspace(0.1, 10, 50))).shape == ()


# -- parity over whole loops -------------------------------------------------------------------

EULER = [
    {},
    {"prediction_type": "v_prediction"},
    {"prediction_type": "sample"},
    dict(SD, use_karras_sigmas=True),
    dict(SD, use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0, final_sigmas_type="sigma_min"),
    {"use_exponential_sigmas": True, "timestep_spacing": "leading", "steps_offset": 1},
    {"use_beta_sigmas": True, "timestep_spacing": "trailing", "beta_schedule": "squaredcos_cap_v2"},
    {"interpolation_type": "log_linear"},
    {"final_sigmas_type": "sigma_min", "timestep_spacing": "leading"},
    {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    {"timestep_type": "continuous", "prediction_type": "v_prediction", **SD},
    {"trained_betas": np.linspace(1e-4, 0.03, 1000).tolist()},
]


@pytest.mark.parametrize("config", EULER, ids=_ids)
def test_euler_matches_diffusers(config):
    loop_parity("EulerDiscreteScheduler", config, 10)


@pytest.mark.parametrize("step_kwargs", [{"s_churn": 1.0, "s_tmin": 0.5, "s_tmax": 50.0},
                                         {"s_churn": 3.0, "s_noise": 1.003}], ids=["window", "all"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_euler_churn_matches_diffusers(step_kwargs, prediction_type):
    loop_parity("EulerDiscreteScheduler", {"prediction_type": prediction_type}, 8, step_kwargs)


@pytest.mark.parametrize("set_kwargs", [{"sigmas": [14.6, 5.0, 1.2, 0.3, 0.0]}, {"sigmas": [3.0, 0.5, 0.02]},
                                        {"timesteps": [999.0, 700.5, 300.0, 10.0]}], ids=["sigmas", "sigmas2", "ts"])
def test_euler_custom_schedules(set_kwargs):
    loop_parity("EulerDiscreteScheduler", {}, set_kwargs=set_kwargs)


ANCESTRAL = [{}, {"prediction_type": "v_prediction", "timestep_spacing": "trailing"},
             dict(SD, timestep_spacing="leading", steps_offset=1), {"rescale_betas_zero_snr": True}]


@pytest.mark.parametrize("config", ANCESTRAL, ids=_ids)
@pytest.mark.parametrize("n", [1, 10])
def test_euler_ancestral_matches_diffusers(config, n):
    loop_parity("EulerAncestralDiscreteScheduler", config, n)


SECOND_ORDER = [
    {},
    {"prediction_type": "v_prediction"},
    {"use_karras_sigmas": True, "beta_schedule": "scaled_linear"},
    {"use_exponential_sigmas": True, "timestep_spacing": "leading", "steps_offset": 1},
    {"use_beta_sigmas": True, "timestep_spacing": "trailing"},
    {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
]


@pytest.mark.parametrize("config", SECOND_ORDER + [{"prediction_type": "sample"}, {"beta_schedule": "exp"},
                                                   {"clip_sample": True, "clip_sample_range": 2.0},
                                                   {"clip_sample": True, "prediction_type": "v_prediction"}], ids=_ids)
def test_heun_matches_diffusers(config):
    loop_parity("HeunDiscreteScheduler", config, 10)


@pytest.mark.parametrize("name", ["KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"])
@pytest.mark.parametrize("config", SECOND_ORDER, ids=_ids)
def test_kdpm2_matches_diffusers(name, config):
    loop_parity(name, config, 10)


@pytest.mark.parametrize("config", [{}, {"prediction_type": "v_prediction"}, {"prediction_type": "sample"},
                                    dict(SD, use_karras_sigmas=True), {"use_exponential_sigmas": True},
                                    {"use_beta_sigmas": True, "timestep_spacing": "trailing"},
                                    {"timestep_spacing": "leading", "steps_offset": 1}], ids=_ids)
def test_lms_matches_diffusers(config):
    loop_parity("LMSDiscreteScheduler", config, 12)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_lms_orders(order):
    loop_parity("LMSDiscreteScheduler", {}, 8, {"order": order})


@pytest.mark.parametrize("name", list(OURS))
@pytest.mark.parametrize("n", [1, 2])
def test_few_steps(name, n):
    loop_parity(name, {}, n)


@pytest.mark.parametrize("name", list(OURS))
def test_begin_index(name):
    # img2img: start mid-schedule; the Heun / KDPM2 begin index must land on a first stage
    loop_parity(name, {}, 10, begin_index=4 if name in ("EulerDiscreteScheduler", "LMSDiscreteScheduler",
                                                          "EulerAncestralDiscreteScheduler") else 6)


def test_heun_custom_timesteps():
    loop_parity("HeunDiscreteScheduler", {}, set_kwargs={"timesteps": [999, 600, 300.5, 50]})


def test_lms_coefficients_against_quad():
    integrate = pytest.importorskip("scipy.integrate", reason="the reference quadrature is scipy's")

    sigmas = np.array([14.6, 9.7, 6.1, 3.3, 1.9, 0.7, 0.21, 0.03, 0.0])
    ours = lms_coefficients(sigmas, np.arange(8), 4)
    for t in range(8):
        q = min(t + 1, 4)
        for j in range(4):
            if j >= q:
                assert ours[t, j] == 0.0
                continue

            def basis(tau):
                return np.prod([(tau - sigmas[t - k]) / (sigmas[t - j] - sigmas[t - k]) for k in range(q) if k != j])

            expected = integrate.quad(basis, sigmas[t], sigmas[t + 1], epsabs=1e-14, epsrel=1e-13)[0]
            assert abs(ours[t, j] - expected) <= 1e-12 * max(1.0, abs(expected)), (t, j, ours[t, j], expected)
    # the coefficients of one step integrate the polynomial through the nodes exactly: they sum to
    # the step length (the basis sums to 1)
    assert np.allclose(ours.sum(1), sigmas[1:] - sigmas[:-1], rtol=1e-12, atol=1e-12)


# -- the rest of the API ------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(OURS))
def test_add_noise(name):
    theirs, ours = getattr(diffusers, name)(), OURS[name]()
    for s in (theirs, ours):
        s.set_timesteps(10)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(6))
    t = theirs.timesteps[[0, 3]]
    assert torch.equal(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t))
    for s in (theirs, ours):
        s.set_begin_index(2)
    t = theirs.timesteps[[2, 2]]
    assert torch.equal(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t))
    with pytest.raises(ValueError, match="not in the schedule"):
        OURS[name]().add_noise(x0, noise, torch.tensor([0.123, 0.5]))


@pytest.mark.parametrize("name", list(OURS))
def test_step_past_the_end_and_integer_timesteps(name):
    ours = OURS[name]()
    ours.set_timesteps(3)
    x = torch.randn(SHAPE)
    for t in ours.timesteps:
        ours.step(fake_model(x, t), t, x)
    with pytest.raises(ValueError, match="past the end"):
        ours.step(x, ours.timesteps[-1], x)
    ours.set_timesteps(3)
    with pytest.raises(ValueError, match="integer indices"):
        ours.step(x, 0, x)
    with pytest.raises(ValueError, match="not in the schedule"):
        ours.step(x, 123.25, x)
    fresh = OURS[name]()
    fresh.num_inference_steps = None
    if name in STEPS_BEFORE_SET_TIMESTEPS:  # on the training schedule, as diffusers (test below)
        fresh.step(x, 999.0, x)
    else:
        with pytest.raises(ValueError, match="before set_timesteps"):
            fresh.step(x, 999.0, x)


@pytest.mark.parametrize("name,config,step_kwargs", [
    ("EulerDiscreteScheduler", {}, {}),
    ("EulerDiscreteScheduler", {}, {"s_churn": 1.0}),
    ("EulerDiscreteScheduler", {"timestep_type": "continuous", "prediction_type": "v_prediction"}, {}),
    ("EulerAncestralDiscreteScheduler", {}, {}),
], ids=str)
def test_euler_steps_before_set_timesteps(name, config, step_kwargs):
    # diffusers' Euler schedulers step over the training schedule their constructor publishes
    theirs, ours = getattr(diffusers, name)(**config), OURS[name](**config)
    exact = exact_twin(theirs)
    gens = [torch.Generator().manual_seed(3) for _ in range(3)]
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * theirs.init_noise_sigma
    for i, t in enumerate(theirs.timesteps[:4]):
        xa, xb = theirs.scale_model_input(x, t), ours.scale_model_input(x.clone(), t)
        exact.scale_model_input(x.double(), t)
        assert torch.equal(xb, xa), f"scale_model_input at step {i}"
        m = fake_model(xa, t)
        a = theirs.step(m, t, x, generator=gens[0], **step_kwargs)
        e = exact.step(m.double(), t, x.double(), generator=gens[1], **step_kwargs)
        b = ours.step(m.clone(), t, x.clone(), generator=gens[2], **step_kwargs)
        assert ours.step_index == theirs.step_index == i + 1 and ours.num_inference_steps is None
        close_to_exact(b.prev_sample, a.prev_sample, e.prev_sample, f"prev_sample at step {i}")
        close_to_exact(b.pred_original_sample, a.pred_original_sample, e.pred_original_sample,
                       f"pred_original_sample at step {i}")
        x = a.prev_sample
    assert torch.equal(gens[0].get_state(), gens[2].get_state()), "generator streams diverged"


def test_bad_arguments():
    with pytest.raises(ValueError, match="Only one of"):
        EulerDiscreteScheduler(use_karras_sigmas=True, use_exponential_sigmas=True)
    with pytest.raises(ValueError, match="Only one of"):
        KDPM2DiscreteScheduler(use_beta_sigmas=True, use_karras_sigmas=True)
    with pytest.raises(NotImplementedError, match="sigmoid"):
        EulerDiscreteScheduler(beta_schedule="sigmoid")
    with pytest.raises(ValueError, match="interpolation_type"):
        EulerDiscreteScheduler(interpolation_type="cubic")
    with pytest.raises(ValueError, match="final_sigmas_type"):
        EulerDiscreteScheduler(final_sigmas_type="one")
    with pytest.raises(ValueError, match="timestep_type"):
        EulerDiscreteScheduler(timestep_type="float")
    euler = EulerDiscreteScheduler(use_karras_sigmas=True)
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        euler.set_timesteps(timesteps=[900.0, 100.0])
    with pytest.raises(ValueError, match="Only one of"):
        euler.set_timesteps(timesteps=[900.0], sigmas=[1.0, 0.0])
    with pytest.raises(ValueError, match="Can only pass one"):
        euler.set_timesteps(10, sigmas=[1.0, 0.0])
    with pytest.raises(ValueError, match="use_exponential_sigmas"):
        HeunDiscreteScheduler(use_exponential_sigmas=True).set_timesteps(timesteps=[900, 100])
    x = torch.randn(SHAPE)
    for cls in (EulerAncestralDiscreteScheduler, KDPM2DiscreteScheduler, KDPM2AncestralDiscreteScheduler):
        s = cls(prediction_type="sample")  # diffusers too accepts it here and raises in step
        s.set_timesteps(4)
        with pytest.raises(NotImplementedError, match="sample"):
            s.step(x, s.timesteps[0], x)
    lms = LMSDiscreteScheduler()
    lms.set_timesteps(4)
    with pytest.raises(ValueError, match="order"):
        lms.step(x, lms.timesteps[0], x, order=5)


def test_low_precision_euler():
    # SDXL runs the Euler loop in float16: diffusers upcasts the sample, steps in float32, casts back
    # (and rounds sigma * m to float16 on the way, which fastgen does not: judged against float64)
    theirs, ours = diffusers.EulerDiscreteScheduler(**SD), EulerDiscreteScheduler(**SD)
    for s in (theirs, ours):
        s.set_timesteps(6)
    exact = exact_twin(theirs)
    x = (torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * theirs.init_noise_sigma).half()
    for i, t in enumerate(theirs.timesteps):
        xa, xb = theirs.scale_model_input(x, t), ours.scale_model_input(x, t)
        exact.scale_model_input(x.double(), t)
        assert xb.dtype == xa.dtype and torch.equal(xb, xa)
        m = fake_model(xa.float(), t).half()
        a, b, e = theirs.step(m, t, x), ours.step(m, t, x), exact.step(m.double(), t, x.double())
        assert b.prev_sample.dtype == torch.float16 and b.pred_original_sample.dtype == torch.float32
        ulp = float(e.prev_sample.abs().max()) * 2.0**-10  # a float16 rounding of the result
        err_ours = float((b.prev_sample.double() - e.prev_sample).abs().max())
        err_theirs = float((a.prev_sample.double() - e.prev_sample).abs().max())
        assert err_ours <= 2 * err_theirs + ulp, (i, err_ours, err_theirs)
        assert_close(b.pred_original_sample, e.pred_original_sample.float(),
                     atol=1e-5 * float(e.pred_original_sample.abs().max()), rtol=1e-5)
        x = a.prev_sample


def test_from_diffusers_config_and_no_x0():
    theirs = diffusers.EulerDiscreteScheduler(**SD, use_karras_sigmas=True, timestep_spacing="leading")
    ours = EulerDiscreteScheduler.from_config(theirs.config)
    for s in (theirs, ours):
        s.set_timesteps(7)
    check_schedule(ours, theirs)
    ours.compute_pred_original_sample = False
    x = torch.randn(SHAPE)
    out = ours.step(x, ours.timesteps[0], x)
    assert out.pred_original_sample is None and out.prev_sample.shape == x.shape
    prev, x0 = ours.step(x, ours.timesteps[1], x, return_dict=False)
    assert x0 is None


@pytest.mark.parametrize("name", list(OURS))
def test_step_compiles_without_graph_breaks(name, monkeypatch):
    # fullgraph=True fails on any host read of a tensor value in step (a device synchronisation).
    # Ancestral noise comes from torch.randn here (no generator: dynamo cannot take one as an
    # argument); fallback_random makes the compiled randn draw eager's numbers.
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "fallback_random", True)
    torch._dynamo.reset()  # the parametrised cases share one code object and its recompile budget
    ours = OURS[name]()
    ours.set_timesteps(3)
    ours.set_begin_index(0)
    x, m = torch.randn(1, 1, 2, 2), torch.randn(1, 1, 2, 2)
    eager = copy.deepcopy(ours)

    def one_step(m, x, t):
        return ours.step(m, t, x, return_dict=False)

    compiled = torch.compile(one_step, fullgraph=True)
    for k in range(2):  # a first and (for Heun / KDPM2) a second stage
        t = ours.timesteps[k]
        torch.manual_seed(k)
        got = compiled(m, x, t)
        torch.manual_seed(k)
        want = eager.step(m, t, x, return_dict=False)
        assert_close(got[0], want[0], name="prev_sample")
    assert ours.step_index == 2


@pytest.mark.parametrize("name,config", [(n, {}) for n in OURS] + [
    ("EulerDiscreteScheduler", {"timestep_type": "continuous", "prediction_type": "v_prediction"}),
    ("EulerDiscreteScheduler", {"rescale_betas_zero_snr": True, "timestep_spacing": "leading"}),
    ("HeunDiscreteScheduler", {"use_karras_sigmas": True})], ids=str)
def test_state_before_set_timesteps(name, config):
    # what diffusers' constructor publishes: the training schedule (Heun, LMS, KDPM2 call
    # set_timesteps(num_train_timesteps) themselves)
    theirs, ours = getattr(diffusers, name)(**config), OURS[name](**config)
    check_schedule(ours, theirs)
    assert ours.order == theirs.order and ours.step_index is None and ours.begin_index is None
