"""fastgen.data.digits: the shipped UCI digits file (checksum, counts, classes, a known image),
load_digits' sizes and normalisations, the bilinear upsampling against F.interpolate, the batch
iterator (coverage, reshuffling, reproducibility, drop_last) and bad arguments."""
import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastgen.data.digits import DIGITS_PATH, NUM_DIGITS, digit_batches, load_digits
from helpers import assert_close

SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
# the first image of the file, a zero (also sklearn's load_digits().images[0])
FIRST = [[0, 0, 5, 13, 9, 1, 0, 0], [0, 0, 13, 15, 10, 15, 5, 0], [0, 3, 15, 2, 0, 11, 8, 0],
         [0, 4, 12, 0, 0, 8, 8, 0], [0, 5, 8, 0, 0, 9, 8, 0], [0, 4, 11, 0, 1, 12, 7, 0],
         [0, 2, 14, 5, 10, 12, 0, 0], [0, 0, 6, 13, 10, 0, 0, 0]]


def test_shipped_file_is_the_uci_digits():
    with open(DIGITS_PATH, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == SHA256
    images, labels = load_digits(normalize=None)
    assert images.shape == (NUM_DIGITS, 1, 8, 8) == (1797, 1, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    assert torch.equal(images[0, 0], torch.tensor(FIRST, dtype=torch.float32)) and labels[0] == 0
    assert labels.bincount().tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert images.min() == 0 and images.max() == 16 and torch.equal(images, images.round())


@pytest.mark.parametrize("size", [8, 16, 32])
def test_sizes_and_normalisations(size):
    raw, labels = load_digits(size, normalize=None)
    assert raw.shape == (1797, 1, size, size) and raw.is_contiguous()
    assert raw.min() >= 0 and raw.max() <= 16
    expected = F.interpolate(load_digits(8, normalize=None)[0], scale_factor=size // 8, mode="bilinear",
                             align_corners=False)
    assert_close(raw, expected)
    unit, _ = load_digits(size, normalize="[0,1]")
    sym, _ = load_digits(size)
    assert_close(unit, raw / 16)
    assert_close(sym, raw / 8 - 1)
    assert sym.min() >= -1 and sym.max() <= 1 and sym.min() == -1  # the background is exactly -1
    arr, lab = load_digits(size, as_tensor=False)
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32 and lab.dtype == np.int64
    assert np.array_equal(arr, sym.numpy()) and np.array_equal(lab, labels.numpy())


def test_results_are_independent_copies():
    a, la = load_digits(normalize=None)
    a.zero_()
    la.zero_()
    b, lb = load_digits(normalize=None)
    assert b.max() == 16 and lb.max() == 9


def test_batches_cover_each_epoch_and_reshuffle():
    g = torch.Generator().manual_seed(1)
    batches = list(digit_batches(500, epochs=2, generator=g))
    assert [x.shape[0] for x, _ in batches] == [500, 500, 500, 297] * 2
    images, labels = load_digits()
    first = torch.cat([y for _, y in batches[:4]])
    second = torch.cat([y for _, y in batches[4:]])
    assert first.bincount().tolist() == second.bincount().tolist() == labels.bincount().tolist()
    assert not torch.equal(first, second), "each epoch is reshuffled"
    x, y = batches[0]
    # every (image, label) pair stays together: find each batch image in the data set
    match = (x[:, None] == images[None]).flatten(2).all(-1)
    assert match.any(1).all() and torch.equal(labels[match.float().argmax(1)], y)
    again = list(digit_batches(500, epochs=2, generator=torch.Generator().manual_seed(1)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again)), "reproducible from the generator"


def test_batches_options():
    ordered = list(digit_batches(1000, shuffle=False, drop_last=True, size=16, normalize="[0,1]"))
    assert len(ordered) == 1 and ordered[0][0].shape == (1000, 1, 16, 16)
    assert torch.equal(ordered[0][1], load_digits()[1][:1000])
    endless = digit_batches(1024, epochs=None, drop_last=True)
    assert all(next(endless)[0].shape[0] == 1024 for _ in range(5))


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"size must be one of \(8, 16, 32\)"):
        load_digits(24)
    with pytest.raises(ValueError, match="normalize must be one of"):
        load_digits(normalize="[-1, 1]")
    with pytest.raises(ValueError, match="batch_size must be an int in"):
        digit_batches(0)
    with pytest.raises(ValueError, match="epochs must be None"):
        digit_batches(8, epochs=0)
    with pytest.raises(TypeError, match="generator must be None or a CPU torch.Generator"):
        digit_batches(8, generator=1)


def test_the_one_split_of_the_digits():
    import numpy as np

    from fastgen.data import split_indices
    from fastgen.metrics.digits_classifier import load_digits_classifier
    from fastgen.metrics.digits_classifier import split_indices as classifier_split

    split = split_indices()
    assert (len(split["train"]), len(split["test"])) == (1437, 360)
    assert np.array_equal(np.sort(np.concatenate([split["train"], split["test"]])), np.arange(1797))
    assert (split["test"] % 5 == 0).all() and (split["train"] % 5 != 0).all()
    assert classifier_split is split_indices  # the classifier never trained on a test image
    _, record = load_digits_classifier()
    assert record["test_size"] == 360 and "i % 5 == 0" in record["split"]
