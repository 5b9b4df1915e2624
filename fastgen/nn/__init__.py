"""Layers built on fastgen's ops (the import direction is models -> nn -> ops).

    GroupNormAct          GroupNorm + optional SiLU, time-embedding add (prologue) or scale/shift
                          (epilogue), over :func:`fastgen.ops.group_norm.group_norm`
    timestep_embedding    sinusoidal timestep code, numerically diffusers' get_timestep_embedding
    TimeEmbedding         the embedding followed by Linear-SiLU-Linear
    attention             softmax(q k^T / sqrt(d)) v: the one place attention is computed
    SelfAttention2d       GroupNorm, fused QKV, attention over H*W positions, output projection, residual
    ResBlock              DDPM / improved-diffusion residual block ("default" or scale-shift conditioning)
    Downsample, Upsample  stride-2 conv or average pool; nearest x2 with or without conv
    VectorQuantizer       VQ-VAE nearest-code layer: straight-through, EMA codebook, k-means init, restarts
"""
from .attention import SelfAttention2d, attention
from .blocks import Downsample, ResBlock, Upsample
from .embedding import TimeEmbedding, timestep_embedding
from .norm import GroupNormAct
from .vector_quantizer import VectorQuantizer, VQOutput

__all__ = ["GroupNormAct", "timestep_embedding", "TimeEmbedding", "attention", "SelfAttention2d", "ResBlock",
           "Downsample", "Upsample", "VectorQuantizer", "VQOutput"]
