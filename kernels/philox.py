"""The in-kernel Gaussian: Philox4x32-10 + Box-Muller, the same numbers as fastgen/_rng.py."""
import triton
import triton.language as tl


@triton.jit
def philox_normal(seed, counter):
    """Standard normal float32 block for int64 ``counter`` block under int64 scalar ``seed``.

    tl.randint4x is Philox4x32-10 with key (seed_lo, seed_hi) and counter (lo, hi, 0, 0); the
    uniforms keep 24 bits so they are exact in float32 and never 0 or 1.
    """
    r0, r1, _, _ = tl.randint4x(seed, counter)
    u1 = ((r0 >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08  # 2**-24
    u2 = ((r1 >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08
    return tl.sqrt(-2.0 * tl.log(u1)) * tl.cos(6.283185307179586 * u2)
