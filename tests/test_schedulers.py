"""fastgen.diffusion schedulers against diffusers' schedulers of the same config (the reference):
per-step parity on shared inputs with the same generator stream, whole loops, from_config,
diffusers pipelines with a tiny UNet, the output objects, errors and NaN."""
import copy
import inspect

import pytest
import torch

import fastgen.diffusion as fd
from fastgen import _rng
from helpers import DEVICES, assert_close, impls_on
from scheduler_helpers import close, close_to_exact, exact_twin, fake_model, float32_noise_in, tiny_unet

diffusers = pytest.importorskip("diffusers")

SHAPE = (2, 3, 4, 4)


@pytest.fixture(autouse=True)
def _float32_noise_in_diffusers(monkeypatch):
    from diffusers.schedulers import scheduling_ddim, scheduling_ddpm, scheduling_dpmsolver_multistep

    float32_noise_in(monkeypatch, scheduling_ddim, scheduling_ddpm, scheduling_dpmsolver_multistep)


def step_parity(ours, theirs, num_inference_steps, step_kwargs=None, seed=3, batch_gen=False):
    """Run both schedulers step by step on the same inputs (diffusers' trajectory) and compare
    prev_sample and pred_original_sample at every step against diffusers' float64 twin (with
    diffusers' float32 error as slack); generators must stay in lockstep."""
    step_kwargs = step_kwargs or {}
    theirs.set_timesteps(num_inference_steps)
    ours.set_timesteps(num_inference_steps)
    exact = exact_twin(theirs)
    assert torch.equal(ours.timesteps, theirs.timesteps), (ours.timesteps, theirs.timesteps)
    assert ours.num_inference_steps == theirs.num_inference_steps
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))

    def gens():
        if batch_gen:
            return [torch.Generator().manual_seed(seed + i) for i in range(SHAPE[0])]
        return torch.Generator().manual_seed(seed)

    gen_a, gen_b, gen_e = gens(), gens(), gens()
    for i, t in enumerate(theirs.timesteps):
        m = fake_model(x, t)
        a = theirs.step(m, t, x, generator=gen_a, **step_kwargs)
        e = exact.step(m.double(), t, x.double(), generator=gen_e, **step_kwargs)
        b = ours.step(m.clone(), t, x.clone(), generator=gen_b, **step_kwargs)
        close_to_exact(b.prev_sample, a.prev_sample, e.prev_sample, f"prev_sample at step {i} (t={int(t)})")
        if getattr(a, "pred_original_sample", None) is not None:
            close_to_exact(b.pred_original_sample, a.pred_original_sample, e.pred_original_sample,
                           f"pred_original_sample at step {i}")
        x = a.prev_sample
    pairs = zip(gen_a, gen_b) if batch_gen else [(gen_a, gen_b)]
    for ga, gb in pairs:  # both drew exactly the same numbers of normals
        assert torch.equal(ga.get_state(), gb.get_state()), "generator streams diverged"


def full_loop(scheduler, num_inference_steps, step_kwargs=None, seed=3):
    scheduler.set_timesteps(num_inference_steps)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(seed)
    for t in scheduler.timesteps:
        x = scheduler.step(fake_model(x, t), t, x, generator=gen, **(step_kwargs or {})).prev_sample
    return x


DDPM_CONFIGS = [
    {},
    {"clip_sample": False},
    {"prediction_type": "v_prediction", "beta_schedule": "scaled_linear"},
    {"prediction_type": "sample", "clip_sample": False, "beta_schedule": "squaredcos_cap_v2"},
    {"variance_type": "fixed_small_log", "clip_sample_range": 0.5},
    {"variance_type": "fixed_large", "timestep_spacing": "trailing"},
    {"timestep_spacing": "linspace", "beta_schedule": "squaredcos_cap_v2"},
    {"steps_offset": 1, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"trained_betas": torch.linspace(1e-4, 0.03, 1000).tolist()},
    {"num_train_timesteps": 50, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
]


@pytest.mark.parametrize("config", DDPM_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())[:60] or "default")
@pytest.mark.parametrize("num_inference_steps", [1, 4, 10])
def test_ddpm_matches_diffusers(config, num_inference_steps):
    step_parity(fd.DDPMScheduler(**config), diffusers.DDPMScheduler(**config), num_inference_steps)


def test_ddpm_fixed_large_log_is_glides_log_variance():
    # diffusers 0.42 evaluates log(beta) ** 0.5 (NaN); the log-variance log(beta) means std = sqrt(beta)
    theirs = diffusers.DDPMScheduler(variance_type="fixed_large")
    ours = fd.DDPMScheduler(variance_type="fixed_large_log")
    step_parity(ours, theirs, 5)


def test_ddpm_full_loop_and_per_sample_generators():
    config = {"prediction_type": "v_prediction", "clip_sample": False}
    out_a = full_loop(diffusers.DDPMScheduler(**config), 8)
    out_b = full_loop(fd.DDPMScheduler(**config), 8)
    assert_close(out_b, out_a, atol=1e-5 * float(out_a.abs().max()), rtol=1e-4)
    step_parity(fd.DDPMScheduler(), diffusers.DDPMScheduler(), 3, batch_gen=True)


def test_ddpm_custom_timesteps():
    theirs, ours = diffusers.DDPMScheduler(), fd.DDPMScheduler()
    theirs.set_timesteps(timesteps=[900, 500, 123, 7])
    ours.set_timesteps(timesteps=[900, 500, 123, 7])
    x, gen_a, gen_b = torch.randn(SHAPE), torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    for t in theirs.timesteps:
        m = fake_model(x, t)
        a = theirs.step(m, t, x, generator=gen_a)
        close(ours.step(m, t, x, generator=gen_b).prev_sample, a.prev_sample, f"t={int(t)}")
        x = a.prev_sample


DDIM_CASES = [
    ({}, {}),
    ({}, {"eta": 1.0}),
    ({"clip_sample": False, "set_alpha_to_one": False}, {}),
    ({"clip_sample": False, "set_alpha_to_one": False}, {"eta": 0.3}),
    ({"prediction_type": "v_prediction", "beta_schedule": "scaled_linear"}, {"eta": 0.5, "use_clipped_model_output": True}),
    ({"prediction_type": "sample"}, {"eta": 1.0}),
    ({"prediction_type": "sample", "clip_sample_range": 0.7}, {"use_clipped_model_output": True}),
    ({"timestep_spacing": "trailing", "steps_offset": 1}, {}),
    ({"timestep_spacing": "linspace", "beta_schedule": "squaredcos_cap_v2"}, {"eta": 1.0}),
    ({"steps_offset": 1, "set_alpha_to_one": False}, {"eta": 1.0}),
    ({"timestep_spacing": "trailing", "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}, {}),
]


@pytest.mark.parametrize("config,step_kwargs", DDIM_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "-")
@pytest.mark.parametrize("num_inference_steps", [1, 3, 10])
def test_ddim_matches_diffusers(config, step_kwargs, num_inference_steps):
    step_parity(fd.DDIMScheduler(**config), diffusers.DDIMScheduler(**config), num_inference_steps, step_kwargs)


def test_ddim_full_loop_and_variance_noise():
    out_a = full_loop(diffusers.DDIMScheduler(clip_sample=False), 6, {"eta": 1.0})
    out_b = full_loop(fd.DDIMScheduler(clip_sample=False), 6, {"eta": 1.0})
    assert_close(out_b, out_a, atol=1e-5 * float(out_a.abs().max()), rtol=1e-4)
    theirs, ours = diffusers.DDIMScheduler(), fd.DDIMScheduler()
    theirs.set_timesteps(5)
    ours.set_timesteps(5)
    x, z = torch.randn(SHAPE), torch.randn(SHAPE)
    t = theirs.timesteps[2]
    expected = theirs.step(fake_model(x, t), t, x, eta=0.7, variance_noise=z).prev_sample
    close(ours.step(fake_model(x, t), t, x, eta=0.7, variance_noise=z).prev_sample, expected, "variance_noise")


def test_ddim_per_sample_timesteps():
    theirs, ours = diffusers.DDIMScheduler(), fd.DDIMScheduler()
    theirs.set_timesteps(10)
    ours.set_timesteps(10)
    x = torch.randn(SHAPE)
    ts = torch.tensor([901, 101])
    m = fake_model(x, 500)
    out = ours.step(m, ts, x)
    for b in range(SHAPE[0]):
        ref = theirs.step(m[b:b + 1], int(ts[b]), x[b:b + 1])
        close(out.prev_sample[b:b + 1], ref.prev_sample, f"sample {b}")
        close(out.pred_original_sample[b:b + 1], ref.pred_original_sample, f"x0 {b}")


DPM_CONFIGS = [
    {},
    {"solver_order": 1},
    {"solver_type": "heun"},
    {"algorithm_type": "sde-dpmsolver++"},
    {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun", "solver_order": 2},
    {"algorithm_type": "sde-dpmsolver++", "solver_order": 1},
    {"final_sigmas_type": "sigma_min", "lower_order_final": False},
    {"final_sigmas_type": "sigma_min", "euler_at_final": True},
    {"lower_order_final": False},
    {"prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    {"prediction_type": "sample", "timestep_spacing": "leading", "steps_offset": 1},
    {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "timestep_spacing": "trailing"},
]


@pytest.mark.parametrize("config", DPM_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("num_inference_steps", [1, 2, 5, 16])
def test_dpm_matches_diffusers(config, num_inference_steps):
    ours = fd.DPMSolverMultistepScheduler(**config)
    step_parity(ours, diffusers.DPMSolverMultistepScheduler(**config), num_inference_steps)
    assert all(x.dtype == torch.float32 for x in ours.model_outputs if x is not None)


def test_dpm_full_loop_and_begin_index():
    out_a = full_loop(diffusers.DPMSolverMultistepScheduler(), 8)
    out_b = full_loop(fd.DPMSolverMultistepScheduler(), 8)
    assert_close(out_b, out_a, atol=1e-5 * float(out_a.abs().max()), rtol=1e-4)
    # starting mid-schedule: the first step's position comes from its timestep, or set_begin_index
    for use_begin in [False, True]:
        theirs, ours = diffusers.DPMSolverMultistepScheduler(), fd.DPMSolverMultistepScheduler()
        theirs.set_timesteps(10)
        ours.set_timesteps(10)
        if use_begin:
            theirs.set_begin_index(4)
            ours.set_begin_index(4)
        x = torch.randn(SHAPE)
        for t in theirs.timesteps[4:7]:
            m = fake_model(x, t)
            a = theirs.step(m, t, x)
            close(ours.step(m, t, x).prev_sample, a.prev_sample, f"t={int(t)}")
            x = a.prev_sample
        assert ours.step_index == theirs.step_index == 7


def test_from_config_of_a_diffusers_scheduler():
    theirs = diffusers.DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, steps_offset=1,
                                     prediction_type="v_prediction")
    ours = fd.DDIMScheduler.from_config(theirs.config)
    assert ours.config.steps_offset == 1 and ours.config["prediction_type"] == "v_prediction"
    assert torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)
    step_parity(ours, theirs, 4, {"eta": 1.0})
    # a DDPM config works for DDIM (unused keys ignored), overrides win
    ddpm_config = diffusers.DDPMScheduler(variance_type="fixed_large", beta_end=0.03).config
    ours = fd.DDIMScheduler.from_config(ddpm_config, clip_sample=False)
    assert ours.config.beta_end == 0.03 and ours.config.clip_sample is False
    # DDPM's own keys stay in the config, unused, for later conversions (as diffusers keeps them)
    assert ours.config.variance_type == "fixed_large" and "variance_type" not in inspect.signature(fd.DDIMScheduler).parameters
    dpm = fd.DPMSolverMultistepScheduler.from_config(dict(ddpm_config), solver_order=1)
    assert dpm.config.solver_order == 1 and dpm.order == 1
    with pytest.raises(TypeError):
        ours.config.clip_sample = True
    twin = copy.deepcopy(ours)  # pipelines copy schedulers
    assert twin.config == ours.config and torch.equal(twin.alphas_cumprod, ours.alphas_cumprod)
    with pytest.raises(TypeError):
        fd.DDIMScheduler.from_config([("clip_sample", False)])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["DDIMScheduler", "DPMSolverMultistepScheduler"])
def test_low_precision_steps(kind, dtype):
    """Half-precision samples: fastgen's error against diffusers' float64 twin stays within twice
    diffusers' own error in that dtype (it computes in float32 and keeps the DPM state float32)."""
    config = {"algorithm_type": "sde-dpmsolver++"} if kind.startswith("DPM") else {}
    kwargs = {"eta": 1.0} if kind == "DDIMScheduler" else {}
    theirs, ours = getattr(diffusers, kind)(**config), getattr(fd, kind)(**config)
    theirs.set_timesteps(5)
    ours.set_timesteps(5)
    exact = exact_twin(theirs)
    x = torch.randn(SHAPE).to(dtype)
    # the same noise for all three as variance_noise: a generator's float16 stream is not its float32
    # stream rounded on every torch (torch 2.11 differs, seen on the lent GPU machine)
    noise_dtype = dtype if kind == "DDIMScheduler" else torch.float32  # DPM's SDE noise is float32
    for i, t in enumerate(theirs.timesteps):
        m = fake_model(x.float(), t).to(dtype)
        z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2 + i)).to(noise_dtype)
        a = theirs.step(m, t, x, variance_noise=z, **kwargs).prev_sample
        e = exact.step(m.double(), t, x.double(), variance_noise=z.double(), **kwargs).prev_sample
        b = ours.step(m, t, x, variance_noise=z, **kwargs).prev_sample
        assert b.dtype == dtype
        err_theirs = float((a.double() - e).abs().max())
        err_ours = float((b.double() - e).abs().max())
        assert err_ours <= 2 * err_theirs + 1e-3 * float(e.abs().max()), (i, err_ours, err_theirs)
        x = a


def test_save_and_load_config_round_trip(tmp_path):
    ours = fd.DDIMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction", steps_offset=1)
    ours.save_pretrained(tmp_path)
    loaded = fd.DDIMScheduler.from_pretrained(tmp_path).config
    assert {k: v for k, v in loaded.items() if not k.startswith("_")} == {k: v for k, v in ours.config.items()
                                                                          if not k.startswith("_")}
    theirs = diffusers.DDIMScheduler.from_pretrained(tmp_path)  # diffusers reads what fastgen wrote
    assert theirs.config.prediction_type == "v_prediction" and theirs.config.steps_offset == 1
    step_parity(fd.DDIMScheduler.from_pretrained(tmp_path), theirs, 3)


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "ddim-eta1", "dpm"])
def test_diffusers_pipeline_with_fastgen_scheduler(kind):
    unet = tiny_unet()
    if kind == "ddpm":
        pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=100))
        ours, kwargs = fd.DDPMScheduler.from_config(pipe.scheduler.config), {"num_inference_steps": 5}
    elif kind == "dpm":
        pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DPMSolverMultistepScheduler(num_train_timesteps=100))
        ours, kwargs = fd.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config), {"num_inference_steps": 4}
    else:
        pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(num_train_timesteps=100))
        ours = fd.DDIMScheduler.from_config(pipe.scheduler.config)
        kwargs = {"num_inference_steps": 4, "eta": 1.0 if kind == "ddim-eta1" else 0.0}
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images
    pipe.scheduler = ours
    got = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images
    assert_close(torch.from_numpy(got), torch.from_numpy(expected), atol=2e-5, rtol=1e-5, name="images")


@pytest.mark.parametrize("cls", [fd.DDPMScheduler, fd.DDIMScheduler])
def test_outputs_tuple_and_x0(cls):
    sched = cls()
    sched.set_timesteps(5)
    x = torch.randn(SHAPE)
    t = sched.timesteps[1]
    m = fake_model(x, t)
    torch.manual_seed(7)
    out = sched.step(m, t, x)
    torch.manual_seed(7)
    prev, x0 = sched.step(m, t, x, return_dict=False)
    assert torch.equal(out.prev_sample, prev) and torch.equal(out[0], prev) and torch.equal(out["prev_sample"], prev)
    assert torch.equal(out.pred_original_sample, x0)
    assert out.pred_original_sample.dtype == x.dtype and len(out) == 2 and out.keys() == ("prev_sample", "pred_original_sample")
    # x0 is computed in the step: writing into the inputs afterwards, even through .data (which
    # bumps no version counter), cannot change it
    expected = out.pred_original_sample.clone()
    x.data.add_(5.0)
    m.data.add_(5.0)
    assert torch.equal(out.pred_original_sample, expected)
    with torch.inference_mode():
        got = sched.step(fake_model(x, t), t, x)
    assert got.pred_original_sample is not None
    # opting out skips x0's write pass (fd.sample does, on its private copy)
    sched.compute_pred_original_sample = False
    assert sched.step(m, t, x).pred_original_sample is None


def test_dpm_output_is_a_1_tuple():
    sched = fd.DPMSolverMultistepScheduler()
    sched.set_timesteps(3)
    x = torch.randn(SHAPE)
    out = sched.step(fake_model(x, 999), sched.timesteps[0], x, return_dict=False)
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == SHAPE


@pytest.mark.parametrize("cls", [fd.DDPMScheduler, fd.DDIMScheduler, fd.DPMSolverMultistepScheduler])
def test_no_generator_on_cpu_draws_from_torch_default_generator(cls):
    kwargs = {"eta": 1.0} if cls is fd.DDIMScheduler else {}
    extra = {"algorithm_type": "sde-dpmsolver++"} if cls is fd.DPMSolverMultistepScheduler else {}
    theirs, ours = getattr(diffusers, cls.__name__)(**extra), cls(**extra)
    theirs.set_timesteps(4)
    ours.set_timesteps(4)
    x = torch.randn(SHAPE)
    for t in theirs.timesteps[:3]:
        m = fake_model(x, t)
        torch.manual_seed(int(t))
        a = theirs.step(m, t, x, **kwargs)
        torch.manual_seed(int(t))
        close(ours.step(m, t, x, **kwargs).prev_sample, a.prev_sample, f"t={int(t)}")
        x = a.prev_sample


def test_add_noise_get_velocity_and_misc_api():
    theirs, ours = diffusers.DDPMScheduler(beta_schedule="scaled_linear"), fd.DDPMScheduler(beta_schedule="scaled_linear")
    x0, noise, t = torch.randn(SHAPE), torch.randn(SHAPE), torch.tensor([3, 870])
    close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), "add_noise")
    close(ours.get_velocity(x0, noise, t), theirs.get_velocity(x0, noise, t), "get_velocity")
    assert ours.scale_model_input(x0, 5) is x0 and ours.init_noise_sigma == 1.0 and len(ours) == 1000
    dpm_a, dpm_b = diffusers.DPMSolverMultistepScheduler(), fd.DPMSolverMultistepScheduler()
    dpm_a.set_timesteps(10)
    dpm_b.set_timesteps(10)
    t = dpm_a.timesteps[[1, 7]]  # diffusers looks scheduled timesteps up in its sigmas: the same abar_t
    close(dpm_b.add_noise(x0, noise, t), dpm_a.add_noise(x0, noise, t), "dpm add_noise")


@pytest.mark.parametrize("cls", [fd.DDPMScheduler, fd.DDIMScheduler, fd.DPMSolverMultistepScheduler])
def test_nan_model_output_does_not_crash(cls):
    sched = cls()
    sched.set_timesteps(3)
    x = torch.randn(SHAPE)
    m = fake_model(x, 0)
    m[0, 0, 0, 0] = float("nan")
    for t in sched.timesteps:
        x = sched.step(m, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    assert x[0].isnan().any() and x.shape == SHAPE


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"prediction_type must be one of \('epsilon', 'sample', 'v_prediction'\)"):
        fd.DDIMScheduler(prediction_type="eps")
    with pytest.raises(ValueError, match="variance_type must be one of.*fixed_small_log"):
        fd.DDPMScheduler(variance_type="small")
    with pytest.raises(NotImplementedError, match="learned_range"):
        fd.DDPMScheduler(variance_type="learned_range")
    with pytest.raises(ValueError, match="beta_schedule must be one of.*squaredcos_cap_v2"):
        fd.DDPMScheduler(beta_schedule="cosine")
    with pytest.raises(ValueError, match="timestep_spacing must be one of.*trailing"):
        fd.DDIMScheduler(timestep_spacing="even")
    with pytest.raises(ValueError, match="algorithm_type must be one of.*sde-dpmsolver\\+\\+"):
        fd.DPMSolverMultistepScheduler(algorithm_type="dpm")
    with pytest.raises(NotImplementedError, match="thresholding"):
        fd.DDIMScheduler(thresholding=True)
    x = torch.randn(SHAPE)
    for cls in [fd.DDPMScheduler, fd.DDIMScheduler, fd.DPMSolverMultistepScheduler]:
        sched = cls()
        if cls is not fd.DDPMScheduler:  # DDPM steps over the training timesteps (test_ddpm_step_without_set_timesteps)
            with pytest.raises(ValueError, match="before set_timesteps"):
                sched.step(x, 10, x)
        with pytest.raises(ValueError, match=r"num_inference_steps must lie in \[1, num_train_timesteps=1000\]"):
            sched.set_timesteps(0)
        with pytest.raises(ValueError, match="num_inference_steps must lie in"):
            sched.set_timesteps(1001)
    sched = fd.DDIMScheduler()
    sched.set_timesteps(4)
    with pytest.raises(ValueError, match=r"timestep must lie in \[0, 999\]"):
        sched.step(x, 1000, x)
    with pytest.raises(ValueError, match="eta must be a number >= 0"):
        sched.step(x, 999, x, eta=-1.0)
    with pytest.raises(ValueError, match="model_output must have the shape"):
        sched.step(x[:1], 999, x)
    dpm = fd.DPMSolverMultistepScheduler()
    dpm.set_timesteps(1)
    dpm.step(x, 999, x)
    with pytest.raises(ValueError, match="call set_timesteps again"):
        dpm.step(x, 999, x)


@pytest.mark.parametrize("cls", [fd.DDPMScheduler, fd.DDIMScheduler, fd.DPMSolverMultistepScheduler])
def test_in_kernel_philox_noise_stream(cls, monkeypatch):
    """The accelerators' noise source, run on CPU (cpu_noise="philox"): step k draws Philox normals
    at offset k * numel of the pinned seed, and the state advances in place."""
    from diffusers.schedulers import scheduling_ddpm

    kwargs = {"eta": 1.0} if cls is fd.DDIMScheduler else {}
    config = {"algorithm_type": "sde-dpmsolver++"} if cls is fd.DPMSolverMultistepScheduler else {}
    theirs, ours = getattr(diffusers, cls.__name__)(**config), cls(**config)
    ours.cpu_noise = "philox"
    ours.set_noise_seed(2**40 + 5)
    theirs.set_timesteps(4)
    ours.set_timesteps(4)
    assert ours.noise_state is None  # made on the samples' device by the first noisy step
    x, state = torch.randn(SHAPE), None
    for k, t in enumerate(theirs.timesteps[:3]):
        m = fake_model(x, t)
        z = _rng.philox_normal_ref(torch.tensor([2**40 + 5, k * x.numel()]), x.numel()).view(SHAPE)
        if cls is fd.DDPMScheduler:  # diffusers' DDPM step takes no noise tensor: hand it z as its draw
            monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda *args, z=z, **kw: z)
            a = theirs.step(m, t, x)
        else:
            a = theirs.step(m, t, x, variance_noise=z, **kwargs)
        close(ours.step(m, t, x, **kwargs).prev_sample, a.prev_sample, f"step {k}")
        state = state if state is not None else ours.noise_state
        assert ours.noise_state is state and int(state[1]) == (k + 1) * x.numel()
        x = a.prev_sample
    ours.set_timesteps(4)  # the pinned seed restarts its stream, in place
    assert ours.noise_state is state and state.tolist() == [2**40 + 5, 0]


def test_scheduled_timestep_views_are_named_without_reading_them():
    sched = fd.DDIMScheduler()
    sched.set_timesteps(10)
    ts = sched.timesteps
    assert [sched._scheduled_value(t) for t in ts] == ts.tolist()  # the pipelines' loop
    assert sched._scheduled_value(ts[3:][2]) == int(ts[5])  # img2img's timesteps[t_start:]
    assert sched._scheduled_value(ts[4].clone()) is None  # anything else must be read
    sched.timesteps = ts.flip(0)  # a reassigned schedule is not trusted
    assert sched._scheduled_value(sched.timesteps[0]) is None


@pytest.mark.skipif("cuda" not in DEVICES, reason="the in-kernel Philox noise of the schedulers runs on CUDA tensors")
@pytest.mark.parametrize("cls", [fd.DDPMScheduler, fd.DDIMScheduler])
def test_cuda_in_kernel_noise_advances_on_device(cls):
    kwargs = {"eta": 1.0} if cls is fd.DDIMScheduler else {}
    sched = cls(clip_sample=False)
    sched.set_noise_seed(1234)
    sched.set_timesteps(10, device="cuda")
    x = torch.zeros(4, 3, 16, 16, device="cuda")
    t = sched.timesteps[3]
    a = sched.step(x, t, x, **kwargs).prev_sample
    state = sched.noise_state
    assert state.device.type == "cuda" and int(state[1]) == x.numel()
    b = sched.step(x, t, x, **kwargs).prev_sample
    assert not torch.equal(a, b)  # the offset moved: fresh noise
    assert 0.9 < float(a.std() / b.std()) < 1.1
    sched.set_timesteps(10, device="cuda")  # same pinned seed: the stream restarts, in place
    assert sched.noise_state is state and int(state[1]) == 0
    assert torch.equal(sched.step(x, sched.timesteps[3], x, **kwargs).prev_sample, a)
    # a generator still reproduces diffusers number for number on CUDA
    theirs = getattr(diffusers, cls.__name__)(clip_sample=False)
    theirs.set_timesteps(10, device="cuda")
    m = fake_model(x + 1, t)
    ref = theirs.step(m, t, x + 1, generator=torch.Generator("cuda").manual_seed(0), **kwargs).prev_sample
    got = sched.step(m, t, x + 1, generator=torch.Generator("cuda").manual_seed(0), **kwargs).prev_sample
    close(got, ref, "cuda generator")


@pytest.mark.parametrize("impl", [i for i in ("cpu", "reference", "triton") if i in impls_on("cpu")])
def test_infinite_model_output_with_clipping_stays_finite(impl):
    """An fp16 overflow (+-inf in the model output) with clip_sample: x0 is clamped, and the step's
    unused terms (coefficient 0) must not turn 0 * inf into NaN; diffusers' result is finite."""
    theirs, ours = diffusers.DDPMScheduler(), fd.DDPMScheduler()
    ours.impl = impl
    theirs.set_timesteps(10)
    ours.set_timesteps(10)
    x, m = torch.randn(SHAPE), torch.randn(SHAPE)
    m[0, 0, 0, 0], m[1, 2, 3, 3] = float("inf"), -float("inf")
    t = theirs.timesteps[3]
    expected = theirs.step(m, t, x, generator=torch.Generator().manual_seed(0))
    got = ours.step(m, t, x, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(got.prev_sample).all()
    close(got.prev_sample, expected.prev_sample, "prev_sample")
    close(got.pred_original_sample, expected.pred_original_sample, "x0")


def test_timestep_and_schedule_errors():
    x = torch.randn(SHAPE)
    for cls in (fd.DDPMScheduler, fd.DDIMScheduler):
        sched = cls()
        sched.set_timesteps(10)
        for bad in (True, torch.tensor(True), torch.tensor(899.7), 899.0):
            with pytest.raises(TypeError, match="timestep must be an int or an integer tensor"):
                sched.step(x, bad, x)
    dpm = fd.DPMSolverMultistepScheduler()
    for bad in ([5, 5, 3], [3, 5, 7], [9.5, 3]):
        with pytest.raises(ValueError, match="strictly descending integers"):
            dpm.set_timesteps(timesteps=bad)


def test_ddpm_step_without_set_timesteps():
    """diffusers' DDPM steps over every training timestep before set_timesteps (its own tests loop
    reversed(range(T)) that way); so does fastgen's."""
    theirs, ours = diffusers.DDPMScheduler(num_train_timesteps=50), fd.DDPMScheduler(num_train_timesteps=50)
    x = torch.randn(SHAPE)
    gens = [torch.Generator().manual_seed(1) for _ in range(2)]
    a = b = x
    for t in reversed(range(50)):
        a = theirs.step(fake_model(a, t), t, a, generator=gens[0]).prev_sample
        b = ours.step(fake_model(b, t), t, b, generator=gens[1]).prev_sample
    close(b, a, "loop over the training timesteps")


@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler",
                                  "EulerAncestralDiscreteScheduler", "UniPCMultistepScheduler"])
def test_compiled_denoising_loop(name, monkeypatch):
    """torch.compile(fullgraph=True) of a whole loop (scheduler + a plain model), with the timestep
    a traced tensor; with inductor's fallback_random the noise, and so the result, equals eager."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "fallback_random", True)
    torch._dynamo.reset()
    sched = getattr(fd, name)(num_train_timesteps=100)
    sched.set_timesteps(3)

    def loop(x):
        for t in sched.timesteps:
            x = sched.step(0.3 * x + torch.tanh(x), t, x).prev_sample
        return x

    x = torch.randn(1, 1, 2, 2)
    torch.manual_seed(5)
    expected = loop(x)
    sched.set_timesteps(3)
    torch.manual_seed(5)
    got = torch.compile(loop, fullgraph=True)(x)
    close(got, expected, f"compiled {name} loop")


@pytest.mark.parametrize("name", fd.SCHEDULERS)
def test_set_timesteps_with_a_device_prefetches_every_table(name, monkeypatch):
    """After set_timesteps(device=...) a whole loop copies nothing to the device: inside a captured
    CUDA graph (fd.sample) a host-to-device copy is an error, and outside one a synchronisation."""
    sched = getattr(fd, name)(num_train_timesteps=100)
    sched.set_timesteps(4, device="cpu")
    misses = []
    real_on = type(sched)._on

    def spy(self, key, host, device):
        if (key, torch.device(device)) not in self._device_cache:
            misses.append(key)
        return real_on(self, key, host, device)

    monkeypatch.setattr(type(sched), "_on", spy)
    x = torch.randn(1, 1, 2, 2)
    scale = getattr(sched, "scale_model_input", None)
    for t in sched.timesteps:
        model_input = x if scale is None else scale(x, t)
        x = sched.step(0.3 * model_input + torch.tanh(model_input), t, x).prev_sample
    assert misses == [], f"{name} copied {misses} to the device inside the loop"


def test_edm_dpm_thresholding_with_a_device_matches_diffusers():
    """set_timesteps(device=...) once put the x0 table under the step table's cache key, so
    thresholding read the wrong rows (off by 1.9 against diffusers)."""
    kw = dict(thresholding=True, sample_max_value=1.5)
    theirs, ours = diffusers.EDMDPMSolverMultistepScheduler(**kw), fd.EDMDPMSolverMultistepScheduler(**kw)
    theirs.set_timesteps(4, device="cpu")
    ours.set_timesteps(4, device="cpu")
    a = b = torch.randn(SHAPE) * float(theirs.init_noise_sigma)
    for t_theirs, t_ours in zip(theirs.timesteps, ours.timesteps):
        a = theirs.step(fake_model(theirs.scale_model_input(a, t_theirs), 0), t_theirs, a).prev_sample
        b = ours.step(fake_model(ours.scale_model_input(b, t_ours), 0), t_ours, b).prev_sample
    close(b, a, "EDM DPM-Solver with thresholding")
