"""vq_nearest (reference and Triton) against exact float64 distances and torch.cdist; VectorQuantizer
against diffusers and hand computations; the gated PixelCNN's causality; VQ-VAE / VQ-VAE-2 shapes."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fastgen.models import VQVAE, VQVAE2, GatedPixelCNN
from fastgen.nn import VectorQuantizer
from fastgen.nn.vector_quantizer import code_statistics
from fastgen.ops import vq_nearest, vq_nearest_ref
from helpers import KERNEL_DTYPES, impl_params
from fastgen.ops.vq_nearest import IMPLS, _vq_nearest_op

pytestmark = pytest.mark.usefixtures("one_thread")

AWKWARD = [(1, 1, 3),  # minimal
           (1, 7, 3),
           (37, 1, 5),  # one code
           (65, 300, 64),  # ragged row and code tiles
           (70, 40, 129)]  # D past a power of two: masked D blocks


def exact_sq_dist(x, c):
    """(N, K) squared distances in float64 from the inputs' values."""
    return ((x.double()[:, None, :] - c.double()[None, :, :]) ** 2).sum(-1)


def assert_nearest(idx, x, c, rel=1e-5):
    """Each index is a nearest code up to float32 rounding of the score, and the exact argmin wherever the
    best code wins by more than that margin."""
    d = exact_sq_dist(x, c)
    best, exact = d.min(1)
    chosen = d.gather(1, idx[:, None]).squeeze(1)
    scale = (x.double() ** 2).sum(1) + (c.double() ** 2).sum(1).max()  # the size of the float32 score terms
    tol = rel * scale
    bad = chosen - best > tol
    assert not bad.any(), f"{int(bad.sum())} rows picked a code farther than float32 rounding allows"
    second = d.scatter(1, exact[:, None], float("inf")).min(1).values if c.shape[0] > 1 else best + 2 * tol + 1
    clear = second - best > tol
    assert torch.equal(idx[clear], exact[clear]), "a clearly nearest code was missed"


@pytest.mark.parametrize("n,k,d", AWKWARD)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_reference_matches_exact_and_cdist(n, k, d, dtype):
    x, c = torch.randn(n, d).to(dtype), torch.randn(k, d).to(dtype)
    idx = vq_nearest_ref(x, c)
    assert idx.dtype == torch.int64 and idx.shape == (n,)
    assert_nearest(idx, x, c)
    # cdist of the float32 copies (torch 2.13 has no bfloat16 cdist on the CPU); random data has no near-ties
    assert torch.equal(idx, torch.cdist(x.float(), c.float()).argmin(1))


def test_exact_ties_go_to_the_lowest_index():
    # small integers: every score is exact in float32, so ties are real ties in every implementation
    x = torch.randint(-3, 4, (200, 3)).float()
    c = torch.randint(-2, 3, (60, 3)).float()
    c = torch.cat([c, c])  # duplicate codes: the second copy must never win
    expected = exact_sq_dist(x, c).argmin(1)  # torch.argmin: the first minimum
    for chunk in (None, 7, 59, 121):
        idx = vq_nearest_ref(x, c) if chunk is None else vq_nearest_ref(x, c, chunk_elements=chunk)
        assert torch.equal(idx, expected), f"chunk_elements={chunk}"
    assert torch.equal(vq_nearest_ref(x[:10], c, chunk_elements=1), expected[:10])  # one score per tile
    assert (expected < 60).all()


@pytest.mark.parametrize("chunk", [1, 5, 64, 299, 1000])
def test_chunking_does_not_change_the_answer(chunk):
    x, c = torch.randn(13, 8), torch.randn(300, 8)
    assert torch.equal(vq_nearest_ref(x, c, chunk_elements=chunk), vq_nearest_ref(x, c))


def test_reference_memory_stays_within_its_chunk():
    """Peak RSS of the chunked reference vs the N x K matrix it avoids (a scaled-down N=262144, K=8192)."""
    script = textwrap.dedent("""
        import json, torch
        from fastgen.ops import vq_nearest_ref
        torch.set_num_threads(1)
        torch.manual_seed(0)
        x, c = torch.randn(16384, 16), torch.randn(4096, 16)  # N x K float32 = 256 MiB
        vq_nearest_ref(x[:64], c[:64])
        def peak_rss():  # MiB: VmHWM, the high-water mark that /proc/self/clear_refs resets
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
        def peak_growth(fn):
            # a high-water mark: an import that peaked higher than the measurement would hide it, so
            # reset the mark to the current RSS first (Linux >= 4.0; getrusage's ru_maxrss never resets)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            before = peak_rss()
            fn()
            return peak_rss() - before
        chunked = peak_growth(lambda: vq_nearest_ref(x, c, chunk_elements=1 << 20))  # 4 MiB tiles
        full = peak_growth(lambda: vq_nearest_ref(x, c, chunk_elements=x.shape[0] * c.shape[0]))  # one N x K tile
        print(json.dumps({"chunked": chunked, "full": full}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    growth = json.loads(done.stdout.strip().splitlines()[-1])
    assert growth["chunked"] < 64, growth  # one 4 MiB tile, BLAS buffers and allocator slack (~24 MiB seen)
    assert growth["full"] > 200, growth  # the measurement can see the matrix: the test is not blind


# small tiles: ragged row / code tiles and the D loop (D > BLOCK_D, masked last slice) on small shapes
TRITON_CASES = ([pytest.param(n, k, d, None, id=f"{n}x{k}x{d}-default-tiles") for n, k, d in AWKWARD]
                + [pytest.param(n, k, d, (16, 16, 16), id=f"{n}x{k}x{d}-small-tiles")
                   for n, k, d in ((1, 1, 3), (40, 50, 40), (20, 40, 129))])


@pytest.mark.parametrize("n,k,d,tiles", TRITON_CASES)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_triton_matches_reference(n, k, d, dtype, tiles):
    pytest.importorskip("triton")
    from fastgen import _impl

    if _impl.unavailable_reason("triton", torch.device("cpu")) is not None:
        pytest.skip("triton on cpu needs TRITON_INTERPRET=1 (tests/conftest.py sets it where there is no GPU)")
    from fastgen.kernels import vq_nearest as kernel
    from fastgen.ops.vq_nearest import code_norms

    x, c = torch.randn(n, d).to(dtype), torch.randn(k, d).to(dtype)
    out = torch.full((n,), -1, dtype=torch.int64)
    kernel.vq_nearest(x, c, code_norms(c), out, tiles=tiles)
    assert_nearest(out, x, c)
    assert torch.equal(out, vq_nearest_ref(x, c))  # the same float32 problem; random data has no near-ties


@pytest.mark.parametrize("device,impl", [p for p in impl_params() if p.values[1] in IMPLS])
def test_ties_nan_and_strides_per_impl(device, impl):
    x = torch.randint(-3, 4, (70, 5), device=device).float()
    c = torch.randint(-2, 3, (40, 5), device=device).float()
    c = torch.cat([c, c])
    assert torch.equal(vq_nearest(x, c, impl=impl), exact_sq_dist(x, c).argmin(1))
    # non-contiguous rows and a transposed codebook are read through their strides
    wide = torch.randn(33, 10, device=device)
    codes_t = torch.randn(5, 21, device=device)
    assert torch.equal(vq_nearest(wide[:, ::2], codes_t.t(), impl=impl),
                       vq_nearest(wide[:, ::2].contiguous(), codes_t.t().contiguous(), impl=impl))
    # NaN: a NaN row maps to 0; a NaN code attracts every row (torch.argmin's rule, as cdist + argmin)
    xn, cn = torch.randn(6, 4, device=device), torch.randn(9, 4, device=device)
    xn[2] = float("nan")
    assert vq_nearest(xn, cn, impl=impl)[2].item() == 0
    cn[5, 1] = float("nan")
    assert torch.equal(vq_nearest(xn, cn, impl=impl), torch.cdist(xn, cn).argmin(1))
    assert (vq_nearest(xn, cn, impl=impl) == 5).sum() == 5  # row 2 is all NaN: index 0


def test_bad_input():
    x, c = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="feature dimension D=3"):
        vq_nearest(x, torch.randn(5, 4))
    with pytest.raises(ValueError, match="at least one code"):
        vq_nearest(x, torch.randn(0, 3))
    with pytest.raises(TypeError, match="codebook must have x's dtype"):
        vq_nearest(x, c.half())
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        vq_nearest(x.long(), c)
    with pytest.raises(ValueError, match="x must be 2-D"):
        vq_nearest(torch.randn(2, 3, 4, 4), c)
    with pytest.raises(ValueError, match="chunk_elements must be >= 1"):
        vq_nearest_ref(x, c, chunk_elements=0)
    assert vq_nearest(torch.randn(0, 3), c).shape == (0,)
    assert torch.equal(vq_nearest(x.double(), c.double()), exact_sq_dist(x, c).argmin(1))  # float64: reference


def test_opcheck():
    torch.library.opcheck(_vq_nearest_op, (torch.randn(9, 5), torch.randn(4, 5), "reference"))


# --- VectorQuantizer ---------------------------------------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True])
def test_quantizer_matches_diffusers_and_puts_beta_where_it_says(legacy):
    from diffusers.models.autoencoders.vae import VectorQuantizer as DiffusersVQ

    beta, k, d = 0.3, 12, 4
    ours = VectorQuantizer(k, d, beta=beta, legacy=legacy)
    theirs = DiffusersVQ(k, d, beta=beta, legacy=legacy)
    with torch.no_grad():
        theirs.embedding.weight.copy_(torch.randn(k, d))
        ours.codebook.copy_(theirs.embedding.weight)
    z = torch.randn(2, d, 3, 5)
    g = torch.randn(2, d, 3, 5)
    z1, z2 = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    out = ours(z1)
    q2, loss2, (_, _, idx2) = theirs(z2)
    torch.testing.assert_close(out.quantized, q2)
    torch.testing.assert_close(out.loss, loss2)
    assert torch.equal(out.indices.reshape(-1), idx2.reshape(-1))
    ((out.quantized * g).sum() + out.loss).backward()
    ((q2 * g).sum() + loss2).backward()
    torch.testing.assert_close(z1.grad, z2.grad)
    torch.testing.assert_close(ours.codebook.grad, theirs.embedding.weight.grad)
    # by hand: straight-through g plus the commitment term's gradient 2 (z - e) / numel, weighted beta
    # in the paper's form and 1 in the legacy one; the codebook term's weight is the other one
    e = ours.lookup(out.indices)
    w_commit, w_code = (1.0, beta) if legacy else (beta, 1.0)
    torch.testing.assert_close(z1.grad, g + w_commit * 2 * (z - e) / z.numel())
    grad_e = -w_code * 2 * (z - e) / z.numel()
    expected = torch.zeros(k, d).index_add_(0, out.indices.reshape(-1), grad_e.movedim(1, -1).reshape(-1, d))
    torch.testing.assert_close(ours.codebook.grad, expected)


def test_ema_update_by_hand():
    k, d, decay, eps = 3, 2, 0.9, 1e-3
    vq = VectorQuantizer(k, d, ema=True, decay=decay, eps=eps)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
        vq.ema_sums.copy_(vq.codebook)
    z = torch.tensor([[1.0, 1.0], [-1.0, 0.0], [9.0, 1.0], [0.5, 0.5]])  # codes 0, 0, 1, 0; code 2 unused
    out = vq(z)
    assert out.indices.tolist() == [0, 0, 1, 0]
    counts = [decay * 1 + (1 - decay) * 3, decay * 1 + (1 - decay) * 1, decay * 1]
    sums = [[(1 - decay) * 0.5, (1 - decay) * 1.5], [decay * 10 + (1 - decay) * 9, (1 - decay) * 1.0],
            [0.0, decay * 10]]
    total = sum(counts)
    smoothed = [(n + eps) / (total + k * eps) * total for n in counts]
    expected = torch.tensor([[s / smoothed[i] for s in sums[i]] for i in range(k)])
    torch.testing.assert_close(vq.ema_counts, torch.tensor(counts))
    torch.testing.assert_close(vq.codebook.detach(), expected)
    torch.testing.assert_close(out.quantized, expected[[0, 0, 1, 0]])  # the updated codes are output
    torch.testing.assert_close(out.loss, 0.25 * ((z - expected[[0, 0, 1, 0]]) ** 2).mean())
    assert not vq.codebook.requires_grad


def test_dead_code_restart():
    vq = VectorQuantizer(4, 2, restart_after=2)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]]))
    z = torch.rand(16, 2)
    vq(z)
    assert vq.codebook[3].tolist() == [100.0, 100.0] and vq.unused_steps[3] == 1
    vq(z)  # second step unused: replaced by one of the batch's vectors
    assert (vq.codebook[3] == z).all(1).any() and vq.unused_steps[3] == 0
    steps, codes = vq.unused_steps.clone(), vq.codebook.detach().clone()
    vq.eval()
    vq(torch.full((3, 2), 50.0))  # no restarts or counting outside training
    assert torch.equal(vq.unused_steps, steps) and torch.equal(vq.codebook.detach(), codes)


def test_perplexity_and_usage():
    k = 8
    perplexity, usage = code_statistics(torch.arange(k).repeat(5), k)
    torch.testing.assert_close(perplexity, torch.tensor(float(k)))
    assert usage == 1.0
    perplexity, usage = code_statistics(torch.full((10,), 3), k)
    torch.testing.assert_close(perplexity, torch.tensor(1.0))
    assert usage == 1 / k
    perplexity, _ = code_statistics(torch.tensor([0, 0, 0, 1]), k)  # exp of -(3/4 log 3/4 + 1/4 log 1/4)
    torch.testing.assert_close(perplexity, torch.tensor(0.75 ** -0.75 * 0.25 ** -0.25))


def test_kmeans_init_finds_clusters_and_bchw_layout():
    centres = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    pts = centres[torch.arange(60) % 3] + 0.05 * torch.randn(60, 3)
    vq = VectorQuantizer(3, 3, kmeans_init=True, ema=True)
    z = pts.reshape(2, 5, 6, 3).permute(0, 3, 1, 2)  # BCHW: channels in dim 1
    out = vq(z)
    dist = torch.cdist(vq.codebook.detach(), centres)
    assert (dist.min(1).values < 0.2).all() and len(set(dist.argmin(1).tolist())) == 3
    assert out.indices.shape == (2, 5, 6) and out.quantized.shape == z.shape
    assert torch.equal(out.indices.reshape(-1), vq_nearest(pts, vq.codebook.detach()))
    assert bool(vq.initialized)


def test_cosine_quantizer_uses_unit_vectors():
    vq = VectorQuantizer(6, 4, cosine=True)
    z = 3 * torch.randn(20, 4)
    out = vq(z)
    torch.testing.assert_close(out.quantized.norm(dim=1), torch.ones(20))
    sims = torch.nn.functional.normalize(z, dim=1) @ torch.nn.functional.normalize(vq.codebook, dim=1).t()
    assert torch.equal(out.indices, sims.argmax(1))


def test_quantizer_bad_input():
    with pytest.raises(ValueError, match="z must have 4 channels"):
        VectorQuantizer(5, 4)(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="decay must lie"):
        VectorQuantizer(5, 4, ema=True, decay=1.0)
    with pytest.raises(ValueError, match="legacy"):
        VectorQuantizer(5, 4, ema=True, legacy=True)


# --- PixelCNN prior and the models -----------------------------------------------------------------

@pytest.mark.parametrize("kernel", [3, 5])
def test_pixelcnn_is_causal(kernel):
    prior = GatedPixelCNN(7, dim=8, layers=3, kernel=kernel).eval()
    codes = torch.randint(0, 7, (1, 4, 5))
    base = prior.logits(codes)
    for q in range(20):  # change the code at raster position q
        changed = codes.clone().view(-1)
        changed[q] = (changed[q] + 1) % 7
        diff = (prior.logits(changed.view(1, 4, 5)) - base).abs().amax(1).view(-1)
        assert (diff[:q + 1] == 0).all(), f"position <= {q} sees position {q}"
        if q < 19:
            assert diff[q + 1:].max() > 0, f"no later position sees position {q}"
        if q % 5 < 4:
            assert diff[q + 1] > 0, "the next pixel in the row must see this one (no blind spot)"


def test_models_shapes_gradients_and_sampling():
    x = torch.randn(3, 1, 8, 8)
    vqvae = VQVAE(hidden=16, num_codes=10, code_dim=4, res_blocks=1, ema=True)
    out = vqvae(x)
    assert out.reconstruction.shape == x.shape and out.indices.shape == (3, 4, 4)
    out.loss.backward()
    assert vqvae.encoder[0][0].weight.grad.abs().sum() > 0  # the straight-through path reaches the encoder
    prior = GatedPixelCNN(10, dim=8, layers=2)
    assert vqvae.sample(prior, 2, (8, 8), generator=torch.Generator().manual_seed(0)).shape == (2, 1, 8, 8)

    two = VQVAE2(hidden=16, num_codes=10, code_dim=4, res_blocks=1)
    out = two(x)
    top, bottom = out.indices
    assert out.reconstruction.shape == x.shape and top.shape == (3, 2, 2) and bottom.shape == (3, 4, 4)
    out.loss.backward()
    top_prior = GatedPixelCNN(10, dim=8, layers=2)
    bottom_prior = GatedPixelCNN(10, dim=8, layers=2, cond_channels=4)
    assert bottom_prior.loss(bottom, two.bottom_condition(top)).ndim == 0
    assert two.sample(top_prior, bottom_prior, 2, (8, 8)).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="multiples of 4"):
        two(torch.randn(1, 1, 6, 6))
    with pytest.raises(ValueError, match="cond must be given"):
        bottom_prior.loss(bottom)
