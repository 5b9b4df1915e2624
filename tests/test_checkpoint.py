"""fastgen.checkpoint through both trainers: bit flips are caught, a bad checkpoint changes nothing,
stale temp files go, an unwritable checkpoint_path fails before step 1, the folder is fsynced."""
from __future__ import annotations

import os
import stat
import time

import pytest
import torch
import torch.nn as nn

from fastgen import checkpoint
from fastgen.checkpoint import CheckpointError
from fastgen.diffusion.trainer import DiffusionTrainer
from fastgen.gan.trainer import GANTrainer


class TinyDenoiser(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.drop = nn.Dropout(0.1)  # draws from torch's CPU generator: its state is checkpointed

    def forward(self, x, t):
        return self.drop(self.conv(x))


class TinyG(nn.Module):
    latent_dim = 3

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(3, 2)

    def forward(self, z):
        return self.net(z)


def diffusion(seed: int = 0) -> DiffusionTrainer:
    torch.manual_seed(seed)
    return DiffusionTrainer(TinyDenoiser(), torch.linspace(0.99, 0.1, 10), ema_decay=0.9, seed=seed)


def gan(seed: int = 0) -> GANTrainer:
    torch.manual_seed(seed)
    return GANTrainer(TinyG(), nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)), ema_decay=0.9, seed=seed)


def real_batch(trainer, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (2, 1, 4, 4) if isinstance(trainer, DiffusionTrainer) else (4, 2)
    return torch.randn(shape, generator=g)


def trained(make, steps: int = 2, seed: int = 0):
    trainer = make(seed)
    for i in range(steps):
        trainer.train_step(real_batch(trainer, i))
    return trainer


def snapshot(trainer) -> dict:
    """Every piece of trainer state a load could touch, cloned."""
    out = {"step": trainer.step, "seed": trainer.seed, "rng_cpu": torch.get_rng_state(),
           "rng_trainer": trainer._rng.get_state()}
    for name, part in trainer._parts().items():
        if part is None:
            continue
        state = part.state_dict()
        if isinstance(part, torch.optim.Optimizer):
            state = {f"{i}.{k}": v for i, s in state["state"].items() for k, v in s.items()}
        out.update({f"{name}.{k}": v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()})
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        same = torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key]
        assert same, f"{key} changed"


MAKERS = pytest.mark.parametrize("make", [diffusion, gan], ids=["diffusion", "gan"])


@MAKERS
def test_a_flipped_bit_is_detected(make, tmp_path):
    path = str(tmp_path / "ckpt.pt")
    trained(make).save_checkpoint(path)
    data = bytearray(open(path, "rb").read())
    for position in (len(data) // 2, len(data) - 1, 30):  # the payload's middle and end, the digest
        flipped = bytearray(data)
        flipped[position] ^= 0x40
        open(path, "wb").write(flipped)
        target = trained(make, steps=1, seed=1)
        before = snapshot(target)
        with pytest.raises(CheckpointError, match=f"{path}.*corrupt"):
            target.load_checkpoint(path)
        assert_same(before, snapshot(target))
    open(path, "wb").write(data)
    make(1).load_checkpoint(path)  # the intact file still loads


def _rewrite(path: str, kind: str, edit) -> None:
    state = checkpoint._read(path, kind)
    edit(state)
    checkpoint._write(path, state)


DIFFUSION_DAMAGE = {
    "no-rng": lambda s: s.pop("rng"),
    "no-trainer-rng": lambda s: s["rng"].pop("trainer"),
    "bad-cpu-rng": lambda s: s["rng"].__setitem__("torch_cpu", torch.zeros(3, dtype=torch.uint8)),
    "no-optimizer": lambda s: s.pop("optimizer"),
    "no-ema": lambda s: s.pop("ema"),
    "ema-weight-missing": lambda s: s["ema"].pop("conv.weight"),
    "model-weight-reshaped": lambda s: s["model"].__setitem__("conv.bias", torch.zeros(2)),
    "no-step": lambda s: s.pop("step"),
    "bad-seed": lambda s: s.__setitem__("seed", -1),
}
GAN_DAMAGE = {
    "no-d-optimizer": lambda s: s.pop("d_optimizer"),
    "optimizer-groups": lambda s: s["g_optimizer"]["param_groups"][0]["params"].pop(),
    "no-g-scaler": lambda s: s.pop("g_scaler"),
    "no-rng": lambda s: s.pop("rng"),
    "discriminator-key": lambda s: s["discriminator"].pop("2.bias"),
}


@pytest.mark.parametrize("make,damage", [(diffusion, d) for d in DIFFUSION_DAMAGE.values()]
                         + [(gan, d) for d in GAN_DAMAGE.values()],
                         ids=[f"diffusion-{k}" for k in DIFFUSION_DAMAGE] + [f"gan-{k}" for k in GAN_DAMAGE])
def test_an_incomplete_checkpoint_changes_nothing(make, damage, tmp_path):
    path = str(tmp_path / "ckpt.pt")
    trained(make, steps=3).save_checkpoint(path)
    _rewrite(path, type(make(0)).__name__, damage)
    target = trained(make, steps=1, seed=1)
    before = snapshot(target)
    with pytest.raises(CheckpointError, match=path):
        target.load_checkpoint(path)
    assert_same(before, snapshot(target))


def test_a_failing_load_state_dict_is_rolled_back(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    trained(diffusion, steps=3).save_checkpoint(path)
    target = trained(diffusion, steps=1, seed=1)
    before = snapshot(target)

    real_load = target.optimizer.load_state_dict
    calls = []

    def broken(state_dict):  # refuses the checkpoint, takes the rollback
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("an exotic optimizer refuses")
        real_load(state_dict)

    monkeypatch.setattr(target.optimizer, "load_state_dict", broken)  # after the model and EMA were loaded
    with pytest.raises(CheckpointError, match="the optimizer could not be restored.*the trainer is unchanged"):
        target.load_checkpoint(path)
    assert_same(before, snapshot(target))


@MAKERS
def test_resume_after_validation_is_still_exact(make, tmp_path):
    path = str(tmp_path / "ckpt.pt")
    straight = trained(make, steps=4)
    first = trained(make, steps=2)
    first.save_checkpoint(path)
    torch.manual_seed(123)
    resumed = make(5)
    resumed.load_checkpoint(path)
    for i in (2, 3):
        resumed.train_step(real_batch(resumed, i))
    expected, actual = snapshot(straight), snapshot(resumed)
    if make is gan:  # GANTrainer keeps its own seed (it only names the preview latents), as before
        del expected["seed"], actual["seed"]
    assert_same(expected, actual)


def test_stale_temp_files_of_the_target_are_removed(tmp_path):
    path = tmp_path / "ckpt.pt"
    old = time.time() - 3600
    names = {"stale": ".tmp-abc_e9h1ckpt.pt", "fresh": ".tmp-zzzzzzzzckpt.pt",
             "other target": ".tmp-abcdefghother.pt", "longer name": ".tmp-abcdefghxckpt.pt",
             "not a temp": "tmp-abcdefghckpt.pt"}
    for name in names.values():
        (tmp_path / name).write_bytes(b"left by a killed writer")
        if name != names["fresh"]:
            os.utime(tmp_path / name, (old, old))
    trained(diffusion, steps=1).save_checkpoint(str(path))
    left = set(os.listdir(tmp_path))
    assert names["stale"] not in left
    assert left == {"ckpt.pt", *(n for k, n in names.items() if k != "stale")}


@MAKERS
def test_an_unwritable_checkpoint_path_fails_before_the_first_step(make, tmp_path):
    (tmp_path / "a_file").write_bytes(b"")
    drawn = []

    def batches():
        while True:
            drawn.append(1)
            yield real_batch(trainer)

    trainer = make(0)
    for bad in (str(tmp_path / "a_file" / "ckpt.pt"), str(tmp_path)):
        with pytest.raises(ValueError, match="checkpoint_path"):
            trainer.fit(batches(), 3, progress=False, checkpoint_path=bad)
        assert trainer.step == 0 and not drawn
    trainer.fit(batches(), 1, progress=False, checkpoint_path=str(tmp_path / "new" / "ckpt.pt"))
    assert os.listdir(tmp_path / "new") == ["ckpt.pt"]


def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    trained(gan, steps=1).save_checkpoint(str(tmp_path / "ckpt.pt"))
    assert synced == [False, True]  # the temp file, then the folder holding the renamed file
