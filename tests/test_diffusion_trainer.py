"""DiffusionTrainer: learning, exact resume, atomic checkpoints, EMA, clipping, bf16 autocast,
channels_last, torch.compile, sampling, bad input. A tiny UNet on the 8x8 digits keeps it fast."""
import math
import os

import pytest
import torch

from fastgen.data import digit_batches
from fastgen.diffusion import training_loss
from fastgen.diffusion.scheduling_ddpm import DDPMScheduler
from fastgen.diffusion.trainer import DiffusionTrainer, step_noise_seed
from fastgen.models import UNet

SIZE = 8
ABAR = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod


def tiny_unet(dropout: float = 0.0) -> UNet:
    return UNet(1, 1, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                image_size=SIZE, groups=4, dropout=dropout)


def batches(n: int, batch: int = 16, seed: int = 0) -> list[torch.Tensor]:
    stream = digit_batches(batch, size=SIZE, epochs=None, drop_last=True, generator=torch.Generator().manual_seed(seed))
    return [next(stream)[0] for _ in range(n)]


def trainer(model=None, **kwargs) -> DiffusionTrainer:
    kwargs.setdefault("ema_decay", 0.9)
    return DiffusionTrainer(tiny_unet() if model is None else model, DDPMScheduler(), **kwargs)


def state_tensors(tr: DiffusionTrainer) -> dict[str, torch.Tensor]:
    """Every tensor that defines the training state: parameters, EMA, AdamW moments."""
    out = {f"model.{k}": v for k, v in tr.model.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in tr.ema.state_dict().items()})
    for i, s in tr.optimizer.state_dict()["state"].items():
        out.update({f"opt.{i}.{k}": v for k, v in s.items() if isinstance(v, torch.Tensor)})
    return out


def test_loss_decreases_on_digits():
    torch.manual_seed(0)
    tr = trainer(lr=2e-3)
    data = batches(40, batch=32)
    # a fixed evaluation (same x0, timesteps and eps before and after): training noise cannot fake progress
    x_eval, t_eval = data[0], torch.randint(0, 1000, (32,), generator=torch.Generator().manual_seed(1))

    def eval_loss() -> float:
        with torch.no_grad():
            return training_loss(tr.model.eval(), x_eval, ABAR, timesteps=t_eval, seed=7).item()

    before = eval_loss()
    history = tr.fit(data, 40, progress=False, log_every=10)
    after = eval_loss()
    assert [r["step"] for r in history] == [10, 20, 30, 40]
    assert after < 0.6 * before, (before, after)
    assert history[-1]["loss"] < history[0]["loss"]


def test_exact_resume(tmp_path):
    k, data = 3, batches(6)
    torch.manual_seed(1)
    straight = trainer(tiny_unet(dropout=0.1), seed=3)  # dropout: torch's CPU generator must be restored too
    straight.fit(data, 2 * k, progress=False)

    torch.manual_seed(1)
    first = trainer(tiny_unet(dropout=0.1), seed=3)
    first.fit(data[:k], k, progress=False)
    path = os.path.join(tmp_path, "ckpt.pt")
    first.save_checkpoint(path)
    torch.manual_seed(99)  # a fresh process: other weights, other global RNG state, another seed
    resumed = trainer(tiny_unet(dropout=0.1), seed=5)
    resumed.load_checkpoint(path)
    assert resumed.step == k and resumed.seed == 3
    resumed.fit(data[k:], k, progress=False)

    a, b = state_tensors(straight), state_tensors(resumed)
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    tr = trainer()
    tr.train_step(batches(1)[0])
    path = os.path.join(tmp_path, "ckpt.pt")
    tr.save_checkpoint(path)
    with open(path, "rb") as f:
        old = f.read()
    tr.train_step(batches(1)[0])

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        tr.save_checkpoint(path)
    with open(path, "rb") as f:
        assert f.read() == old
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temp file left behind


def test_ema_is_a_lerp_of_the_weights():
    tr = trainer(ema_decay=0.75)
    before = {k: v.clone() for k, v in tr.ema.state_dict().items()}
    tr.train_step(batches(1)[0])
    now = tr.model.state_dict()
    for name, old in before.items():
        expected = torch.lerp(old, now[name], 0.25)
        torch.testing.assert_close(tr.ema.state_dict()[name], expected, rtol=0, atol=0)
    changed = [k for k in before if not torch.equal(before[k], now[k])]
    assert changed, "the step changed no weight"
    assert not any(p.requires_grad for p in tr.ema.parameters())

    plain = trainer(ema_decay=None)
    plain.train_step(batches(1)[0])
    assert plain.ema is None


def test_grad_clip_bounds_the_norm():
    clip = 1e-3
    tr = trainer(grad_clip=clip)
    record = tr.train_step(batches(1)[0])
    assert record["grad_norm"] > 10 * clip  # the clip had something to do
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in tr.model.parameters()]))
    assert total.item() <= clip * (1 + 1e-4)
    assert "grad_norm" not in trainer(grad_clip=None).train_step(batches(1)[0])


class PlainDenoiser(torch.nn.Module):
    """torch layers only (its GroupNorm autocasts to float32 as torch's autocast lists it)."""

    def __init__(self):
        super().__init__()
        self.conv_in = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.norm = torch.nn.GroupNorm(4, 8)
        self.conv_out = torch.nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x, t):
        h = self.conv_in(x) + (t.float() / 1000).view(-1, 1, 1, 1)
        return self.conv_out(torch.nn.functional.silu(self.norm(h)))


def test_bf16_autocast_on_cpu():
    tr = trainer(PlainDenoiser(), amp_dtype=torch.bfloat16)
    seen = []
    tr.model.conv_in.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    record = tr.train_step(batches(1)[0])
    assert seen == [torch.bfloat16]  # the model ran in bf16 ...
    # ... not its weights nor their gradients
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in tr.model.parameters())
    assert torch.isfinite(torch.tensor(record["loss"]))
    x = tr.sample(2, num_inference_steps=2)  # sampling runs the float32 EMA copy without autocast
    assert x.dtype == torch.float32


def test_bf16_autocast_with_fastgen_unet():
    """GroupNormAct meets bf16 activations and float32 parameters under autocast: a finite step that moves the weights."""
    t = trainer(amp_dtype=torch.bfloat16)
    before = [p.detach().clone() for p in t.model.parameters()]
    out = t.train_step(batches(1)[0])
    assert math.isfinite(out["loss"])
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, t.model.parameters()))
    assert all(p.dtype == torch.float32 for p in t.model.parameters())


def test_channels_last_model_and_inputs():
    # 3 channels: with one, channels_last and contiguous are the same layout and the test could not fail
    model = UNet(3, 3, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                 image_size=SIZE, groups=4)
    tr = trainer(model, channels_last=True)
    seen = []
    tr.model.conv_in.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    tr.model.conv_out.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    tr.train_step(torch.randn(4, 3, SIZE, SIZE))  # a contiguous (NCHW) batch
    assert len(seen) == 2
    for x in seen:
        assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    convs = [p for p in tr.model.parameters() if p.dim() == 4 and p.shape[2:] != (1, 1)]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs)
    assert tr.sample(2, num_inference_steps=2).shape == (2, 3, SIZE, SIZE)


def test_compiled_model_step_and_no_graph_breaks():
    torch.manual_seed(0)
    model = tiny_unet()
    eager = trainer(model)
    compiled = trainer(tiny_unet(), compile=True, compile_options={"backend": "eager", "fullgraph": True})
    compiled.model.load_state_dict(model.state_dict())
    x0 = batches(1)[0]
    a, b = eager.train_step(x0), compiled.train_step(x0)
    torch.testing.assert_close(b["loss"], a["loss"], rtol=1e-5, atol=1e-6)
    assert not any(k.startswith("_orig_mod") for k in compiled.model.state_dict())

    # The whole objective -- fastgen's noising and loss ops around the model -- in one graph.
    def objective(x0, t, state):
        return training_loss(model, x0, ABAR, timesteps=t, seed=state)

    explained = torch._dynamo.explain(objective)(x0, torch.randint(0, 1000, (x0.shape[0],)),
                                                 torch.tensor([step_noise_seed(0, 0), 0]))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_sample_uses_ema_and_leaves_training_rng_alone():
    tr = trainer()
    tr.train_step(batches(1)[0])
    rng_before, cpu_before = tr._rng.get_state(), torch.get_rng_state()
    x = tr.sample(3, num_inference_steps=3, seed=11)
    assert x.shape == (3, 1, SIZE, SIZE) and x.dtype == torch.float32 and bool(torch.isfinite(x).all())
    assert torch.equal(tr.sample(3, num_inference_steps=3, seed=11), x)
    assert not torch.equal(tr.sample(3, num_inference_steps=3, seed=11, use_ema=False), x)
    assert torch.equal(tr._rng.get_state(), rng_before) and torch.equal(torch.get_rng_state(), cpu_before)
    assert tr.model.training and not tr.ema.training


def test_step_noise_seed():
    keys = {step_noise_seed(s, k) for s in range(4) for k in range(50)}
    assert len(keys) == 200 and all(0 <= key < 2**63 for key in keys)
    assert step_noise_seed(3, 7) == step_noise_seed(3, 7)


def test_bad_input(tmp_path):
    with pytest.raises(TypeError, match="model"):
        DiffusionTrainer(lambda x, t: x, ABAR)
    with pytest.raises(TypeError, match="scheduler_or_alphas_cumprod"):
        DiffusionTrainer(tiny_unet(), [0.9, 0.8])
    with pytest.raises(ValueError, match="alphas_cumprod"):
        DiffusionTrainer(tiny_unet(), torch.linspace(0.1, 0.9, 10))  # increasing
    for kwargs, match in [({"prediction_type": "x0"}, "prediction_type"), ({"ema_decay": 1.0}, "ema_decay"),
                          ({"grad_clip": -1.0}, "grad_clip"), ({"lr": 0.0}, "lr"),
                          ({"amp_dtype": torch.float16}, "amp_dtype"), ({"seed": -1}, "seed")]:
        with pytest.raises((TypeError, ValueError), match=match):
            trainer(**kwargs)
    tr = trainer()
    x0 = batches(1)[0]
    with pytest.raises(TypeError, match="x0"):
        tr.train_step(x0.double())
    with pytest.raises(TypeError, match="x0"):
        tr.train_step(x0.numpy())
    with pytest.raises(ValueError, match="y must be"):
        tr.train_step(x0, y=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="shape is unknown"):
        tr.sample(2)
    tr.train_step(x0)
    with pytest.raises(ValueError, match="earlier batches"):
        tr.train_step(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="ran out after 1 of 2"):
        tr.fit(batches(1), 2, progress=False)
    with pytest.raises(ValueError, match="checkpoint_every needs checkpoint_path"):
        tr.fit(batches(1), 1, checkpoint_every=1, progress=False)
    with pytest.raises(ValueError, match="prediction_type"):
        tr.sample(2, scheduler=DDPMScheduler(prediction_type="sample"))
    path = os.path.join(tmp_path, "ckpt.pt")
    tr.save_checkpoint(path)
    with pytest.raises(ValueError, match="prediction_type"):
        trainer(prediction_type="v_prediction").load_checkpoint(path)
    torch.save({"weights": 1}, os.path.join(tmp_path, "other.pt"))
    with pytest.raises(ValueError, match="not a DiffusionTrainer checkpoint"):
        tr.load_checkpoint(os.path.join(tmp_path, "other.pt"))


def test_each_step_draws_eps_from_its_own_philox_key(monkeypatch):
    import fastgen.diffusion.trainer as trainer_module

    seeds = []

    def recording_loss(*args, seed=None, **kwargs):
        seeds.append(seed)
        return training_loss(*args, seed=seed, **kwargs)

    monkeypatch.setattr(trainer_module, "training_loss", recording_loss)
    tr = trainer(seed=4)
    tr.fit(batches(3), 3, progress=False)
    assert seeds == [step_noise_seed(4, k) for k in range(3)]
