"""The in-kernel Gaussian: Philox4x32-10 + Box-Muller, the same numbers as fastgen/_rng.py.

Stream positions 4p .. 4p + 3 share Philox counter p (tl.randint4x: key (seed_lo, seed_hi),
counter (lo(p), hi(p), 0, 0)). Words (r0, r1) give Box-Muller's pair for positions 4p (R cos) and
4p + 1 (R sin), (r2, r3) the pair for 4p + 2 and 4p + 3. :func:`philox_normal_block` draws a tile
of consecutive positions with one Philox call per four elements and one log and one sin/cos pair
per two (two calls per four elements when the tile does not start on a multiple of 4; see there).
"""
import triton
import triton.language as tl


@triton.jit
def _unit(word):
    """Top 24 bits of a uint32 word as float32 in (0, 1): ((w >> 8) + 0.5) / 2**24, exact."""
    return ((word >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08  # 2**-24


@triton.jit
def _normal4(seed, call):
    """The four normals of Philox counters ``call`` (int64 tensor): z(4p), z(4p + 1), z(4p + 2), z(4p + 3)."""
    r0, r1, r2, r3 = tl.randint4x(seed, call)
    radius_a = tl.sqrt(-2.0 * tl.log(_unit(r0)))
    angle_a = 6.283185307179586 * _unit(r1)
    radius_b = tl.sqrt(-2.0 * tl.log(_unit(r2)))
    angle_b = 6.283185307179586 * _unit(r3)
    return (radius_a * tl.cos(angle_a), radius_a * tl.sin(angle_a),
            radius_b * tl.cos(angle_b), radius_b * tl.sin(angle_b))


@triton.jit
def _pick(shift, v1, v2, v3):
    """v1, v2 or v3 for shift 1, 2 or 3 (a uniform scalar)."""
    return tl.where(shift == 1, v1, tl.where(shift == 2, v2, v3))


@triton.jit
def _normal4_at(seed, call, shift):
    """The normals at positions 4 * call + shift + j, j = 0..3 (``shift`` = 0..3, a uniform scalar):
    Philox counter ``call`` alone when shift == 0; else lanes shift .. 3 of it and 0 .. shift - 1
    of counter call + 1 (a runtime branch, uniform over the program)."""
    z0, z1, z2, z3 = _normal4(seed, call)
    if shift != 0:
        n0, n1, n2, n3 = _normal4(seed, call + 1)
        # lane j takes word shift + j of (z0, z1, z2, z3, n0, n1, n2, n3)
        w0 = _pick(shift, z1, z2, z3)
        w1 = _pick(shift, z2, z3, n0)
        w2 = _pick(shift, z3, n0, n1)
        w3 = _pick(shift, n0, n1, n2)
        z0, z1, z2, z3 = w0, w1, w2, w3
    return z0, z1, z2, z3


@triton.jit
def philox_normal_block(seed, first, BLOCK: tl.constexpr, VEC: tl.constexpr):
    """Standard normals of int64 stream positions ``first`` .. ``first + BLOCK - 1`` under int64
    scalar ``seed``: float32 (BLOCK,).

    VEC (4 or 8, dividing BLOCK): consecutive elements per thread, 16 bytes of the caller's loads
    (4 for float32, 8 for 16-bit dtypes), so that the noise tile has the layout of the loads and
    needs no shuffle through shared memory. Each group of 4 positions comes from one Philox call
    (both Box-Muller outputs of both word pairs) when ``first`` is a multiple of 4: the usual case,
    as offsets advance by numel and samples hold a multiple of 4 elements. Otherwise a group
    straddles two counters and costs two calls (still half of one call per element).
    """
    shift = first & 3
    if VEC == 8:
        call = (first >> 2) + 2 * tl.arange(0, BLOCK // 8).to(tl.int64)
        a0, a1, a2, a3 = _normal4_at(seed, call, shift)
        b0, b1, b2, b3 = _normal4_at(seed, call + 1, shift)
        # join adds an innermost axis held by one thread; lane 4i + 2j + k of a row is (a, b)[i] word 2j + k
        z = tl.join(tl.join(tl.join(a0, b0), tl.join(a2, b2)), tl.join(tl.join(a1, b1), tl.join(a3, b3)))
    else:
        tl.static_assert(VEC == 4, "VEC must be 4 or 8")
        z0, z1, z2, z3 = _normal4_at(seed, (first >> 2) + tl.arange(0, BLOCK // 4).to(tl.int64), shift)
        # [r, i, j] = lane 2i + j of row r
        z = tl.join(tl.join(z0, z2), tl.join(z1, z3))
    return tl.reshape(z, (BLOCK,))


@triton.jit
def philox_uniform(seed, counter):
    """Uniform float32 in (0, 1) for int64 stream positions ``counter``: word r_(counter mod 4) of
    Philox call counter >> 2, top 24 bits (fastgen/_rng.py: philox_uniform_ref). The gradient
    penalty draws one per program (a scalar ``counter``), so nothing is wasted per element."""
    r0, r1, r2, r3 = tl.randint4x(seed, counter >> 2)
    lane = counter & 3
    w = tl.where(lane == 0, r0, tl.where(lane == 1, r1, tl.where(lane == 2, r2, r3)))
    return _unit(w)
