"""diffusers ``UNet2DModel`` -> fastgen :class:`~fastgen.models.unet.UNet`: config and weights.

fastgen never imports diffusers; these functions read a diffusers model's ``config`` (a mapping)
and ``state_dict()``. Supported: the DDPM family of UNet2DModel configs, i.e. positional time
embedding, SiLU, DownBlock2D / AttnDownBlock2D and UpBlock2D / AttnUpBlock2D blocks with conv
resampling, the UNetMidBlock2D, "default" or "scale_shift" ResNet conditioning, optional
``num_class_embeds``. Anything else raises ``ValueError`` naming the config field.

Key mapping (diffusers -> fastgen), everything else by the same name:

    time_embedding.linear_{1,2}                     -> time_embedding.linear_{1,2}
    down_blocks.i.resnets.j / attentions.j          -> down_levels.i.resblocks.j / attentions.j
    down_blocks.i.downsamplers.0.conv               -> down_levels.i.downsample.conv
    mid_block.resnets.{0,1} / attentions.0          -> mid.res1 / mid.res2 / mid.attn
    up_blocks.i.{resnets,attentions}.j              -> up_levels.i.{resblocks,attentions}.j
    up_blocks.i.upsamplers.0.conv                   -> up_levels.i.upsample.conv
    (resnet) time_emb_proj / conv_shortcut          -> emb_proj / skip
    (attention) group_norm / to_q,to_k,to_v / to_out.0 -> norm / qkv (rows q, k, v concatenated) / proj_out
    conv_norm_out                                   -> norm_out
"""
from __future__ import annotations

import re

import torch

from .unet import UNet

__all__ = ["unet_kwargs_from_diffusers_config", "convert_diffusers_state_dict", "unet_from_diffusers"]

_DOWN = ("DownBlock2D", "AttnDownBlock2D")
_UP = ("UpBlock2D", "AttnUpBlock2D")



# google/ddpm-cifar10-32's UNet2DModel config (the fields of its config.json that shape the model; the
# rest are diffusers' defaults): the architecture of UNet.ddpm_cifar10(), for building the reference.
DDPM_CIFAR10_DIFFUSERS_CONFIG = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, norm_num_groups=32,
    mid_block_scale_factor=1, act_fn="silu", center_input_sample=False, time_embedding_type="positional")

def _require(config, name, allowed) -> None:
    value = config.get(name, allowed[0])
    if value not in allowed:
        raise ValueError(f"UNet2DModel config {name}={value!r} is not supported by fastgen's UNet "
                         f"(supported: {allowed})")


def unet_kwargs_from_diffusers_config(config) -> dict:
    """The ``UNet(**kwargs)`` equal in architecture to a UNet2DModel with this ``config`` (a mapping)."""
    config = dict(config)
    _require(config, "time_embedding_type", ("positional",))
    _require(config, "act_fn", ("silu", "swish"))
    _require(config, "center_input_sample", (False,))
    _require(config, "class_embed_type", (None,))
    _require(config, "mid_block_type", ("UNetMidBlock2D",))
    _require(config, "add_attention", (True,))
    _require(config, "downsample_type", ("conv",))
    _require(config, "upsample_type", ("conv",))
    _require(config, "attn_norm_num_groups", (None,))
    _require(config, "resnet_time_scale_shift", ("default", "scale_shift"))
    if config.get("resnet_time_scale_shift") == "scale_shift":
        # diffusers' mid block then builds its attention without GroupNorm (attn_groups=None), a layout
        # fastgen's UNet does not reproduce.
        raise ValueError("UNet2DModel config resnet_time_scale_shift='scale_shift' is not supported: diffusers' "
                         "mid-block attention has no GroupNorm in that mode, unlike fastgen's UNet")
    boc = tuple(config["block_out_channels"])
    down, up = tuple(config["down_block_types"]), tuple(config["up_block_types"])
    if any(b not in _DOWN for b in down) or any(b not in _UP for b in up):
        raise ValueError(f"UNet2DModel config down_block_types / up_block_types must use {_DOWN} / {_UP}, "
                         f"got {down} / {up}")
    attn_down = [i for i, b in enumerate(down) if b == "AttnDownBlock2D"]
    attn_up = sorted(len(up) - 1 - i for i, b in enumerate(up) if b == "AttnUpBlock2D")
    if attn_down != attn_up:
        raise ValueError(f"UNet2DModel config: attention must sit at the same levels down and up, got down_block_types "
                         f"{down} and up_block_types {up}")
    base = boc[0]
    if any(c % base for c in boc):
        raise ValueError(f"UNet2DModel config block_out_channels {boc} must all be multiples of the first")
    size = config.get("sample_size") or 2 ** (len(boc) - 1)
    size = size[0] if isinstance(size, (tuple, list)) else size
    head_dim = config.get("attention_head_dim")
    return dict(in_channels=config.get("in_channels", 3), out_channels=config.get("out_channels", 3),
                base_channels=base, channel_mult=tuple(c // base for c in boc),
                num_res_blocks=config.get("layers_per_block", 2),
                attention_resolutions=tuple(size // 2 ** i for i in attn_down), heads=1, head_dim=head_dim,
                dropout=config.get("dropout", 0.0), scale_shift=False,
                num_classes=config.get("num_class_embeds"), image_size=size, groups=config.get("norm_num_groups", 32),
                eps=config.get("norm_eps", 1e-5), temb_channels=config.get("time_embedding_dim"),
                flip_sin_to_cos=config.get("flip_sin_to_cos", True), freq_shift=config.get("freq_shift", 0),
                downsample_padding=config.get("downsample_padding", 1),
                mid_scale_factor=config.get("mid_block_scale_factor", 1.0))


_RENAMES = [  # (pattern, replacement), applied in order to every key
    (r"^down_blocks\.(\d+)\.resnets\.", r"down_levels.\1.resblocks."),
    (r"^down_blocks\.(\d+)\.attentions\.", r"down_levels.\1.attentions."),
    (r"^down_blocks\.(\d+)\.downsamplers\.0\.", r"down_levels.\1.downsample."),
    (r"^up_blocks\.(\d+)\.resnets\.", r"up_levels.\1.resblocks."),
    (r"^up_blocks\.(\d+)\.attentions\.", r"up_levels.\1.attentions."),
    (r"^up_blocks\.(\d+)\.upsamplers\.0\.", r"up_levels.\1.upsample."),
    (r"^mid_block\.resnets\.0\.", "mid.res1."),
    (r"^mid_block\.resnets\.1\.", "mid.res2."),
    (r"^mid_block\.attentions\.0\.", "mid.attn."),
    (r"^conv_norm_out\.", "norm_out."),
    (r"\.time_emb_proj\.", ".emb_proj."),
    (r"\.conv_shortcut\.", ".skip."),
    (r"\.group_norm\.", ".norm."),
    (r"\.to_out\.0\.", ".proj_out."),
]
_QKV = re.compile(r"^(.*)\.to_([qkv])\.(weight|bias)$")


def convert_diffusers_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DModel state dict renamed (and q, k, v concatenated) for fastgen's UNet.

    Raises ``ValueError`` on a key it does not know, or an attention missing one of to_q/to_k/to_v.
    """
    out, qkv = {}, {}
    for key, value in state_dict.items():
        for pattern, repl in _RENAMES:
            key = re.sub(pattern, repl, key)
        m = _QKV.match(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        if key.startswith(("down_blocks.", "up_blocks.", "mid_block.")) or ".to_" in key:
            raise ValueError(f"state_dict key {key!r} has no counterpart in fastgen's UNet")
        out[key] = value
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"state_dict: attention {prefix!r} has to_{'/to_'.join(sorted(parts))}.{kind} "
                             f"but needs all of to_q, to_k, to_v")
        out[f"{prefix}.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def unet_from_diffusers(model) -> UNet:
    """fastgen's UNet with the config and weights of the diffusers UNet2DModel ``model``."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "state_dict"):
        raise TypeError(f"model must be a diffusers UNet2DModel (with .config and .state_dict()), "
                        f"got {type(model).__name__}")
    unet = UNet(**unet_kwargs_from_diffusers_config(config))
    param = next(model.parameters())
    unet.load_diffusers_state_dict(model.state_dict())
    return unet.to(device=param.device, dtype=param.dtype).train(model.training)
