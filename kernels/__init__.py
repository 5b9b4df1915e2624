"""Triton device code for fastgen, installed as ``fastgen.kernels``.

Kernels and their launchers only: no autograd, no nn.Module, no imports from fastgen.
Importing this package imports triton; ``fastgen`` imports it only when a Triton kernel runs.
"""
