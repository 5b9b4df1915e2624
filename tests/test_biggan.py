"""BigGAN (fastgen.models.biggan): conditional BN and the hierarchical latent against their formulas, the
projection discriminator, SAGAN attention against direct math, spectral norm, the orthogonal
regulariser and its gradient, truncation, a few GANTrainer steps, and bad input."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from fastgen.gan import GANTrainer
from fastgen.models.biggan import (BigGANDiscriminator, BigGANGenerator, ConditionalBatchNorm2d, SelfAttention,
                                   orthogonal_regularization, truncate_latent)
from helpers import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(resolution=8, attention=8, c_dim=10):
    blocks = resolution.bit_length() - 3
    G = BigGANGenerator(resolution, 1, c_dim=c_dim, latent_dim=4 * (blocks + 1), ch=8, shared_dim=6,
                        attention_resolution=attention)
    D = BigGANDiscriminator(resolution, 1, c_dim=c_dim, ch=8, attention_resolution=attention // 2)
    return G, D


def onehot(labels, c_dim=10):
    return F.one_hot(torch.as_tensor(labels), c_dim).float()


@pytest.mark.parametrize("resolution,attention", [(8, 8), (16, 8), (32, 16)])
def test_shapes(resolution, attention):
    G, D = tiny(resolution, attention)
    c = onehot([0, 3, 9])
    img = G(torch.randn(3, G.latent_dim), c)
    assert img.shape == (3, 1, resolution, resolution) and img.abs().max() < 1
    assert D(img, c).shape == (3,)
    assert list(G.attention) == [str(attention)] and len(D.attention) == 1


def test_conditional_batch_norm_formula():
    cbn = ConditionalBatchNorm2d(5, 7)
    x, y = torch.randn(4, 5, 3, 3), torch.randn(4, 7)
    mean, var = x.mean(dim=[0, 2, 3], keepdim=True), x.var(dim=[0, 2, 3], unbiased=False, keepdim=True)
    want = (x - mean) / torch.sqrt(var + 1e-5) * (1 + y @ cbn.gain.weight.t())[:, :, None, None] \
        + (y @ cbn.bias.weight.t())[:, :, None, None]
    assert_close(cbn(x, y), want, atol=1e-5, rtol=1e-5)


def test_class_changes_the_output_and_blocks_see_shared_embedding_and_z_chunks():
    G, _ = tiny(16, 8)
    G.eval()
    z = torch.randn(4, G.latent_dim)
    a, b = G(z, onehot([1, 2, 3, 4])), G(z, onehot([5, 6, 7, 8]))
    assert (a - b).abs().amax(dim=[1, 2, 3]).min() > 1e-3  # every sample depends on its class
    seen = []
    hooks = [blk.bn1.register_forward_hook(lambda m, inp, out: seen.append(inp[1])) for blk in G.blocks]
    c = onehot([1, 2, 3, 4])
    G(z, c)
    for h in hooks:
        h.remove()
    chunks = z.split(G.chunk, dim=1)
    shared = c @ G.shared.weight.t()
    assert len(seen) == len(G.blocks) == len(chunks) - 1
    for i, y in enumerate(seen):  # block i: [shared embedding, chunk i + 1]; chunk 0 feeds the linear layer
        assert torch.equal(y, torch.cat([shared, chunks[i + 1]], dim=1))


def test_projection_discriminator_formula():
    _, D = tiny(16, 8)
    D.eval()  # fixed spectral-norm estimates
    x, c = torch.randn(5, 1, 16, 16), onehot([0, 1, 2, 9, 9])
    h = D.features(x)
    V = D.embed.weight.t()  # (c_dim, F), spectrally normalised
    want = (h @ D.linear.weight.t() + D.linear.bias).squeeze(1) + (h * V[[0, 1, 2, 9, 9]]).sum(1)
    assert_close(D(x, c), want, atol=1e-4, rtol=1e-5)
    # the class enters only through <V_y, h>
    assert_close(D(x, onehot([3] * 5)) - D(x, onehot([4] * 5)), h @ (V[3] - V[4]), atol=1e-4, rtol=1e-4)


def test_self_attention_matches_sagan_math():
    att = SelfAttention(16)
    with torch.no_grad():
        att.gamma.fill_(0.7)
    x = torch.randn(2, 16, 4, 6)
    theta = att.theta(x).flatten(2)                          # (B, 2, N)
    phi = F.max_pool2d(att.phi(x), 2).flatten(2)             # (B, 2, N / 4)
    g = F.max_pool2d(att.g(x), 2).flatten(2)                 # (B, 8, N / 4)
    beta = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)   # unscaled dot products, as SAGAN
    o = att.o((g @ beta.transpose(1, 2)).reshape(2, 8, 4, 6))
    assert_close(att(x), x + 0.7 * o, atol=1e-5, rtol=1e-5)


def test_spectral_norm_everywhere_but_the_shared_embedding():
    G, D = tiny(16, 8)
    for net in (G, D):
        layers = [(n, m) for n, m in net.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        for name, m in layers:
            assert parametrize.is_parametrized(m, "weight") == (name != "shared"), name
            if name != "shared":
                w = m.weight.reshape(m.weight.shape[0], -1)
                assert abs(torch.linalg.matrix_norm(w.detach(), 2).item() - 1) < 0.05, name


def test_orthogonal_regularization_against_direct_computation():
    ws = [torch.randn(5, 3, 3, 3, dtype=torch.float64, requires_grad=True),
          torch.randn(4, 7, dtype=torch.float64, requires_grad=True)]
    want = 0
    for w in ws:
        m = w.detach().reshape(w.shape[0], -1)
        off = 1 - torch.eye(m.shape[0], dtype=torch.float64)
        want += ((m @ m.t()) * off).pow(2).sum()
    got = orthogonal_regularization(ws, beta=1e-4)
    assert_close(got, 1e-4 * want, atol=0, rtol=1e-12)
    got.backward()
    for w in ws:  # d/dW beta ||W W^T o (1 - I)||^2 = 4 beta (W W^T o (1 - I)) W
        m = w.detach().reshape(w.shape[0], -1)
        grad = 4e-4 * ((m @ m.t()) * (1 - torch.eye(m.shape[0], dtype=torch.float64))) @ m
        assert_close(w.grad.reshape(grad.shape), grad, atol=0, rtol=1e-10)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    assert orthogonal_regularization([q * 3.0]).item() < 1e-20  # orthogonal rows of any norm: no penalty


def test_generator_regularizes_its_raw_weights_except_the_shared_embedding():
    G, _ = tiny(8, 8)
    weights = G.regularized_weights()
    assert all(w.dim() >= 2 for w in weights) and not any(w is G.shared.weight for w in weights)
    assert any(w is G.out_conv.parametrizations.weight.original for w in weights)
    assert_close(G.orthogonal_regularizer(torch.randn(2, 8)), orthogonal_regularization(weights, 1e-4), atol=0, rtol=0)


def test_truncation_resamples_exactly_the_out_of_range_entries():
    z = torch.randn(64, 20, generator=torch.Generator().manual_seed(1))
    out = truncate_latent(z, 0.5, generator=torch.Generator().manual_seed(2))
    inside = z.abs() <= 0.5
    assert 0 < inside.sum() < z.numel()
    assert torch.equal(out[inside], z[inside])
    assert (out[~inside] != z[~inside]).all() and out.abs().max() <= 0.5
    again = truncate_latent(z, 0.5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out, again)
    with pytest.raises(ValueError, match="threshold"):
        truncate_latent(z, 0.0)


def test_a_few_training_steps_with_the_trainer():
    torch.manual_seed(0)
    G, D = tiny(8, 8)
    trainer = GANTrainer(G, D, loss="hinge", n_critic=2, lr=2e-4, betas=(0.0, 0.999), ema_decay=0.9,
                         g_regularizer=G.orthogonal_regularizer, g_regularizer_weight=1.0)
    before = [p.detach().clone() for p in G.parameters()]
    real, labels = torch.rand(8, 1, 8, 8) * 2 - 1, torch.arange(8) % 10
    records = [trainer.train_step(real, labels) for _ in range(4)]
    assert all(math.isfinite(v) for r in records for v in r.values())
    assert "g_regularizer" in records[1] and records[1]["g_regularizer"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, G.parameters()))
    assert trainer.sample(6, labels=torch.tensor([0, 1, 2, 3, 4, 5])).shape == (6, 1, 8, 8)
    G.accumulate_standing_stats(2, 8, generator=torch.Generator().manual_seed(0))
    assert G.generate(torch.tensor([1, 2]), truncation=0.5).shape == (2, 1, 8, 8)


def test_bad_input():
    G, D = tiny(8, 8)
    with pytest.raises(ValueError, match="labels must lie in"):
        G.generate(torch.tensor([0, 10]))
    trainer = GANTrainer(G, D, loss="hinge")
    with pytest.raises(ValueError, match="labels must lie in"):
        trainer.sample(2, labels=torch.tensor([3, -1]))
    with pytest.raises(ValueError, match="c must be one-hot"):
        G(torch.randn(2, G.latent_dim), onehot([1, 2], 9))
    with pytest.raises(ValueError, match=r"img must have shape \(B, 1, 16, 16\)"):  # G's output != D's input
        tiny(16, 8)[1](G(torch.randn(2, G.latent_dim), onehot([1, 2])), onehot([1, 2]))
    with pytest.raises(ValueError, match="latent_dim must be a multiple of 3"):
        BigGANGenerator(16, 1, c_dim=10, latent_dim=10)
    with pytest.raises(ValueError, match="img_resolution must be a power of two"):
        BigGANGenerator(12, 1, c_dim=10, latent_dim=12)
    with pytest.raises(ValueError, match="attention_resolution"):
        BigGANGenerator(16, 1, c_dim=10, latent_dim=12, attention_resolution=32)
