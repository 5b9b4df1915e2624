"""``fastgen train diffusion``: a DDPM on the digits, a folder of PNGs or an npz, on one or many processes.

Writes to ``--out DIR`` (rank 0 only, each file atomically):

* ``checkpoint.pt``: the :class:`fastgen.diffusion.DiffusionTrainer` checkpoint (model, EMA,
  optimizer, step, random states; :mod:`fastgen.checkpoint`), every ``--checkpoint-every`` steps
  and at the end;
* ``fastgen_model.json``: the architecture (:func:`fastgen.generation.write_model_config`: ``UNet``
  and its kwargs) and a DDIM scheduler on the training schedule, so
  ``fastgen generate DIR/checkpoint.pt --out ... --seeds ...`` rebuilds the model (EMA weights);
* ``train_config.json``: the options that fix the run (data, preset, batch, seed, lr, ...);
  ``--resume`` checks them against the command line and continues the checkpoint to ``--steps``
  (a total), drawing exactly the batches, timesteps and noise an uninterrupted run would.

Under torchrun (``WORLD_SIZE`` > 1) the trainer is data-parallel (``distributed=True``: NCCL on
CUDA, gloo on the CPU): ``--batch-size`` is the global batch, each rank trains on its slice, and a
step equals the one-process step on the same global batch up to the order of the gradient
all-reduce's float sums (tests/test_train_cli.py checks it with 2 CPU processes).
"""
from __future__ import annotations

import contextlib
import json
import os
import time

import torch

from .._io import atomic_write_text
from .data import global_batch_indices, load_training_images, step_batches
from .presets import unet_kwargs

__all__ = ["train_diffusion", "CHECKPOINT_NAME", "TRAIN_CONFIG_NAME", "NUM_TRAIN_TIMESTEPS"]

CHECKPOINT_NAME = "checkpoint.pt"
TRAIN_CONFIG_NAME = "train_config.json"
NUM_TRAIN_TIMESTEPS = 1000  # DDPM's linear betas 1e-4 .. 0.02
# Options that must match to resume (what the checkpoint cannot check itself: the data stream, ...).
_RUN_KEYS = ("data", "num_images", "shape", "size", "preset", "batch_size", "seed", "lr", "ema_decay", "amp",
             "model")


@contextlib.contextmanager
def _process_group(device_arg: str | None):
    """Yields (rank, world, device). Under torchrun (WORLD_SIZE > 1) initialises the default process group
    (NCCL on CUDA, gloo on the CPU) unless one exists, and destroys the one it made on the way out."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = device_arg == "cuda" or (device_arg is None and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device")
    if world <= 1:
        yield 0, 1, torch.device("cuda" if cuda else "cpu")
        return
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size(), device
    finally:
        if owned:
            dist.destroy_process_group()


def _check_resume(out: str, run: dict) -> None:
    path = os.path.join(out, TRAIN_CONFIG_NAME)
    if not os.path.isfile(os.path.join(out, CHECKPOINT_NAME)):
        raise ValueError(f"--resume: there is no {os.path.join(out, CHECKPOINT_NAME)} to resume")
    if not os.path.isfile(path):
        raise ValueError(f"--resume: {out} holds a checkpoint but no {TRAIN_CONFIG_NAME} (not written by fastgen "
                         "train diffusion)")
    with open(path) as f:
        stored = json.load(f).get("run", {})
    for key in _RUN_KEYS:
        if stored.get(key) != run[key]:
            raise ValueError(f"--resume: the checkpoint in {out} was trained with {key}={stored.get(key)!r}, this "
                             f"command has {key}={run[key]!r}; resume with the same options or choose another --out")


def train_diffusion(*, out: str, data: str = "digits", size: int | None = None, preset: str | None = None,
                    steps: int = 1000, batch_size: int = 64, lr: float = 1e-3, ema_decay: float | None = 0.995,
                    resume: bool = False, checkpoint_every: int | None = None, seed: int = 0,
                    device: str | None = None, amp: str | None = None, log_every: int = 50,
                    progress: bool = True, log=print) -> dict:
    """Train (or continue to) ``steps`` total steps; returns {"step", "history", "seconds", "rank", "world_size"}.

    Every bad input raises ValueError naming its option before any file is written.
    """
    from ..diffusion import DDIMScheduler, DDPMScheduler
    from ..diffusion.trainer import DiffusionTrainer
    from ..generation.models import MODEL_CONFIG_NAME, write_model_config
    from ..models import UNet

    for name, value, lo in (("--steps", steps, 0), ("--batch-size", batch_size, 1), ("--seed", seed, 0),
                            ("--log-every", log_every, 1)):
        if value < lo:
            raise ValueError(f"{name} must be >= {lo}, got {value}")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be >= 1, got {checkpoint_every}")
    if amp not in (None, "bf16"):
        raise ValueError(f"--amp must be bf16 or none, got {amp!r}")
    ckpt = os.path.join(out, CHECKPOINT_NAME)
    if not resume and os.path.exists(ckpt):
        raise ValueError(f"--out: {ckpt} exists; pass --resume to continue it or choose another --out (nothing is "
                         "overwritten)")
    images, info = load_training_images(data, size)
    channels, image_size = info["shape"][0], info["shape"][1]
    model_kwargs = unet_kwargs(preset, channels, image_size)
    run = {**info, "size": image_size, "preset": preset, "batch_size": batch_size, "seed": seed, "lr": lr,
           "ema_decay": ema_decay, "amp": amp, "model": model_kwargs}
    run["data"] = data if data == "digits" else info["data"]
    if resume:
        _check_resume(out, run)

    global_batch_indices(info["num_images"], batch_size, 0, seed)  # --batch-size within the data
    with _process_group(device) as (rank, world, dev):
        if batch_size % world:  # every rank raises it, before any collective
            raise ValueError(f"--batch-size {batch_size} (the global batch) must be divisible by the number of "
                             f"processes, {world}")
        torch.manual_seed(seed)  # the initial weights (and dropout), the same on every rank
        model = UNet(**model_kwargs)
        schedule = DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS)
        trainer = DiffusionTrainer(model, schedule, lr=lr, ema_decay=ema_decay, grad_clip=1.0, device=dev,
                                   seed=seed, amp_dtype=torch.bfloat16 if amp == "bf16" else None,
                                   distributed=world > 1)
        if resume:
            trainer.load_checkpoint(ckpt)
            if trainer.step > steps:
                raise ValueError(f"--steps {steps} is below the checkpoint's step {trainer.step} (--steps is the "
                                 "total)")
        elif rank == 0:
            os.makedirs(out, exist_ok=True)
            sampler = DDIMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule="linear",
                                    beta_start=1e-4, beta_end=0.02, prediction_type="epsilon")
            write_model_config(os.path.join(out, MODEL_CONFIG_NAME), "UNet", model_kwargs, scheduler=sampler)
            atomic_write_text(os.path.join(out, TRAIN_CONFIG_NAME), json.dumps(
                {"run": run, "num_train_timesteps": NUM_TRAIN_TIMESTEPS, "grad_clip": 1.0,
                 "parameters": sum(p.numel() for p in model.parameters())}, indent=2, sort_keys=True) + "\n")
        if rank == 0:
            log(f"fastgen train diffusion: {info['num_images']} images {tuple(info['shape'])} from {run['data']}, "
                f"UNet {sum(p.numel() for p in model.parameters())} parameters, {world} process(es) on {dev}, "
                f"step {trainer.step} -> {steps}, global batch {batch_size}")
        batches = step_batches(images, batch_size, start=trainer.step, seed=seed, rank=rank, world_size=world,
                               device=dev)
        start = time.perf_counter()
        history = trainer.fit(batches, steps - trainer.step, progress=progress and rank == 0, checkpoint_path=ckpt,
                              checkpoint_every=checkpoint_every, log_every=log_every)
        seconds = time.perf_counter() - start
        if world > 1:
            import torch.distributed as dist

            dist.barrier()  # rank 0's last checkpoint is on disk before any rank returns
        if rank == 0 and history:
            shard = ", rank 0's shard" if world > 1 else ""
            log(f"step {trainer.step}: loss {history[-1]['loss']:.4f} (mean over the last logging "
                f"window{shard}); {seconds:.1f} s; checkpoint {ckpt}")
        return {"step": trainer.step, "history": history, "seconds": seconds, "rank": rank, "world_size": world,
                "trainer": trainer}
