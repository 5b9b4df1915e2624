"""The training loop of the trainers that log windowed means (DiffusionTrainer, VAETrainer): one
copy of the argument checks, the batch iteration, the progress bar, the logging window (one host
read per ``log_every`` steps) and the periodic and final checkpoints."""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from ._io import check_writable, progress_bar
from ._validate import check_int


def fit_windowed(trainer, step: Callable[[object], dict[str, torch.Tensor]], batches: Iterable, steps: int, *,
                 description: str, progress: bool, checkpoint_path: str | None, checkpoint_every: int | None,
                 log_every: int) -> list[dict]:
    """Call ``step(batch)`` (device tensors out) ``steps`` times on batches of ``batches``; return one
    record per window: {"step": trainer.step, the mean of each value over the window}. ``trainer``
    has ``step`` and ``save_checkpoint(path)``; checkpoints every ``checkpoint_every`` of its steps
    and at the end when ``checkpoint_path`` is given (checked writable before the first step)."""
    steps = check_int("steps", steps, 0)
    log_every = check_int("log_every", log_every, 1)
    if checkpoint_every is not None:
        checkpoint_every = check_int("checkpoint_every", checkpoint_every, 1)
        if checkpoint_path is None:
            raise ValueError("checkpoint_every needs checkpoint_path")
    if checkpoint_path is not None:
        check_writable(checkpoint_path, "checkpoint_path")  # now, not after hours of training
    history: list[dict] = []
    window: list[dict[str, torch.Tensor]] = []
    checkpointed_at = None
    iterator = iter(batches)
    bar = progress_bar(progress, steps, description)
    try:
        for i in range(steps):
            try:
                batch = next(iterator)
            except StopIteration:
                raise ValueError(f"batches ran out after {i} of {steps} steps") from None
            window.append(step(batch))
            if len(window) == log_every or i == steps - 1:
                means = torch.stack([torch.stack([w[k] for w in window]).float().mean() for k in window[0]])
                record = {"step": trainer.step, **dict(zip(window[0], means.tolist()))}
                history.append(record)
                window.clear()
                if bar is not None:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "step"}, refresh=False)
            if bar is not None:
                bar.update(1)
            if checkpoint_every is not None and trainer.step % checkpoint_every == 0:
                trainer.save_checkpoint(checkpoint_path)
                checkpointed_at = trainer.step
    finally:
        if bar is not None:
            bar.close()
    if checkpoint_path is not None and checkpointed_at != trainer.step:
        trainer.save_checkpoint(checkpoint_path)
    return history
