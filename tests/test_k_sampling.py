"""k-diffusion-style samplers (fastgen.diffusion.k_sampling) against the algorithms written out
plainly in float64 (Karras et al. 2022 Alg. 1-2, Lu et al. 2022 DPM-Solver++(2M)), and Euler
against diffusers' EulerDiscreteScheduler given the same sigmas."""
import math

import pytest
import torch

from fastgen.diffusion import k_sampling as K
from helpers import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")


def denoiser(x, sigma):
    """A smooth toy denoiser: shrinks towards tanh(x), more at high noise."""
    s = sigma.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return torch.tanh(x) / (1 + s**2) + 0.1 * x / (1 + s)


def ref_loop(kind, x, sigmas, noises=None):
    s = [float(v) for v in sigmas]
    x, old, it = x.double(), None, iter(noises or [])
    for i in range(len(s) - 1):
        den = denoiser(x, torch.full((x.shape[0],), s[i], dtype=torch.float64))
        d, dt = (x - den) / s[i], s[i + 1] - s[i]
        if kind == "euler":
            x = x + d * dt
        elif kind == "euler_ancestral":
            down, up = K.ancestral_step(s[i], s[i + 1])
            x = x + d * (down - s[i])
            if up > 0:
                x = x + next(it).double() * up
        elif kind == "heun":
            x2 = x + d * dt
            if s[i + 1] > 0:
                d2 = (x2 - denoiser(x2, torch.full((x.shape[0],), s[i + 1], dtype=torch.float64))) / s[i + 1]
                x2 = x + (d + d2) / 2 * dt
            x = x2
        else:  # dpmpp_2m, in t = -log(sigma)
            if s[i + 1] == 0:
                x = den
            else:
                h = math.log(s[i]) - math.log(s[i + 1])
                if old is None:
                    x = s[i + 1] / s[i] * x - math.expm1(-h) * den
                else:
                    r = (math.log(s[i - 1]) - math.log(s[i])) / h
                    x = s[i + 1] / s[i] * x - math.expm1(-h) * ((1 + 1 / (2 * r)) * den - old / (2 * r))
            old = den
    return x


@pytest.mark.parametrize("kind", ["euler", "euler_ancestral", "heun", "dpmpp_2m"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_samplers_match_the_algorithms(kind, dtype):
    sigmas = K.get_sigmas_karras(6, 0.03, 14.6)
    x = (torch.randn(2, 3, 5, 5) * sigmas[0]).to(dtype)
    noises = [torch.randn(2, 3, 5, 5).to(dtype) for _ in range(len(sigmas))]
    kwargs = {}
    if kind == "euler_ancestral":
        it = iter(noises)
        kwargs["noise_sampler"] = lambda _x: next(it)
    seen = []
    got = getattr(K, f"sample_{kind}")(lambda a, s: denoiser(a.float(), s).to(a.dtype), x, sigmas,
                                       callback=lambda info: seen.append(info["i"]), **kwargs)
    expected = ref_loop(kind, x, sigmas, noises)
    atol = 1e-4 if dtype == torch.float32 else 3e-2
    assert got.dtype == dtype and seen == list(range(len(sigmas) - 1))
    assert_close(got.double(), expected, atol=atol, rtol=atol, name=kind)


def test_euler_equals_diffusers_euler_with_the_same_sigmas():
    diffusers = pytest.importorskip("diffusers")
    sigmas = K.get_sigmas_karras(5, 0.05, 10.0)
    sched = diffusers.EulerDiscreteScheduler(prediction_type="sample")
    sched.set_timesteps(sigmas=sigmas.tolist())  # diffusers takes the whole schedule, final sigma included
    assert torch.equal(sched.sigmas, sigmas)
    x = torch.randn(2, 3, 4, 4) * sigmas[0]
    theirs = x
    for t, sigma in zip(sched.timesteps, sigmas[:-1]):
        theirs = sched.step(denoiser(theirs, sigma.expand(2)), t, theirs).prev_sample
    ours = K.sample_euler(denoiser, x, sigmas)
    assert_close(ours, theirs, atol=1e-5, rtol=1e-5, name="euler vs diffusers")


def test_bad_input():
    x = torch.randn(1, 2)
    with pytest.raises(ValueError, match="descending"):
        K.sample_euler(denoiser, x, [1.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="descending"):
        K.sample_euler(denoiser, x, [1.0])
    with pytest.raises(TypeError, match="floating tensor"):
        K.sample_euler(denoiser, torch.ones(1, 2, dtype=torch.long), [1.0, 0.0])
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        K.get_sigmas_karras(4, 2.0, 1.0)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        K.sample_euler_ancestral(denoiser, x, [1.0, 0.0], eta=-1.0)
