"""Swap fastgen's fused layers into an existing model, in place and undoably.

    handle = fastgen.accelerate(unet)                # a diffusers UNet2DModel, fastgen's UNet, any nn.Module
    ...                                              # same outputs (within float rounding), faster where
    handle.undo()                                    # fused kernels exist; or fastgen.restore(unet)

What is swapped (fastgen never imports diffusers; its classes are recognised by name and module):

* diffusers ``ResnetBlock2D`` ("default" or "scale_shift" conditioning, SiLU): ``norm1`` and ``norm2``
  become :class:`~fastgen.nn.GroupNormAct` with the SiLU fused, and the block's ``forward`` is
  replaced on the instance by one that hands the projected time embedding to norm2 as the op's
  ``emb`` prologue (or ``scale``/``shift`` epilogue) instead of adding it in a separate pass;
* a ``conv_norm_out`` GroupNorm followed by a ``conv_act`` SiLU on the same module (UNet2DModel,
  the VAE's encoder and decoder): GroupNormAct with the SiLU fused, ``conv_act`` -> Identity;
* a GroupNorm directly followed by a SiLU inside an ``nn.Sequential``: the same fusion;
* every other ``nn.GroupNorm`` (e.g. the ``group_norm`` of diffusers' ``Attention``): GroupNormAct
  without activation;
* diffusers ``Attention`` modules running the stock ``AttnProcessor2_0``/``AttnProcessor`` get
  :class:`FastgenAttnProcessor`, which computes self-attention through :func:`fastgen.nn.attention`
  (and hands any call it does not cover, e.g. with a mask or cross-attention, to the original).

The new modules share the original ``Parameter`` objects, so ``state_dict()`` keys and values, the
optimiser's view and ``.to()`` all behave as before; fastgen's own UNet is built on GroupNormAct and
has nothing to swap. :meth:`AccelerateHandle.undo` puts back the very same module objects.
A copy (``copy.deepcopy``, ``torch.save``/``torch.load`` of the whole model) of an accelerated model
is accelerated too but has no handle: undo the original before copying if the copy should not be.
"""
from __future__ import annotations

import weakref
from typing import Callable

import torch
from torch import nn

from .nn import GroupNormAct, attention

__all__ = ["accelerate", "restore", "AccelerateHandle", "FastgenAttnProcessor"]

# model -> its active handle. Kept outside the model so that copying or pickling an accelerated model
# copies the swapped layers but never a handle whose undo would act on the original.
_HANDLES: "weakref.WeakKeyDictionary[nn.Module, AccelerateHandle]" = weakref.WeakKeyDictionary()


def _if_alive(module: nn.Module, fn: Callable[[nn.Module], object]) -> Callable[[], None]:
    """``fn(module)`` later, unless the module is gone: undo records hold no strong references, so an
    accelerated model that is dropped without undo() is still freed."""
    ref = weakref.ref(module)

    def run() -> None:
        target = ref()
        if target is not None:
            fn(target)
    return run


def _is_diffusers(obj: object, class_name: str) -> bool:
    return any(c.__name__ == class_name and c.__module__.startswith("diffusers.") for c in type(obj).__mro__)


class AccelerateHandle:
    """What :func:`accelerate` changed, and how to change it back (``undo()``; also a context manager).

    Attributes: ``counts``, a dict of how many of each kind were swapped ("resnet", "norm_act",
    "group_norm", "attention_processor").
    """

    def __init__(self, model: nn.Module):
        self._model = weakref.ref(model)  # a strong one would keep the model alive through _HANDLES
        self.counts = {"resnet": 0, "norm_act": 0, "group_norm": 0, "attention_processor": 0}
        self._undo: list[Callable[[], None]] = []
        self.active = True

    def _set_child(self, parent: nn.Module, name: str, new: nn.Module) -> None:
        old = getattr(parent, name)
        setattr(parent, name, new)
        self._undo.append(_if_alive(parent, lambda p: setattr(p, name, old)))

    def undo(self) -> None:
        """Put every original module, forward and processor back, in reverse order. Idempotent."""
        if not self.active:
            return
        for fn in reversed(self._undo):
            fn()
        self._undo.clear()
        self.active = False
        model = self._model()
        if model is not None and _HANDLES.get(model) is self:
            del _HANDLES[model]

    def __enter__(self) -> "AccelerateHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.undo()

    def __repr__(self) -> str:
        return f"AccelerateHandle(active={self.active}, counts={self.counts})"


def _fused_resnet_forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None, *args, **kwargs) -> torch.Tensor:
    """diffusers' ResnetBlock2D.forward with norm1/norm2 as GroupNormAct(silu) and the embedding fused
    into norm2 (same math, same order as diffusers' own forward)."""
    h = self.norm1(input_tensor)
    if self.upsample is not None:
        input_tensor, h = self.upsample(input_tensor), self.upsample(h)
    elif self.downsample is not None:
        input_tensor, h = self.downsample(input_tensor), self.downsample(h)
    h = self.conv1(h)
    if self.time_emb_proj is not None and temb is not None:
        temb = self.time_emb_proj(temb if self.skip_time_act else self.nonlinearity(temb))
    if self.time_embedding_norm == "scale_shift":
        if temb is None:
            raise ValueError("temb must not be None when time_embedding_norm is 'scale_shift'")
        scale, shift = temb.to(h.dtype).chunk(2, dim=1)
        h = self.norm2(h, scale=scale, shift=shift)
    else:
        h = self.norm2(h, emb=None if temb is None else temb.to(h.dtype))
    h = self.conv2(self.dropout(h))
    if self.conv_shortcut is not None:
        input_tensor = self.conv_shortcut(input_tensor.contiguous() if self.training else input_tensor)
    return (input_tensor + h) / self.output_scale_factor


class _FusedResnetForward:
    """``block.forward`` while accelerated: a picklable stand-in for a bound method (torch.save of the
    whole model keeps working; a bound method would pickle by a name the block does not have)."""

    def __init__(self, block: nn.Module):
        self.block = block

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return _fused_resnet_forward(self.block, *args, **kwargs)


class FastgenAttnProcessor:
    """A diffusers attention processor computing self-attention with :func:`fastgen.nn.attention`.

    Covers the DDPM-style call (4-D or 3-D hidden states, no encoder states, no mask, no spatial
    norm, no q/k norms); any other call goes to ``fallback`` (the processor it replaced), unchanged.
    """

    def __init__(self, fallback):
        self.fallback = fallback

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if (encoder_hidden_states is not None or attention_mask is not None or args or kwargs
                or attn.spatial_norm is not None or attn.norm_q is not None or attn.norm_k is not None
                or hidden_states.dim() not in (3, 4)):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if hidden_states.dim() == 4:
            b, c, hgt, wid = hidden_states.shape
            hidden_states = hidden_states.view(b, c, hgt * wid).transpose(1, 2)
        b = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = k.shape[-1] // attn.heads
        q, k, v = (z.view(b, -1, attn.heads, head_dim).transpose(1, 2) for z in (q, k, v))
        out = attention(q, k, v).transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if residual.dim() == 4:
            out = out.transpose(-1, -2).reshape(residual.shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _swap_resnet(handle: AccelerateHandle, block: nn.Module) -> bool:
    if not (isinstance(block.norm1, nn.GroupNorm) and isinstance(block.norm2, nn.GroupNorm)
            and isinstance(block.nonlinearity, nn.SiLU) and block.time_embedding_norm in ("default", "scale_shift")):
        return False
    handle._set_child(block, "norm1", GroupNormAct.from_group_norm(block.norm1, "silu"))
    handle._set_child(block, "norm2", GroupNormAct.from_group_norm(block.norm2, "silu"))
    block.forward = _FusedResnetForward(block)
    handle._undo.append(_if_alive(block, lambda b: b.__dict__.pop("forward", None)))
    handle.counts["resnet"] += 1
    return True


def accelerate(model: nn.Module, *, attention_processors: bool = True) -> AccelerateHandle:
    """Swap, in place, the GroupNorm(+SiLU) layers of ``model`` (and diffusers' attention processors)
    for fastgen's fused ones; see the module docstring for the list. Returns the handle to ``undo()``.

    Outputs stay equal within float rounding. Raises ``ValueError`` if ``model`` is already
    accelerated (undo first), ``TypeError`` if it is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if model in _HANDLES:
        raise ValueError("model is already accelerated; call .undo() on its handle "
                         "(or fastgen.restore) first")
    handle = AccelerateHandle(model)
    for module in list(model.modules()):
        if _is_diffusers(module, "ResnetBlock2D"):
            _swap_resnet(handle, module)
        if isinstance(getattr(module, "conv_norm_out", None), nn.GroupNorm) and \
                isinstance(getattr(module, "conv_act", None), nn.SiLU):
            handle._set_child(module, "conv_norm_out", GroupNormAct.from_group_norm(module.conv_norm_out, "silu"))
            handle._set_child(module, "conv_act", nn.Identity())
            handle.counts["norm_act"] += 1
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in zip(names, names[1:]):
                if isinstance(module._modules[a], nn.GroupNorm) and isinstance(module._modules[b], nn.SiLU):
                    handle._set_child(module, a, GroupNormAct.from_group_norm(module._modules[a], "silu"))
                    handle._set_child(module, b, nn.Identity())
                    handle.counts["norm_act"] += 1
        if attention_processors and _is_diffusers(module, "Attention") and \
                type(getattr(module, "processor", None)).__name__ in ("AttnProcessor2_0", "AttnProcessor"):
            old = module.processor
            module.set_processor(FastgenAttnProcessor(old))
            handle._undo.append(_if_alive(module, lambda m, p=old: m.set_processor(p)))
            handle.counts["attention_processor"] += 1
    for module in list(model.modules()):  # whatever GroupNorm is left: no activation to fuse
        for name, child in list(module._modules.items()):
            if isinstance(child, nn.GroupNorm):
                handle._set_child(module, name, GroupNormAct.from_group_norm(child, None))
                handle.counts["group_norm"] += 1
    _HANDLES[model] = handle
    return handle


def restore(model: nn.Module) -> None:
    """Undo :func:`accelerate` on ``model``; raises ``ValueError`` if it is not accelerated."""
    handle = _HANDLES.get(model)
    if handle is None:
        raise ValueError("model is not accelerated by fastgen.accelerate (nothing to restore)")
    handle.undo()
