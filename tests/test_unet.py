"""fastgen.models.UNet: shapes, timestep forms, class conditioning, scale-shift, the DDPM CIFAR-10
preset's parameter count (diffusers' google/ddpm-cifar10-32, built here from its config with random
weights: nothing is downloaded), and equal outputs after loading a diffusers UNet2DModel's weights
(a small config in several variants, and the full preset once), plus bad input."""
import gc
import io
import weakref

import pytest
import torch

from fastgen.models.unet import UNet
from fastgen.models.unet_diffusers import (DDPM_CIFAR10_DIFFUSERS_CONFIG, convert_diffusers_state_dict,
                                           unet_kwargs_from_diffusers_config)
from helpers import assert_close

diffusers = pytest.importorskip("diffusers", reason="diffusers' UNet2DModel is the reference")
from diffusers import UNet2DModel  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")

DDPM_CIFAR10 = DDPM_CIFAR10_DIFFUSERS_CONFIG
DDPM_CIFAR10_PARAMS = 35_746_307  # "35.7 million parameters": Ho et al. 2020, Appendix B

SMALL = dict(sample_size=16, in_channels=3, out_channels=2, block_out_channels=(16, 32, 32), layers_per_block=1,
             down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
             up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
             norm_num_groups=8, norm_eps=1e-6)


def small_unet(**kw) -> UNet:
    cfg = dict(in_channels=3, out_channels=3, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
               attention_resolutions=(4,), groups=8, image_size=8)
    cfg.update(kw)
    return UNet(**cfg)


def randomize(module):
    """diffusers zero-initialises nothing, but make sure every weight (norms included) is non-trivial."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand_like(p) + 0.5 if p.dim() == 1 else torch.randn_like(p) * 0.1)
    return module


# ---- the preset ----

def test_ddpm_cifar10_parameter_count_equals_diffusers():
    ours = UNet.ddpm_cifar10()
    ref = UNet2DModel(**DDPM_CIFAR10)
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in ref.parameters()) == DDPM_CIFAR10_PARAMS
    # same architecture: the converted state dict has exactly fastgen's keys and shapes
    converted = convert_diffusers_state_dict(ref.state_dict())
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in ours.state_dict().items()}


def test_ddpm_cifar10_outputs_equal_diffusers():
    ref = UNet2DModel(**DDPM_CIFAR10).eval()
    # the preset itself (timestep code, eps, TF-style padding: none of which shows in a parameter count)
    ours = UNet.ddpm_cifar10().eval()
    ours.load_diffusers_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([3, 917])
    with torch.no_grad():
        expected = ref(x, t).sample
        out = ours(x, t)
    assert expected.abs().max() > 0.1  # a random diffusers UNet does not output ~0, so the check means something
    assert_close(out, expected, atol=1e-5, rtol=1e-4)
    converted = UNet.from_diffusers(ref)
    assert not converted.training
    assert all(torch.equal(a, b) for a, b in zip(converted.state_dict().values(), ours.state_dict().values()))
    from fastgen import accelerate
    with accelerate(ref) as handle, torch.no_grad():  # the same model with fastgen's fused layers swapped in
        assert handle.counts["resnet"] == 22 and handle.counts["attention_processor"] == 6
        assert_close(ref(x, t).sample, expected, atol=1e-5, rtol=1e-4, name="accelerated diffusers model")


# ---- small configs against diffusers ----

@pytest.mark.parametrize("variant", [
    {},
    {"num_class_embeds": 5},
    {"downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "attention_head_dim": None},
    {"mid_block_scale_factor": 2.0, "time_embedding_dim": 48, "norm_eps": 1e-5},
])
def test_small_unet_outputs_equal_diffusers(variant):
    ref = randomize(UNet2DModel(**{**SMALL, **variant})).eval()
    ours = UNet.from_diffusers(ref)
    x = torch.randn(2, 3, 16, 16)
    y = torch.tensor([1, 4]) if "num_class_embeds" in variant else None
    for t in (torch.tensor([0, 999]), 7, torch.tensor(500), torch.tensor([12.5, 600.25])):
        with torch.no_grad():
            expected = ref(x, t, class_labels=y).sample
            out = ours(x, t, y)
        assert_close(out, expected, atol=1e-5, rtol=1e-4, name=f"output at t={t}")


def test_load_diffusers_state_dict_into_existing_model():
    ref = randomize(UNet2DModel(**SMALL)).eval()
    ours = UNet(**unet_kwargs_from_diffusers_config(ref.config)).eval()
    ours.load_diffusers_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert_close(ours(x, 3), ref(x, 3).sample, atol=1e-5, rtol=1e-4)
    sd = ref.state_dict()
    del sd["mid_block.attentions.0.to_k.weight"]
    with pytest.raises(ValueError, match="needs all of to_q, to_k, to_v"):
        convert_diffusers_state_dict(sd)
    sd = dict(ref.state_dict(), **{"down_blocks.0.mystery.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="no counterpart"):
        convert_diffusers_state_dict(sd)


@pytest.mark.parametrize("field,value", [("time_embedding_type", "fourier"), ("resnet_time_scale_shift", "scale_shift"),
                                         ("class_embed_type", "timestep"), ("center_input_sample", True),
                                         ("down_block_types", ("DownBlock2D", "SkipDownBlock2D", "DownBlock2D"))])
def test_unsupported_diffusers_configs_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        unet_kwargs_from_diffusers_config({**SMALL, field: value})


def test_attention_levels_must_mirror():
    cfg = {**SMALL, "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D")}
    with pytest.raises(ValueError, match="same levels"):
        unet_kwargs_from_diffusers_config(cfg)


# ---- fastgen's own configurations ----

@pytest.mark.parametrize("kw", [{}, {"scale_shift": True}, {"heads": 4}, {"head_dim": 8, "dropout": 0.1},
                                {"channel_mult": (1, 2, 3), "num_res_blocks": 2, "attention_resolutions": (8, 2)},
                                {"conv_resample": False}, {"in_channels": 1, "out_channels": 2}])
def test_shapes_and_backward(kw):
    m = small_unet(**kw)
    x = torch.randn(2, m.in_channels, 8, 8, requires_grad=True)
    out = m(x, torch.tensor([1, 2]))
    assert out.shape == (2, m.out_channels, 8, 8) and out.dtype == torch.float32
    out.square().mean().backward()
    assert x.grad is not None and all(p.grad is not None for p in m.parameters())
    # non-square input, any size divisible by 2**(levels - 1)
    assert m(torch.randn(1, m.in_channels, 8, 4 * 2 ** (len(m.down_levels) - 1)), 0).shape[0] == 1


def test_attention_placement_and_parameter_changes():
    m = small_unet(channel_mult=(1, 2, 2), attention_resolutions=(4,), image_size=8)
    has = [lvl.attentions is not None for lvl in m.down_levels]
    assert has == [False, True, False]
    assert [lvl.attentions is not None for lvl in m.up_levels] == [False, True, False]
    base = sum(p.numel() for p in small_unet().parameters())
    # scale-shift doubles every emb_proj's output: 2 * (temb + 1) * C_out more parameters per ResBlock
    ss = small_unet(scale_shift=True)
    extra = sum(b.emb_proj.weight.numel() + b.emb_proj.bias.numel() for b in ss.modules()
                if hasattr(b, "emb_proj")) // 2
    assert sum(p.numel() for p in ss.parameters()) == base + extra


def test_timestep_forms_agree():
    m = small_unet().eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        ref = m(x, torch.tensor([5, 5, 5]))
        for t in (5, 5.0, torch.tensor(5), torch.tensor([5])):
            assert_close(m(x, t), ref, name=f"t={t!r}")
        assert not torch.allclose(m(x, 6), ref), "the timestep must change the output"


def test_class_conditioning():
    m = small_unet(num_classes=10).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        a = m(x, 3, torch.tensor([0, 0]))
        b = m(x, 3, torch.tensor([0, 7]))
    assert_close(a[0], b[0])  # each sample sees only its own label
    assert not torch.allclose(a[1], b[1])
    with pytest.raises(ValueError, match="y .class labels of shape .2,.. is required"):
        m(x, 3)
    with pytest.raises(ValueError, match=r"y must be an integer tensor of shape \(2,\)"):
        m(x, 3, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="num_classes=None"):
        small_unet()(x, 3, torch.tensor([0, 1]))


def test_bad_input():
    with pytest.raises(ValueError, match="divisible by groups"):
        small_unet(base_channels=12)
    with pytest.raises(ValueError, match="channel_mult"):
        small_unet(channel_mult=())
    with pytest.raises(ValueError, match="num_res_blocks"):
        small_unet(num_res_blocks=0)
    with pytest.raises(ValueError, match=r"attention_resolutions must be among the levels' resolutions \(8, 4\)"):
        small_unet(attention_resolutions=(16,))
    m = small_unet()
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, H, W\)"):
        m(torch.randn(2, 1, 8, 8), 0)
    with pytest.raises(ValueError, match="divisible by 2"):
        m(torch.randn(2, 3, 7, 8), 0)
    with pytest.raises(ValueError, match=r"t must be a scalar or of shape \(2,\)"):
        m(torch.randn(2, 3, 8, 8), torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="t must be an int, a float or a tensor"):
        m(torch.randn(2, 3, 8, 8), "5")
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        m(torch.zeros(2, 3, 8, 8, dtype=torch.int64), 0)


# ---- fastgen.accelerate (fastgen/acceleration.py): swapping fused layers into a diffusers UNet2DModel ----

def test_accelerate_diffusers_unet_in_place_and_undo(monkeypatch):
    import fastgen.acceleration as acc
    import fastgen.nn.norm as norm_module
    from torch import nn

    model = randomize(UNet2DModel(**{**SMALL, "num_class_embeds": 3})).eval()
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([4, 700]), torch.tensor([0, 2])
    params = dict(model.named_parameters())
    originals = dict(model.named_modules())
    with torch.no_grad():
        expected = model(x, t, class_labels=y).sample

    calls = {"group_norm": 0, "attention": 0}

    def counting(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped
    monkeypatch.setattr(norm_module, "group_norm", counting("group_norm", norm_module.group_norm))
    monkeypatch.setattr(acc, "attention", counting("attention", acc.attention))

    handle = acc.accelerate(model)
    n_resnets = sum(type(m).__name__ == "ResnetBlock2D" for m in model.modules())
    n_attn = sum(type(m).__name__ == "Attention" for m in model.modules())
    assert handle.counts == {"resnet": n_resnets, "norm_act": 1, "group_norm": n_attn, "attention_processor": n_attn}
    assert not any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(p is params[k] for k, p in model.named_parameters()), "the swapped layers share the Parameters"
    with torch.no_grad():
        out = model(x, t, class_labels=y).sample
    assert calls["group_norm"] == 2 * n_resnets + 1 + n_attn and calls["attention"] == n_attn
    assert_close(out, expected, atol=1e-5, rtol=1e-4, name="accelerated")
    with pytest.raises(ValueError, match="already accelerated"):
        acc.accelerate(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)  # the whole accelerated model pickles, and the copy computes the same
    buffer.seek(0)
    copy = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        assert_close(copy(x, t, class_labels=y).sample, out, atol=0, rtol=0, name="reloaded copy")
    with pytest.raises(ValueError, match="not accelerated"):
        acc.restore(copy)  # a copy has no handle: undoing it must not touch the original

    acc.restore(model)
    assert not handle.active
    assert all(m is originals[k] for k, m in model.named_modules()), "undo puts back the very same modules"
    assert not any("forward" in vars(m) for m in model.modules())
    calls.update(group_norm=0, attention=0)
    with torch.no_grad():
        assert_close(model(x, t, class_labels=y).sample, expected, atol=0, rtol=0, name="after undo")
    assert calls == {"group_norm": 0, "attention": 0}
    with pytest.raises(ValueError, match="not accelerated"):
        acc.restore(model)


@pytest.mark.parametrize("mode", ["default", "scale_shift"])
def test_accelerate_resnet_block_trains_the_same(mode):
    from diffusers.models.resnet import ResnetBlock2D

    from fastgen import accelerate
    block = randomize(ResnetBlock2D(in_channels=16, out_channels=32, temb_channels=8, groups=4,
                                    time_embedding_norm=mode)).train()
    x, temb = torch.randn(2, 16, 6, 6), torch.randn(2, 8)
    block(x, temb).square().mean().backward()
    expected = {k: p.grad.clone() for k, p in block.named_parameters()}
    block.zero_grad()
    with accelerate(block) as handle:  # the handle is a context manager that undoes on exit
        assert handle.counts["resnet"] == 1
        block(x, temb).square().mean().backward()
    for k, p in block.named_parameters():
        assert_close(p.grad, expected[k], atol=1e-6, rtol=1e-4, name=f"grad of {k}")
    assert not handle.active and type(block.norm1).__name__ == "GroupNorm"


def test_accelerate_fastgen_unet_and_plain_modules():
    from torch import nn

    from fastgen import accelerate
    from fastgen.nn import GroupNormAct
    unet = small_unet().eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        before = unet(x, 3)
        handle = accelerate(unet)
        assert sum(handle.counts.values()) == 0  # built on GroupNormAct already
        assert_close(unet(x, 3), before, atol=0, rtol=0)
    handle.undo()
    seq = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(4, 8), nn.SiLU(), nn.GroupNorm(2, 8))
    x = torch.randn(2, 3, 5, 5)
    expected = seq(x)
    handle = accelerate(seq)
    assert handle.counts == {"resnet": 0, "norm_act": 1, "group_norm": 1, "attention_processor": 0}
    assert isinstance(seq[1], GroupNormAct) and seq[1].activation == "silu" and isinstance(seq[2], nn.Identity)
    assert_close(seq(x), expected)
    handle.undo()
    assert isinstance(seq[1], nn.GroupNorm) and isinstance(seq[2], nn.SiLU)
    # the handle keeps no model alive: one dropped while accelerated is freed (and undo is then a no-op)
    handle, ref = accelerate(seq), weakref.ref(seq)
    del seq
    gc.collect()
    assert ref() is None
    handle.undo()
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        accelerate(lambda x: x)


# ---- memory format, low precision, the sampler ----

def test_channels_last_and_bfloat16():
    m = small_unet().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = m(x, 9)
        assert_close(m(x.contiguous(memory_format=torch.channels_last), 9), ref, atol=1e-5, rtol=1e-4)
        low = m.to(torch.bfloat16)(x.bfloat16(), 9)
    assert low.dtype == torch.bfloat16 and low.shape == ref.shape
    # bf16 keeps ~3 significant digits; through ~20 layers a few percent of the output's scale
    assert (low.float() - ref).abs().max() <= 0.05 * ref.abs().max()


def test_sampler_gives_the_same_samples_as_with_the_diffusers_model():
    from fastgen.diffusion import DDIMScheduler, sample
    ref = randomize(UNet2DModel(**{**SMALL, "num_class_embeds": 3, "out_channels": 3})).eval()
    ours = UNet.from_diffusers(ref)
    y = torch.tensor([0, 2])
    with torch.no_grad():
        a = sample(ours, DDIMScheduler(), (2, 3, 16, 16), num_inference_steps=3, seed=0, progress=False,
                   model_kwargs={"y": y})
        b = sample(ref, DDIMScheduler(), (2, 3, 16, 16), num_inference_steps=3, seed=0, progress=False,
                   model_kwargs={"class_labels": y})
    assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_traces_without_graph_breaks():
    """torch.compile(fullgraph=True) must see one graph (the eager backend: tracing only, no C++ build)."""
    m = small_unet(num_classes=3, scale_shift=True).eval()
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([1, 5]), torch.tensor([0, 2])
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    with torch.no_grad():
        assert_close(compiled(x, t, y), m(x, t, y))
