"""Data sets shipped or generated in the package (nothing is downloaded).

    toy2d   2-D toy data for GANs: rings and grids of Gaussians (with their :class:`Mixture` specs
            for mode-coverage metrics), the swiss roll, two moons; an endless batch iterator.
    digits  the UCI 8x8 handwritten digits (1,797 images, CC BY 4.0), loader and batch iterator.
"""
from .digits import NUM_DIGITS, digit_batches, load_digits, split_indices
from .toy2d import (TOY_DATASETS, TOY_MIXTURES, Mixture, grid_mixture, grid_of_gaussians, ring_mixture,
                    ring_of_gaussians, swiss_roll, toy_batches, two_moons)

__all__ = ["Mixture", "ring_mixture", "grid_mixture", "ring_of_gaussians", "grid_of_gaussians", "swiss_roll",
           "two_moons", "TOY_DATASETS", "TOY_MIXTURES", "toy_batches", "NUM_DIGITS", "digit_batches", "load_digits",
           "split_indices"]
