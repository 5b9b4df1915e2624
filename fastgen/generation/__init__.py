"""Batch generation: ``fastgen generate`` (see :func:`generate`), one image per seed, sharded over
processes, resumable, reproducible by contract.

    seeds.py      --seeds parsing, units of work and their split over ranks
    models.py     MODEL: diffusers pipeline / UNet2DModel folder / fastgen training checkpoint
    schedulers.py --scheduler names and aliases
    noise.py      the per-seed noise rule
    writers.py    PNG and npz outputs, written atomically
    manifest.py   manifest.json: what the folder's images depend on, and their provenance
    loop.py       the loop, on torch.distributed

The image of seed s depends only on the model, the scheduler configuration, the steps, s, the dtype and
the device type; on CPU with the model's own scheduler it equals the diffusers pipeline's image for
``batch_size=1, generator=torch.Generator().manual_seed(s)`` (to 8-bit rounding).
"""
from .loop import DTYPES, GenerateResult, generate, parse_class_labels
from .manifest import ManifestMismatch
from .models import LoadedModel, load_model, write_model_config
from .schedulers import ALIASES, resolve_scheduler_name
from .seeds import format_seeds, parse_seeds
from .writers import png_path, to_uint8

__all__ = ["generate", "GenerateResult", "DTYPES", "parse_class_labels", "ManifestMismatch", "LoadedModel",
           "load_model", "write_model_config", "ALIASES", "resolve_scheduler_name", "parse_seeds", "format_seeds",
           "png_path", "to_uint8"]
