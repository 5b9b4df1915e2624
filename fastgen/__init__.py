"""fastgen: kernel-accelerated generative models in PyTorch.

Importing fastgen touches no GPU and compiles nothing; kernels load on first use.
``fastgen.accelerate(model)`` / ``fastgen.restore(model)`` (:mod:`fastgen.acceleration`) load on
first access.
"""
from ._impl import IMPLS, ImplUnavailableError, get_impl, set_impl

__version__ = "0.1.0"
__all__ = ["IMPLS", "ImplUnavailableError", "get_impl", "set_impl", "accelerate", "restore", "__version__"]


def __getattr__(name):
    if name in ("accelerate", "restore"):
        from . import acceleration

        return getattr(acceleration, name)
    raise AttributeError(f"module 'fastgen' has no attribute {name!r}")
