"""Image grids for previews and result files: the one writer every trainer and benchmark script uses."""
from __future__ import annotations

import math

import torch

__all__ = ["image_grid"]


def image_grid(images: torch.Tensor, *, pad: int = 2, zoom: int = 1, columns: int | None = None):
    """(N, C, H, W) floating in [-1, 1], C 1 or 3 -> a PIL image: a grid of ``columns`` (default
    ceil(sqrt N)) tiles with black gaps of ``pad`` pixels, each pixel repeated ``zoom`` times per
    axis (nearest neighbour, so 8x8 digits stay visible). NaN shows as grey; values are clamped.
    Greyscale ("L") for C = 1, "RGB" for C = 3. Needs Pillow (a fastgen dependency)."""
    from PIL import Image

    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must have shape (N, 1 or 3, H, W), got {got}")
    for name, value, low in (("pad", pad, 0), ("zoom", zoom, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    n, c, h, w = images.shape
    cols = columns or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    pixels = ((images.detach().float().nan_to_num(0.0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    tiles = torch.zeros(rows * cols, c, h + pad, w + pad, dtype=torch.uint8)
    tiles[:n, :, pad:, pad:] = pixels  # each tile: a gap above and to the left of its image
    grid = tiles.view(rows, cols, c, h + pad, w + pad).permute(2, 0, 3, 1, 4)
    grid = grid.reshape(c, rows * (h + pad), cols * (w + pad))
    grid = torch.nn.functional.pad(grid, (0, pad, 0, pad))  # close the right and bottom edges
    if zoom > 1:
        grid = grid.repeat_interleave(zoom, 1).repeat_interleave(zoom, 2)
    array = grid.permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0] if c == 1 else array)  # uint8 (H, W) -> "L", (H, W, 3) -> "RGB"
