"""fastgen.nn: GroupNormAct against torch's GroupNorm + SiLU (and the op's prologue/epilogue by hand),
timestep_embedding against diffusers' get_timestep_embedding, ResBlock / SelfAttention2d / Downsample /
Upsample against diffusers' ResnetBlock2D / Attention / Downsample2D / Upsample2D with the same weights,
first and second derivatives through ResBlock in float64, and bad input."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgen.nn import (Downsample, GroupNormAct, ResBlock, SelfAttention2d, TimeEmbedding, Upsample, attention,
                        timestep_embedding)
from helpers import assert_close

diffusers = pytest.importorskip("diffusers", reason="diffusers is the reference these layers are compared with")
from diffusers.models.attention_processor import Attention  # noqa: E402
from diffusers.models.downsampling import Downsample2D  # noqa: E402
from diffusers.models.embeddings import get_timestep_embedding  # noqa: E402
from diffusers.models.resnet import ResnetBlock2D  # noqa: E402
from diffusers.models.upsampling import Upsample2D  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def randomize(module: nn.Module) -> nn.Module:
    """Non-trivial weights everywhere (GroupNorm's ones/zeros would hide a swapped weight and bias)."""
    with torch.no_grad():
        for p in module.parameters():
            # 1-D (norm scales, biases) around 1, matrices small enough to keep activations O(1)
            p.copy_(torch.rand_like(p) + 0.5 if p.dim() == 1 else torch.randn_like(p) * 0.2)
    return module


# ---- GroupNormAct ----

@pytest.mark.parametrize("shape,groups", [((2, 32, 8, 8), 8), ((1, 4, 1, 3), 4), ((3, 6, 5), 3)])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_group_norm_act_matches_torch(shape, groups, activation):
    norm = randomize(GroupNormAct(groups, shape[1], eps=1e-6, activation=activation))
    ref = nn.GroupNorm(groups, shape[1], eps=1e-6)
    ref.load_state_dict(norm.state_dict())  # the same parameter names as torch's GroupNorm
    x = torch.randn(shape) * 3 + 1
    expected = ref(x) if activation is None else F.silu(ref(x))
    assert_close(norm(x), expected)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA autocast needs a GPU"))])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_group_norm_act_follows_torch_autocast(device, dtype):
    """Under autocast GroupNormAct gives nn.GroupNorm's dtype (float32 on CUDA, x's on CPU) and its
    numbers; the float32 parameters are not rounded on CUDA, where torch computes in float32."""
    if device == "cpu" and dtype == torch.float16:
        pytest.skip("CPU autocast takes bfloat16")
    torch.manual_seed(0)
    ref = randomize(nn.GroupNorm(4, 16)).to(device)
    ours = GroupNormAct.from_group_norm(ref, activation=None)
    x = torch.randn(2, 16, 5, 3, device=device).to(dtype)
    with torch.autocast(device, dtype=dtype):
        want, got = ref(x), ours(x)
    assert got.dtype == want.dtype == (torch.float32 if device == "cuda" else dtype)
    tol = dict(atol=1e-5, rtol=1e-5) if device == "cuda" else dict(atol=2e-2, rtol=2e-2)
    assert_close(got.float(), want.float(), **tol)


def test_group_norm_act_emb_scale_shift_by_hand():
    norm = randomize(GroupNormAct(4, 8, eps=1e-5, activation="silu"))
    x, emb, scale, shift = torch.randn(2, 8, 4, 4), torch.randn(2, 8), torch.randn(2, 8), torch.randn(2, 8)
    h = F.group_norm(x + emb[:, :, None, None], 4, norm.weight, norm.bias, 1e-5)
    assert_close(norm(x, emb=emb), F.silu(h))
    h = F.group_norm(x, 4, norm.weight, norm.bias, 1e-5) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    assert_close(norm(x, scale=scale, shift=shift), F.silu(h))


def test_group_norm_act_from_group_norm_shares_parameters():
    ref = randomize(nn.GroupNorm(2, 4))
    norm = GroupNormAct.from_group_norm(ref, activation="silu")
    assert norm.weight is ref.weight and norm.bias is ref.bias
    x = torch.randn(2, 4, 3, 3)
    assert_close(norm(x), F.silu(ref(x)))
    assert set(norm.state_dict()) == {"weight", "bias"}
    plain = GroupNormAct(2, 4, affine=False)
    assert plain.weight is None and list(plain.parameters()) == []
    assert_close(plain(x), F.silu(F.group_norm(x, 2, eps=1e-5)))


def test_group_norm_act_bad_input():
    with pytest.raises(ValueError, match="must divide num_channels"):
        GroupNormAct(32, 48)
    with pytest.raises(ValueError, match="activation"):
        GroupNormAct(2, 4, activation="relu")
    norm = GroupNormAct(2, 4)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 4"):
        norm(torch.randn(2, 6, 3, 3))
    with pytest.raises(ValueError, match=r"emb must have shape \(B, C\) = \(2, 4\)"):
        norm(torch.randn(2, 4, 3, 3), emb=torch.randn(2, 4, 1, 1))
    with pytest.raises(ValueError, match="scale must have shape"):
        norm(torch.randn(2, 4, 3, 3), scale=torch.randn(1, 4))
    with pytest.raises(TypeError, match="shift must be a torch.Tensor"):
        norm(torch.randn(2, 4, 3, 3), shift=[0.0] * 4)


# ---- timestep embedding ----

@pytest.mark.parametrize("flip,shift", [(True, 0), (False, 1), (True, 1), (False, 0)])
@pytest.mark.parametrize("dim", [128, 33, 4])
def test_timestep_embedding_matches_diffusers(flip, shift, dim):
    t = torch.cat([torch.arange(0, 1000, 37), torch.tensor([999])])
    for tt in (t, t.float() + 0.25):
        ours = timestep_embedding(tt, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
        ref = get_timestep_embedding(tt, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
        assert ours.dtype == torch.float32 and ours.shape == (t.shape[0], dim)
        assert torch.equal(ours, ref)


def test_timestep_embedding_values_and_errors():
    e = timestep_embedding(torch.tensor([0, 5]), 4, flip_sin_to_cos=False, downscale_freq_shift=0)
    # half = 2, freqs = [1, 1e-2]: [sin(t), sin(t/100), cos(t), cos(t/100)]
    expected = torch.tensor([[0.0, 0.0, 1.0, 1.0], [torch.sin(torch.tensor(5.0)), torch.sin(torch.tensor(0.05)),
                                                     torch.cos(torch.tensor(5.0)), torch.cos(torch.tensor(0.05))]])
    assert_close(e, expected)
    with pytest.raises(ValueError, match=r"t must have shape \(N,\)"):
        timestep_embedding(torch.zeros(2, 1), 8)
    with pytest.raises(TypeError, match="t must be a torch.Tensor"):
        timestep_embedding(3, 8)
    with pytest.raises(ValueError, match="downscale_freq_shift"):
        timestep_embedding(torch.zeros(2), 2, downscale_freq_shift=1)
    assert TimeEmbedding(16, 64)(torch.arange(3)).shape == (3, 64)


# ---- ResBlock vs diffusers' ResnetBlock2D ----

def resnet_to_fastgen(sd):
    return {k.replace("time_emb_proj", "emb_proj").replace("conv_shortcut", "skip"): v for k, v in sd.items()}


@pytest.mark.parametrize("in_ch,out_ch", [(32, 32), (32, 64)])
@pytest.mark.parametrize("mode", ["default", "scale_shift"])
@pytest.mark.parametrize("updown", [None, "up", "down"])
def test_resblock_matches_diffusers(in_ch, out_ch, mode, updown):
    kw = dict(up=updown == "up", down=updown == "down")
    ref = randomize(ResnetBlock2D(in_channels=in_ch, out_channels=out_ch, temb_channels=24, groups=8, eps=1e-6,
                                  time_embedding_norm=mode, **kw)).eval()
    ours = ResBlock(in_ch, out_ch, 24, groups=8, eps=1e-6, scale_shift=mode == "scale_shift", **kw).eval()
    ours.load_state_dict(resnet_to_fastgen(ref.state_dict()))
    x, temb = torch.randn(2, in_ch, 8, 8), torch.randn(2, 24)
    with torch.no_grad():
        expected = ref(x, temb)
        out = ours(x, temb)
    assert out.shape == expected.shape == (2, out_ch) + {None: (8, 8), "up": (16, 16), "down": (4, 4)}[updown]
    assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_resblock_uses_the_embedding_and_dropout():
    block = randomize(ResBlock(8, 8, 6, groups=4, dropout=0.5))
    x = torch.randn(2, 8, 4, 4)
    temb = torch.randn(2, 6)
    block.eval()
    a, b = block(x, temb), block(x, temb + 1)
    assert not torch.allclose(a, b), "the embedding must change the output"
    assert torch.equal(a, block(x, temb)), "eval mode is deterministic"
    block.train()
    assert not torch.allclose(block(x, temb), a), "dropout acts in train mode"


def test_resblock_gradients_float64():
    block = randomize(ResBlock(2, 4, 3, groups=2, scale_shift=True)).double()
    x = torch.randn(1, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    temb = torch.randn(1, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x, temb))
    assert torch.autograd.gradgradcheck(block, (x, temb))


def test_resblock_bad_input():
    with pytest.raises(ValueError, match=r"out_ch \(48\) must be divisible by groups \(32\)"):
        ResBlock(32, 48, 16)
    with pytest.raises(ValueError, match="up and down"):
        ResBlock(8, 8, 4, groups=4, up=True, down=True)
    with pytest.raises(ValueError, match="scale_shift=True needs an embedding"):
        ResBlock(8, 8, None, groups=4, scale_shift=True)
    block = ResBlock(8, 8, 4, groups=4)
    with pytest.raises(ValueError, match=r"temb must be a tensor of shape \(B, temb_ch\) = \(2, 4\)"):
        block(torch.randn(2, 8, 4, 4), torch.randn(2, 5))
    with pytest.raises(ValueError, match="temb must be a tensor"):
        block(torch.randn(2, 8, 4, 4))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 8, H, W\)"):
        block(torch.randn(2, 4, 4, 4), torch.randn(2, 4))
    plain = ResBlock(8, 16, None, groups=4)
    assert plain(torch.randn(1, 8, 4, 4)).shape == (1, 16, 4, 4)
    with pytest.raises(ValueError, match="temb_ch=None"):
        plain(torch.randn(1, 8, 4, 4), torch.randn(1, 4))


# ---- attention ----

def attention_to_fastgen(sd):
    out = {k.replace("group_norm.", "norm.").replace("to_out.0.", "proj_out."): v for k, v in sd.items()
           if not k.startswith(("to_q", "to_k", "to_v"))}
    for kind in ("weight", "bias"):
        out[f"qkv.{kind}"] = torch.cat([sd[f"to_q.{kind}"], sd[f"to_k.{kind}"], sd[f"to_v.{kind}"]])
    return out


@pytest.mark.parametrize("channels,head_dim", [(32, None), (32, 8), (64, 16)])
@pytest.mark.parametrize("rescale", [1.0, 2.0])
def test_self_attention_matches_diffusers(channels, head_dim, rescale):
    hd = channels if head_dim is None else head_dim
    ref = randomize(Attention(channels, heads=channels // hd, dim_head=hd, rescale_output_factor=rescale, eps=1e-6,
                              norm_num_groups=8, residual_connection=True, bias=True, upcast_softmax=True)).eval()
    ours = SelfAttention2d(channels, head_dim=head_dim, groups=8, eps=1e-6, rescale_output_factor=rescale).eval()
    ours.load_state_dict(attention_to_fastgen(ref.state_dict()))
    assert ours.heads == channels // hd
    x = torch.randn(2, channels, 6, 5)
    with torch.no_grad():
        assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-4)


def test_attention_function_is_softmax_qk_v():
    q, k, v = (torch.randn(2, 3, 7, 4, dtype=torch.float64) for _ in range(3))
    expected = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1) @ v
    assert_close(attention(q, k, v), expected)


def test_self_attention_heads_differ_and_bad_input():
    x = torch.randn(1, 16, 4, 4)
    one, four = SelfAttention2d(16, 1, groups=4), SelfAttention2d(16, 4, groups=4)
    four.load_state_dict(one.state_dict())
    assert not torch.allclose(one(x), four(x)), "the head count must matter"
    assert SelfAttention2d(16, groups=None).norm is None
    with pytest.raises(ValueError, match="heads must be a positive divisor of channels"):
        SelfAttention2d(16, 3)
    with pytest.raises(ValueError, match="head_dim must be a positive divisor"):
        SelfAttention2d(16, head_dim=5)
    with pytest.raises(ValueError, match="must divide num_channels"):
        SelfAttention2d(20, groups=8)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 16, H, W\)"):
        one(torch.randn(1, 16, 16))


# ---- resampling ----

@pytest.mark.parametrize("padding", [0, 1])
def test_downsample_matches_diffusers(padding):
    ref = randomize(Downsample2D(8, use_conv=True, out_channels=16, padding=padding, name="op"))
    ours = Downsample(8, 16, padding=padding)
    ours.load_state_dict(ref.state_dict())
    for hw in [(8, 8), (7, 9)]:
        x = torch.randn(2, 8, *hw)
        assert_close(ours(x), ref(x))
    pool = Downsample(8, use_conv=False)
    assert_close(pool(x), F.avg_pool2d(x, 2))
    with pytest.raises(ValueError, match="padding must be 0"):
        Downsample(8, padding=2)
    with pytest.raises(ValueError, match="out_channels must equal channels"):
        Downsample(8, 16, use_conv=False)


def test_upsample_matches_diffusers():
    ref = randomize(Upsample2D(8, use_conv=True, out_channels=4))
    ours = Upsample(8, 4)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 8, 3, 5)
    assert_close(ours(x), ref(x))
    assert_close(Upsample(8, use_conv=False)(x), x.repeat_interleave(2, 2).repeat_interleave(2, 3))
