"""The diffusion U-Net of DDPM (Ho et al. 2020) and improved-diffusion (Nichol & Dhariwal 2021).

Layout (the layer names mirror diffusers' UNet2DModel, so its weights map one to one, see
:mod:`fastgen.models.unet_diffusers`):

    conv_in -> down_levels[i]: num_res_blocks x (ResBlock [+ SelfAttention2d]) [+ Downsample]
            -> mid: ResBlock, SelfAttention2d, ResBlock
            -> up_levels[i]: (num_res_blocks + 1) x (concat skip, ResBlock [+ SelfAttention2d]) [+ Upsample]
            -> norm_out (GroupNorm + SiLU) -> conv_out

Level i works at ``image_size / 2**i`` with ``base_channels * channel_mult[i]`` channels; a level
gets attention when its resolution is in ``attention_resolutions``. Every skip pushed on the way
down (conv_in's output, each block's, each Downsample's) is concatenated once on the way up.
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn import Downsample, GroupNormAct, ResBlock, SelfAttention2d, TimeEmbedding, Upsample

__all__ = ["UNet"]


class _Level(nn.Module):
    """One resolution of the U-Net: residual blocks, optional attention after each, optional resampler."""

    def __init__(self, resblocks: list[ResBlock], attentions: list[SelfAttention2d] | None,
                 resample: nn.Module | None, resample_name: str):
        super().__init__()
        self.resblocks = nn.ModuleList(resblocks)
        self.attentions = None if attentions is None else nn.ModuleList(attentions)
        setattr(self, resample_name, resample)  # "downsample" or "upsample": says which in the state dict


class UNet(nn.Module):
    """A configurable DDPM / improved-diffusion U-Net predicting noise (or whatever it is trained on).

    Args:
        in_channels, out_channels: image channels in and out.
        base_channels: channels of level 0 (and of conv_in); level i has ``base_channels * channel_mult[i]``.
        channel_mult: one multiplier per resolution level; ``len(channel_mult) - 1`` downsamplings.
        num_res_blocks: ResBlocks per level on the way down (one more per level on the way up).
        attention_resolutions: resolutions (in pixels, given ``image_size``) with self-attention.
        heads: attention heads, or ``head_dim`` (heads = channels // head_dim) when that is given.
        dropout: ResBlock dropout.
        scale_shift: ResBlocks condition by GroupNorm scale/shift instead of an additive bias.
        num_classes: class-conditional with a learned embedding added to the time embedding, or None.
        image_size: the (square) training resolution; sets where attention sits. Any H, W divisible
            by ``2**(len(channel_mult) - 1)`` runs.
        groups, eps: GroupNorm settings everywhere.
        temb_channels: width of the time embedding (default ``4 * base_channels``).
        flip_sin_to_cos, freq_shift: the sinusoidal code (see :func:`fastgen.nn.timestep_embedding`).
        downsample_padding: 1 (symmetric) or 0 (TF-style bottom/right pad, the DDPM checkpoints).
        conv_resample: Downsample/Upsample with a convolution (else average pool / plain nearest).
        mid_scale_factor: the mid blocks' output_scale_factor (diffusers' ``mid_block_scale_factor``).

    Forward: ``x`` (B, in_channels, H, W) floating; ``t`` an int/float, a 0-d tensor or a (B,)
    tensor of timesteps (fractional allowed); ``y`` (B,) int64 class labels iff ``num_classes``.
    Returns (B, out_channels, H, W) in x's dtype.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, base_channels: int = 128,
                 channel_mult: tuple[int, ...] = (1, 2, 2, 2), num_res_blocks: int = 2,
                 attention_resolutions: tuple[int, ...] = (16,), heads: int = 1, dropout: float = 0.0,
                 scale_shift: bool = False, num_classes: int | None = None, image_size: int = 32, groups: int = 32,
                 *, head_dim: int | None = None, eps: float = 1e-6, temb_channels: int | None = None,
                 flip_sin_to_cos: bool = True, freq_shift: float = 0.0, downsample_padding: int = 1,
                 conv_resample: bool = True, mid_scale_factor: float = 1.0):
        super().__init__()
        channel_mult = tuple(channel_mult)
        if not channel_mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in channel_mult):
            raise ValueError(f"channel_mult must be a non-empty tuple of positive ints, got {channel_mult!r}")
        if isinstance(num_res_blocks, bool) or not isinstance(num_res_blocks, int) or num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be an int >= 1, got {num_res_blocks!r}")
        chans = [base_channels * m for m in channel_mult]
        for c in [base_channels] + chans:
            if c % groups != 0:
                raise ValueError(f"every channel count must be divisible by groups ({groups}); "
                                 f"base_channels * channel_mult gives {c}")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f"num_classes must be None or a positive int, got {num_classes!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_classes = num_classes
        self.image_size = image_size
        self.num_levels = len(chans)
        temb = temb_channels or 4 * base_channels
        level_sizes = [image_size // 2 ** i for i in range(len(chans))]
        if any(r not in level_sizes for r in attention_resolutions):
            raise ValueError(f"attention_resolutions must be among the levels' resolutions {tuple(level_sizes)} "
                             f"(image_size={image_size}), got {tuple(attention_resolutions)}")
        attn_levels = {i for i, r in enumerate(level_sizes) if r in set(attention_resolutions)}
        res = dict(temb_ch=temb, groups=groups, dropout=dropout, scale_shift=scale_shift, eps=eps)

        def attn(ch: int, scale: float = 1.0) -> SelfAttention2d:
            return SelfAttention2d(ch, heads, head_dim=head_dim, groups=groups, eps=eps, rescale_output_factor=scale)

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.time_embedding = TimeEmbedding(base_channels, temb, flip_sin_to_cos=flip_sin_to_cos,
                                            downscale_freq_shift=freq_shift)
        self.class_embedding = nn.Embedding(num_classes, temb) if num_classes is not None else None

        skips, ch = [base_channels], base_channels
        self.down_levels = nn.ModuleList()
        for i, out in enumerate(chans):
            blocks, attns = [], [] if i in attn_levels else None
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch, out, **res))
                if attns is not None:
                    attns.append(attn(out))
                ch = out
                skips.append(ch)
            last = i == len(chans) - 1
            down = None if last else Downsample(ch, use_conv=conv_resample, padding=downsample_padding)
            if not last:
                skips.append(ch)
            self.down_levels.append(_Level(blocks, attns, down, "downsample"))

        self.mid = nn.ModuleDict({"res1": ResBlock(ch, ch, **res, output_scale_factor=mid_scale_factor),
                                  "attn": attn(ch, mid_scale_factor),
                                  "res2": ResBlock(ch, ch, **res, output_scale_factor=mid_scale_factor)})

        self.up_levels = nn.ModuleList()
        for i, out in reversed(list(enumerate(chans))):
            blocks, attns = [], [] if i in attn_levels else None
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(ch + skips.pop(), out, **res))
                if attns is not None:
                    attns.append(attn(out))
                ch = out
            up = None if i == 0 else Upsample(ch, use_conv=conv_resample)
            self.up_levels.append(_Level(blocks, attns, up, "upsample"))

        self.norm_out = GroupNormAct(groups, ch, eps, activation="silu")
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)

    @classmethod
    def ddpm_cifar10(cls, **overrides) -> "UNet":
        """The 35.7M-parameter CIFAR-10 model of DDPM (Ho et al. 2020), as diffusers' google/ddpm-cifar10-32.

        Same architecture, layer for layer, as that UNet2DModel (block_out_channels (128, 256, 256, 256),
        2 blocks per level, attention at 16x16 with one head, eps 1e-6, sin-then-cos timestep code with
        freq_shift 1, TF-style downsampling pad), so :meth:`from_diffusers` loads its weights.
        ``dropout`` (0.1 in the paper's training) and other keywords can be overridden.
        """
        cfg = dict(in_channels=3, out_channels=3, base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                   attention_resolutions=(16,), heads=1, dropout=0.0, image_size=32, groups=32, eps=1e-6,
                   flip_sin_to_cos=False, freq_shift=1.0, downsample_padding=0)
        cfg.update(overrides)
        return cls(**cfg)

    @classmethod
    def from_diffusers(cls, model: nn.Module) -> "UNet":
        """A fastgen UNet with the architecture and weights of a diffusers ``UNet2DModel`` (same outputs).

        See :mod:`fastgen.models.unet_diffusers` for what is supported; the result is on the source
        model's device and dtype, in the source model's train/eval mode.
        """
        from .unet_diffusers import unet_from_diffusers
        return unet_from_diffusers(model)

    def load_diffusers_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a diffusers UNet2DModel state dict (its key names) into this UNet, strictly."""
        from .unet_diffusers import convert_diffusers_state_dict
        self.load_state_dict(convert_diffusers_state_dict(state_dict), strict=True)

    def _embed(self, x: torch.Tensor, t, y) -> torch.Tensor:
        b = x.shape[0]
        if isinstance(t, bool) or not isinstance(t, (int, float, torch.Tensor)):
            raise TypeError(f"t must be an int, a float or a tensor of timesteps, got {type(t).__name__}")
        if not isinstance(t, torch.Tensor):
            t = torch.tensor([t], device=x.device)
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, b)):
            raise ValueError(f"t must be a scalar or of shape ({b},) (one timestep per sample), got {tuple(t.shape)}")
        t = t.to(x.device).reshape(-1).expand(b)
        emb = self.time_embedding(t)
        if self.class_embedding is None:
            if y is not None:
                raise ValueError("y (class labels) was given but the UNet was built with num_classes=None")
            return emb
        if y is None:
            raise ValueError(f"y (class labels of shape ({b},)) is required: the UNet has "
                             f"num_classes={self.num_classes}")
        if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool or y.shape != (b,):
            raise ValueError(f"y must be an integer tensor of shape ({b},), got "
                             f"{(y.dtype, tuple(y.shape)) if isinstance(y, torch.Tensor) else type(y).__name__}")
        return emb + self.class_embedding(y.to(x.device))

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"x must be a floating tensor, got {x.dtype}")
        f = 2 ** (self.num_levels - 1)
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"H and W must be divisible by {f} (one halving per level), got {tuple(x.shape[2:])}")
        emb = self._embed(x, t, y).to(self.conv_in.weight.dtype)

        h = self.conv_in(x)
        skips = [h]
        for level in self.down_levels:
            for j, block in enumerate(level.resblocks):
                h = block(h, emb)
                if level.attentions is not None:
                    h = level.attentions[j](h)
                skips.append(h)
            if level.downsample is not None:
                h = level.downsample(h)
                skips.append(h)
        h = self.mid["res2"](self.mid["attn"](self.mid["res1"](h, emb)), emb)
        for level in self.up_levels:
            for j, block in enumerate(level.resblocks):
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
                if level.attentions is not None:
                    h = level.attentions[j](h)
            if level.upsample is not None:
                h = level.upsample(h)
        return self.conv_out(self.norm_out(h))
