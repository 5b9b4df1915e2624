"""Configuration semantics and pipeline citizenship of the drop-in schedulers, against diffusers:
the config-conversion matrix (every source config, with and without omitted keys, into every
fastgen scheduler, equals diffusers' conversion), from_config / save / load, diffusers pipelines
that take, save and reload a fastgen scheduler, and the schedulers without diffusers installed."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import fastgen.diffusion as fd
from fastgen.diffusion.scheduling_base import SchedulerBase
from helpers import assert_close
from scheduler_helpers import tiny_unet

diffusers = pytest.importorskip("diffusers")

# Files as the hub serves them, each omitting keys its class gained later (so loading records
# them in _use_default_values): Stable Diffusion 1.5's PNDM, google/ddpm-cifar10-32's DDPM, SDXL's Euler.
HUB_CONFIGS = {
    "sd15-pndm": {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
                  "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
                  "clip_sample": False},
    "ddpm-cifar10": {"_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1", "beta_end": 0.02,
                     "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": True,
                     "num_train_timesteps": 1000, "trained_betas": None, "variance_type": "fixed_small"},
    "sdxl-euler": {"_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.19.0.dev0", "beta_end": 0.012,
                   "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
                   "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
                   "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
                   "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False},
}
# default-constructed diffusers schedulers: every key counts as omitted
DEFAULT_SOURCES = ["DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
                   "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "LMSDiscreteScheduler"]


def fastgen_schedulers():
    return sorted((c for c in vars(fd).values() if isinstance(c, type) and issubclass(c, SchedulerBase)
                   and c is not SchedulerBase and hasattr(diffusers, c.__name__)), key=lambda c: c.__name__)


def source_config(name):
    if name in HUB_CONFIGS:
        config = HUB_CONFIGS[name]
        return getattr(diffusers, config["_class_name"]).from_config(config).config
    return getattr(diffusers, name)().config


def normalised(config):
    """A config as comparable data: _use_default_values as a set (diffusers builds it from a set)."""
    out = dict(config)
    if "_use_default_values" in out:
        out["_use_default_values"] = sorted(out["_use_default_values"])
    return out


def timesteps_of(scheduler, n=10):
    scheduler.set_timesteps(n)
    return np.asarray(scheduler.timesteps, dtype=np.float64)


@pytest.mark.parametrize("source", list(HUB_CONFIGS) + DEFAULT_SOURCES)
@pytest.mark.parametrize("cls", fastgen_schedulers(), ids=lambda c: c.__name__)
def test_conversion_matrix(cls, source):
    """fd.X.from_config(any config) == diffusers.X.from_config(same config): config and timesteps."""
    config = source_config(source)
    theirs = getattr(diffusers, cls.__name__).from_config(config)
    ours = cls.from_config(config)
    assert normalised(ours.config) == normalised(theirs.config)
    np.testing.assert_array_equal(timesteps_of(ours), timesteps_of(theirs))


def test_omitted_keys_take_the_new_class_defaults():
    """The silent-difference bug: SD 1.5's PNDM file has no timestep_spacing; PNDM's default is
    'leading' but DPMSolverMultistep's is 'linspace', which the converted scheduler must use."""
    pndm = diffusers.PNDMScheduler.from_config(HUB_CONFIGS["sd15-pndm"])
    assert "timestep_spacing" in pndm.config["_use_default_values"]
    ours = fd.DPMSolverMultistepScheduler.from_config(pndm.config)
    assert ours.config.timestep_spacing == "linspace"
    assert timesteps_of(ours)[:3].tolist() == [999, 899, 799]
    # constructing: keywords not passed are recorded (positional ones too, as diffusers does)
    assert sorted(fd.DDIMScheduler(1000, clip_sample=False).config["_use_default_values"]) == sorted(
        diffusers.DDIMScheduler(1000, clip_sample=False).config["_use_default_values"])
    assert "_use_default_values" not in fd.DDPMScheduler.from_config(dict(fd.DDPMScheduler().config, **{
        "_use_default_values": []}), **{k: v for k, v in fd.DDPMScheduler().config.items()
                                         if not k.startswith("_")}).config


def test_from_config_overrides_unused_and_hidden_keys():
    src = diffusers.DDPMScheduler(variance_type="fixed_large", beta_end=0.03)
    for module in (fd, diffusers):
        sched, unused = module.DDIMScheduler.from_config(src.config, return_unused_kwargs=True, clip_sample=False,
                                                         not_an_argument=3)
        assert sched.config.clip_sample is False and sched.config.beta_end == 0.03
        assert unused["not_an_argument"] == 3 and unused["variance_type"] == "fixed_large"
        assert sched.config.variance_type == "fixed_large"  # kept for later conversions
        assert sched.config.get("_class_name") is None or sched.config["_class_name"] == "DDIMScheduler"
    ours = fd.DDIMScheduler.from_config(dict(src.config, _class_name="DDPMScheduler"))
    assert ours.config._class_name == "DDIMScheduler"
    with pytest.raises(TypeError, match="read-only"):
        ours.config["clip_sample"] = False
    with pytest.raises(TypeError, match="read-only"):
        ours.config.update(clip_sample=False)
    with pytest.raises(TypeError, match="config must be a mapping"):
        fd.DDIMScheduler.from_config([("clip_sample", False)])
    with pytest.raises(ValueError, match="needs a config"):
        fd.DDIMScheduler.from_config()
    with pytest.warns(FutureWarning, match="config.num_train_timesteps"):
        assert ours.num_train_timesteps == 1000  # diffusers' deprecated attribute access
    assert fd.DDIMScheduler in ours.compatibles and fd.DDPMScheduler in ours.compatibles


def test_save_load_config_and_subfolder(tmp_path):
    ours = fd.DPMSolverMultistepScheduler(beta_schedule="scaled_linear", solver_order=1)
    ours.save_config(tmp_path / "pipe" / "scheduler")
    assert [p.name for p in (tmp_path / "pipe" / "scheduler").iterdir()] == ["scheduler_config.json"]  # no temp left
    written = json.loads((tmp_path / "pipe" / "scheduler" / "scheduler_config.json").read_text())
    assert written["_class_name"] == "DPMSolverMultistepScheduler" and "_use_default_values" not in written
    config, unused = fd.DDIMScheduler.load_config(tmp_path / "pipe", subfolder="scheduler", return_unused_kwargs=True,
                                                  cache_dir="ignored", foo=1)
    assert config == written and unused == {"foo": 1}
    loaded = fd.DPMSolverMultistepScheduler.from_pretrained(tmp_path / "pipe", subfolder="scheduler", solver_order=2)
    assert loaded.config.solver_order == 2 and loaded.config.beta_schedule == "scaled_linear"
    theirs = diffusers.DPMSolverMultistepScheduler.from_pretrained(tmp_path / "pipe", subfolder="scheduler")
    np.testing.assert_array_equal(timesteps_of(fd.DPMSolverMultistepScheduler.from_pretrained(
        tmp_path / "pipe" / "scheduler" / "scheduler_config.json")), timesteps_of(theirs))
    with pytest.raises(FileNotFoundError, match="no scheduler_config.json"):
        fd.DDIMScheduler.from_pretrained(tmp_path / "pipe")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        fd.DDIMScheduler.from_pretrained(tmp_path / "bad.json")
    with pytest.raises(NotImplementedError, match="push_to_hub"):
        ours.save_pretrained(tmp_path / "x", push_to_hub=True)


def images(pipe, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np", num_inference_steps=4,
               **kwargs).images
    return torch.from_numpy(out)


def test_pipeline_takes_saves_and_reloads_a_fastgen_scheduler(tmp_path):
    unet = tiny_unet()
    expected = images(diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=100)))
    ours = fd.DDPMScheduler(num_train_timesteps=100)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=ours)  # the constructor accepts it
    assert pipe.scheduler is ours
    assert_close(images(pipe), expected, atol=2e-5, rtol=1e-5, name="images")
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["fastgen.diffusion", "DDPMScheduler"]
    reloaded = diffusers.DiffusionPipeline.from_pretrained(tmp_path)
    assert type(reloaded.scheduler) is fd.DDPMScheduler
    assert_close(images(reloaded), expected, atol=2e-5, rtol=1e-5, name="reloaded images")
    # from_pretrained(..., scheduler=<fastgen>) passes diffusers' type check, and diffusers reads the saved file
    swapped = diffusers.DDPMPipeline.from_pretrained(tmp_path, scheduler=fd.DDPMScheduler.from_pretrained(
        tmp_path, subfolder="scheduler"))
    assert_close(images(swapped), expected, atol=2e-5, rtol=1e-5, name="swapped images")
    assert diffusers.DDPMScheduler.from_pretrained(tmp_path, subfolder="scheduler").config.num_train_timesteps == 100


def test_pipeline_attribute_swap_records_the_class():
    pipe = diffusers.DDIMPipeline(unet=tiny_unet(), scheduler=diffusers.DDIMScheduler(num_train_timesteps=100))
    expected = images(pipe, eta=0.0)
    pipe.scheduler = fd.DDIMScheduler.from_config(pipe.scheduler.config)
    assert pipe.config.scheduler == ("fastgen.diffusion", "DDIMScheduler")
    assert_close(images(pipe, eta=0.0), expected, atol=2e-5, rtol=1e-5, name="images")


def test_schedulers_without_diffusers(tmp_path):
    """diffusers stays optional: with it unimportable the schedulers build, convert (with the same
    _use_default_values rule), save, load and step."""
    code = textwrap.dedent(f"""
        import sys, json
        sys.modules["diffusers"] = None  # import diffusers -> ImportError
        import torch
        import fastgen.diffusion as fd
        assert fd.DDIMScheduler.__mro__[1:] == (fd.scheduling_base.SchedulerBase,
                                                fd.scheduler_config.ConfigurableScheduler, object)
        src = fd.DDPMScheduler.from_config(json.loads({json.dumps(HUB_CONFIGS["ddpm-cifar10"])!r}))
        assert "timestep_spacing" in src.config["_use_default_values"]
        dpm = fd.DPMSolverMultistepScheduler.from_config(src.config)
        assert dpm.config.timestep_spacing == "linspace", dpm.config
        dpm.save_pretrained({str(tmp_path)!r})
        again = fd.DPMSolverMultistepScheduler.from_pretrained({str(tmp_path)!r})
        again.set_timesteps(4)
        x = torch.randn(1, 1, 2, 2)
        for t in again.timesteps:
            x = again.step(0.1 * x, t, x).prev_sample
        assert torch.isfinite(x).all()
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_every_scheduler_is_exported_and_benchmarked():
    from fastgen import cli

    assert cli.SCHEDULERS == fd.SCHEDULERS
    assert [c.__name__ for c in fastgen_schedulers()] == sorted(fd.SCHEDULERS)
