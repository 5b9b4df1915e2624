"""Training from the command line: ``fastgen train diffusion`` and ``fastgen train gan2d``.

    data.py       the training images (digits train split, a PNG folder, an npz) and step-indexed sharded batches
    presets.py    UNet presets by name
    diffusion.py  fastgen train diffusion: DiffusionTrainer, checkpoints + model config, resume, torchrun DDP
    gan2d.py      fastgen train gan2d: a recipe of fastgen.gan.recipes on the grid / ring, samples + scores
    cli.py        the argparse subcommands
"""
from .diffusion import train_diffusion
from .gan2d import train_gan2d

__all__ = ["train_diffusion", "train_gan2d"]
