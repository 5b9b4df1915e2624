"""Input checks shared by every op. Each error names the argument and what was expected."""
from __future__ import annotations

import operator

import torch

_FLOATING = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensor(name: str, x: object, *, min_dim: int = 0) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s) (batch first), got shape {tuple(x.shape)}")
    return x


def check_int(name: str, value: object, minimum: int, why: str = "") -> int:
    """``value`` as a Python int >= ``minimum`` (ints and integer scalars such as numpy's or 0-d
    tensors; not bool). ``why`` is appended to the bound in the error."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}{why}, got {value}")
    return value


def check_floating(name: str, x: object, *, min_dim: int = 1) -> torch.Tensor:
    x = check_tensor(name, x, min_dim=min_dim)
    if x.dtype not in _FLOATING:
        raise TypeError(f"{name} must be a floating tensor (float32, float16, bfloat16 or float64), got {x.dtype}")
    return x


def check_like(name: str, x: object, ref_name: str, ref: torch.Tensor) -> torch.Tensor:
    """``x`` must be a floating tensor with ``ref``'s shape, on ``ref``'s device."""
    x = check_floating(name, x, min_dim=0)
    if x.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(x.shape)}")
    check_same_device(name, x, ref_name, ref)
    return x


def check_same_device(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if x.device != ref.device:
        raise ValueError(f"{name} is on {x.device} but {ref_name} is on {ref.device}; they must share a device")


def check_table(name: str, table: object, ref_name: str, ref: torch.Tensor) -> torch.Tensor:
    """A 1-D schedule table (e.g. alphas_cumprod) on ``ref``'s device, returned as contiguous float32."""
    table = check_floating(name, table, min_dim=1)
    if table.dim() != 1 or table.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D table, got shape {tuple(table.shape)}")
    check_same_device(name, table, ref_name, ref)
    return table.to(torch.float32).contiguous()


def check_timesteps(name: str, t: object, batch: int, num_train: int, device: torch.device) -> torch.Tensor:
    """Integer timesteps, one per sample or one for all, as an int64 tensor of shape (batch,).

    Accepts a Python int, a 0-d tensor or a tensor of shape (1,) or (batch,). A broadcast timestep
    comes back expanded (stride 0), not copied. Values are range-checked when that costs no
    device synchronisation (Python ints and CPU tensors, outside torch.compile); elsewhere the
    kernels clamp the index into the table so that a bad value can never read out of bounds.
    """
    if isinstance(t, bool) or not isinstance(t, (int, torch.Tensor)):
        raise TypeError(f"{name} must be an int or an integer tensor, got {type(t).__name__}")
    if isinstance(t, int):
        if not 0 <= t < num_train:
            raise ValueError(f"{name} must lie in [0, {num_train - 1}] (the table's length), got {t}")
        t = torch.tensor([t], dtype=torch.int64).to(device, non_blocking=True)
    else:
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor (timestep indices), got {t.dtype}")
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, batch)):
            raise ValueError(f"{name} must be a scalar or of shape ({batch},) (one per sample), got {tuple(t.shape)}")
        if t.device.type == "cpu" and t.numel() > 0 and not torch.compiler.is_compiling():
            lo = hi = int(t) if t.numel() == 1 else None  # one read instead of two reductions: a step's common case
            if lo is None:
                lo, hi = int(t.min()), int(t.max())
            if lo < 0 or hi >= num_train:
                raise ValueError(f"{name} must lie in [0, {num_train - 1}] (the table's length), got values in [{lo}, {hi}]")
        if t.device != device:
            t = t.to(device, non_blocking=True)
        t = t.to(torch.int64).reshape(-1)
    return t.expand(batch) if t.shape[0] == 1 else t


def check_seed(name: str, seed: object, device: torch.device) -> torch.Tensor | None:
    """None, a non-negative int < 2**63, or an int64 Philox state tensor [seed, offset] on ``device``."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, torch.Tensor)):
        raise TypeError(f"{name} must be None, an int or an int64 tensor [seed, offset], got {type(seed).__name__}")
    if isinstance(seed, int):
        if not 0 <= seed < 2**63:
            raise ValueError(f"{name} must lie in [0, 2**63), got {seed}")
        return torch.tensor([seed, 0], dtype=torch.int64).to(device, non_blocking=True)
    if seed.dtype != torch.int64 or seed.shape != (2,):
        raise ValueError(f"{name} as a tensor must be an int64 Philox state [seed, offset] of shape (2,), got {seed.dtype} {tuple(seed.shape)}")
    if seed.device != device:
        raise ValueError(f"{name} is on {seed.device} but the samples are on {device}; they must share a device")
    return seed.contiguous()
