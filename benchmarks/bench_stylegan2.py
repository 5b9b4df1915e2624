"""One StyleGAN2 training step (a D step with R1, then a G step) with fastgen's fused bias_act and
upfirdn2d vs the same model on the ops' pure-torch references, side by side.

Issue 11's GPU target: the fused step >= 1.3x the reference step (the speedup column). On a CPU both
rows run the references (the kernels are Triton), so the ratio there is ~1 by construction and
says nothing; the row exists so the suite runs everywhere.

Model: config-F-like at 64x64 with StyleGAN2's channel formula scaled down (channel_base 8192,
channel_max 256), batch 16 on a GPU; a tiny 8x8 model on a CPU. FASTGEN_BENCH_DTYPE is ignored:
the step trains in float32, as StyleGAN2 does outside its fp16 layers.
"""
import functools

import pytest
import torch
from _suite import DEVICE, run_entry

from fastgen import _impl, benchmarking
from fastgen.gan.losses import discriminator_loss, generator_loss
from fastgen.gan.penalty import gradient_penalty
from fastgen.models import StyleGAN2Discriminator, StyleGAN2Generator

GPU = DEVICE.type == "cuda"
CONFIG = (dict(resolution=64, channel_base=8192, channel_max=256, z_dim=256, batch=16) if GPU else
          dict(resolution=8, channel_base=256, channel_max=32, z_dim=32, batch=8))
NAMES = ["references", "fastgen[auto]"]


def _step(G, D, g_opt, d_opt, real, z):
    """StyleGAN2's losses: non-saturating with R1 (gamma 10) on every D step, then the G step."""
    d_opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        fake = G(z)
    loss = discriminator_loss(D(real), D(fake), "ns") + gradient_penalty(D, real, kind="r1", weight=10.0)
    loss.backward()
    d_opt.step()
    g_opt.zero_grad(set_to_none=True)
    generator_loss(D(G(z)), "ns").backward(inputs=list(G.parameters()))
    g_opt.step()


@functools.lru_cache(maxsize=None)
def comparison() -> benchmarking.Comparison:
    torch.manual_seed(0)
    c = CONFIG
    G = StyleGAN2Generator(z_dim=c["z_dim"], w_dim=c["z_dim"], img_resolution=c["resolution"], img_channels=3,
                           channel_base=c["channel_base"], channel_max=c["channel_max"]).to(DEVICE)
    D = StyleGAN2Discriminator(c["resolution"], 3, channel_base=c["channel_base"],
                               channel_max=c["channel_max"]).to(DEVICE)
    g_opt = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.0, 0.99))
    d_opt = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.0, 0.99))
    real = torch.randn(c["batch"], 3, c["resolution"], c["resolution"], device=DEVICE)
    z = torch.randn(c["batch"], c["z_dim"], device=DEVICE)
    label = f"stylegan2 G+D step (R1) {c['resolution']}x{c['resolution']} batch {c['batch']} float32"
    cmp = benchmarking.Comparison(label, baseline="references", device=DEVICE)

    def with_impl(impl):
        def run():
            previous = _impl.get_impl()
            _impl.set_impl(impl)
            try:
                _step(G, D, g_opt, d_opt, real, z)
            finally:
                _impl.set_impl(previous)
        return run

    cmp.add("references", with_impl("reference"), note="bias_act / upfirdn2d as pure torch")
    fused = with_impl("auto")
    fused()  # kernel compilation outside the timing
    note = "" if GPU else "no GPU: auto runs the references too, so this ratio says nothing"
    cmp.add("fastgen[auto]", fused, note=note)
    return cmp


@pytest.mark.parametrize("impl", NAMES)
def test_stylegan2_step(benchmark, impl):
    run_entry(benchmark, comparison(), impl)
