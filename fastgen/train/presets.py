"""UNet presets of ``fastgen train diffusion``: name -> :class:`fastgen.models.UNet` keyword arguments.

``in_channels``, ``out_channels`` and ``image_size`` come from the data, not from the preset.
"""
from __future__ import annotations

__all__ = ["DIGITS_UNETS", "UNET_PRESETS", "unet_kwargs"]

# The digits DDPM per image size (benchmarks/run_digits_training.py): small enough to train in
# minutes on two CPU cores, big enough for clean strokes.
DIGITS_UNETS = {
    8: dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(), groups=4),
    16: dict(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,), groups=8),
    32: dict(base_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1, attention_resolutions=(8,), groups=8),
}

UNET_PRESETS = {
    **{f"digits{s}": kw for s, kw in DIGITS_UNETS.items()},
    # seconds-long smoke runs and tests: ~10k parameters
    "tiny": dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(), groups=4),
    # DDPM's 35.7M-parameter CIFAR-10 model (UNet.ddpm_cifar10's architecture, attention at 16x16 of 32x32)
    "ddpm-cifar10": dict(base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,),
                         heads=1, groups=32, eps=1e-6, flip_sin_to_cos=False, freq_shift=1.0, downsample_padding=0),
}


def unet_kwargs(preset: str | None, channels: int, image_size: int) -> dict:
    """The full UNet kwargs of ``preset`` for ``channels``-channel square images of ``image_size``.
    None picks ``digits<image_size>`` where one exists (8, 16, 32), else raises naming --preset."""
    if preset is None:
        preset = f"digits{image_size}"
        if preset not in UNET_PRESETS:
            raise ValueError(f"--preset: no default for {image_size}x{image_size} images; pick one of "
                             f"{sorted(UNET_PRESETS)}")
    if preset not in UNET_PRESETS:
        raise ValueError(f"--preset must be one of {sorted(UNET_PRESETS)}, got {preset!r}")
    kwargs = dict(UNET_PRESETS[preset], in_channels=channels, out_channels=channels, image_size=image_size)
    down = 2 ** (len(kwargs["channel_mult"]) - 1)
    if image_size % down:
        raise ValueError(f"--preset {preset} downsamples {len(kwargs['channel_mult']) - 1} times, so the image size "
                         f"must be divisible by {down}; the data is {image_size}x{image_size}")
    level_sizes = [image_size // 2 ** i for i in range(len(kwargs["channel_mult"]))]
    kwargs["attention_resolutions"] = tuple(r for r in kwargs["attention_resolutions"] if r in level_sizes)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
