"""fastgen: kernel-accelerated generative models in PyTorch.

Importing fastgen touches no GPU and compiles nothing; kernels load on first use.
"""
from ._impl import IMPLS, ImplUnavailableError, get_impl, set_impl

__version__ = "0.1.0"
__all__ = ["IMPLS", "ImplUnavailableError", "get_impl", "set_impl", "__version__"]
