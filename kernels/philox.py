"""The in-kernel Gaussian: Philox4x32-10 + Box-Muller, the same numbers as fastgen/_rng.py."""
import triton
import triton.language as tl


@triton.jit
def philox_normal(seed, counter):
    """Standard normal float32 block for the int64 stream positions ``counter`` under int64 scalar ``seed``.

    Positions 4p .. 4p + 3 share Philox counter p: tl.randint4x is Philox4x32-10 with key
    (seed_lo, seed_hi) and counter (lo(p), hi(p), 0, 0). Its words (r0, r1) serve positions 4p and
    4p + 1, (r2, r3) positions 4p + 2 and 4p + 3: 24-bit uniforms (exact in float32), then Box-Muller's
    R cos(theta) for the even position and R sin(theta) for the odd one. Four normals per Philox
    call is what makes the CPU generator (csrc/cpu/philox_block.h) cheap; here it costs nothing.
    """
    r0, r1, r2, r3 = tl.randint4x(seed, counter >> 2)
    lane = counter & 3
    w_radius = tl.where(lane < 2, r0, r2)
    w_angle = tl.where(lane < 2, r1, r3)
    u1 = ((w_radius >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08  # 2**-24
    u2 = ((w_angle >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08
    radius = tl.sqrt(-2.0 * tl.log(u1))
    angle = 6.283185307179586 * u2
    return radius * tl.where((lane & 1) == 1, tl.sin(angle), tl.cos(angle))


@triton.jit
def philox_uniform(seed, counter):
    """Uniform float32 in (0, 1) for int64 stream positions ``counter``: word r_(counter mod 4) of
    Philox call counter >> 2, top 24 bits (fastgen/_rng.py: philox_uniform_ref)."""
    r0, r1, r2, r3 = tl.randint4x(seed, counter >> 2)
    lane = counter & 3
    w = tl.where(lane == 0, r0, tl.where(lane == 1, r1, tl.where(lane == 2, r2, r3)))
    return ((w >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08  # 2**-24
