"""Upsample, pad, FIR-filter and downsample a batch of images in one pass (StyleGAN2's upfirdn2d).

Each output pixel is a correlation of the effective 2-D filter g (the caller's filter, flipped
unless flip_filter, times its gain; a separable filter as its outer product) with the upsampled,
padded image z, read straight from x:

    y[oy, ox] = sum_{ty, tx} g[ty, tx] * z[oy * down_y + ty, ox * down_x + tx]
    z[u, v]   = x[(u - pad_y0) / up_y, (v - pad_x0) / up_x] where both divide exactly and land
                inside x, else 0 (the inserted zeros and the padding are never materialised)

One program computes a BLOCK_H x BLOCK_W tile of one (sample, channel) plane, accumulating in
float32 over the taps (a loop, so a 12x12 filter costs no compile-time unrolling).
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _upfirdn2d_kernel(x_ptr, g_ptr, y_ptr, H, W, OH, OW, KH, KW, up_y, up_x, down_y, down_x, pad_y0, pad_x0,
                      BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64)
    oy = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    ox = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    out_mask = (oy < OH) & (ox < OW)
    x_plane = x_ptr + plane * H * W
    acc = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
    for ty in range(0, KH):
        u = oy * down_y + ty - pad_y0  # row in the upsampled image
        iy = u // up_y  # only used where u >= 0 and up_y divides u (Python and C division agree there)
        row_ok = (u >= 0) & (u % up_y == 0) & (iy < H)
        for tx in range(0, KW):
            v = ox * down_x + tx - pad_x0
            ix = v // up_x
            ok = row_ok & (v >= 0) & (v % up_x == 0) & (ix < W) & out_mask
            tap = tl.load(g_ptr + ty * KW + tx)
            acc += tap * tl.load(x_plane + iy * W + ix, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + plane * OH * OW + oy * OW + ox, acc.to(y_ptr.dtype.element_ty), mask=out_mask)


def upfirdn2d(x: torch.Tensor, g: torch.Tensor, up: tuple, down: tuple, pad: tuple, y: torch.Tensor) -> None:
    """x (B, C, H, W) contiguous; g (KH, KW) float32 contiguous, the effective correlation filter;
    up / down (x, y); pad (x0, x1, y0, y1) with respect to the upsampled image; y (B, C, OH, OW)
    contiguous."""
    B, C, H, W = x.shape
    OH, OW = y.shape[2:]
    KH, KW = g.shape
    block_w = min(64, triton.next_power_of_2(OW))
    block_h = min(max(1, 1024 // block_w), triton.next_power_of_2(OH))
    grid = (B * C, triton.cdiv(OH, block_h), triton.cdiv(OW, block_w))
    _upfirdn2d_kernel[grid](x, g, y, H, W, OH, OW, KH, KW, up[1], up[0], down[1], down[0], pad[2], pad[0],
                            BLOCK_H=block_h, BLOCK_W=block_w, num_warps=4)
