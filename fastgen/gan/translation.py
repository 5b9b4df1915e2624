"""Trainers of unpaired image-to-image translation: CycleGAN (two domains) and StarGAN (many).

Translation does not fit :class:`fastgen.gan.GANTrainer`'s z -> G(z) step (the generators take
images, there are cycle / reconstruction terms, CycleGAN has two G-D pairs), so these two small
trainers keep its conventions: the losses of :mod:`fastgen.gan.losses`, the fused gradient penalty
of :mod:`fastgen.gan.penalty`, an own ``torch.Generator`` for every random draw of the loop, and
checkpoints through :mod:`fastgen.checkpoint` (atomic, checksummed, validated whole, exact resume).

Learning rate: both papers keep it constant and then decay it linearly to zero;
:func:`linear_decay` is that factor per step, applied to every parameter group before each step
(so a checkpoint needs no scheduler state: the factor is a function of the step count).
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import checkpoint
from .._io import check_writable, progress_bar
from .._validate import check_int
from ..models.stargan import check_domain_labels
from . import losses
from .image_pool import ImagePool
from .penalty import discriminator_objective, gradient_penalty

__all__ = ["linear_decay", "CycleGANTrainer", "StarGANTrainer"]

_VALUES = {"step": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0}


def linear_decay(step: int, constant_steps: int, decay_steps: int) -> float:
    """The learning-rate factor of step ``step`` (0-based): 1 for the first ``constant_steps`` steps,
    then 1 - k / (decay_steps + 1) on the k-th step after them (k = 1 .. decay_steps), 0 beyond.

    The official CycleGAN schedule per epoch (``1 - max(0, epoch + 1 - n_epochs) / (n_epochs_decay + 1)``),
    here per step; decay_steps = 0 keeps the rate constant forever.
    """
    step, constant_steps = check_int("step", step, 0), check_int("constant_steps", constant_steps, 0)
    decay_steps = check_int("decay_steps", decay_steps, 0)
    if decay_steps == 0:
        return 1.0
    return max(0.0, 1.0 - max(0, step + 1 - constant_steps) / (decay_steps + 1))


def _check_module(name: str, module: object) -> nn.Module:
    if not isinstance(module, nn.Module) or not any(p.requires_grad for p in module.parameters()):
        raise TypeError(f"{name} must be a torch.nn.Module with trainable parameters, got {type(module).__name__}")
    return module


def _check_weight(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


class _TranslationTrainer:
    """What both trainers share: device, optimizers with the linear decay, checkpoints, the fit loop."""

    _FORMAT = ""

    def _setup(self, modules: dict[str, nn.Module], lr: float, betas, constant_steps: int, decay_steps: int,
               device, seed: int, g_names: tuple[str, ...]) -> None:
        for name, module in modules.items():
            _check_module(name, module)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"lr must be a number > 0, got {lr!r}")
        self.constant_steps = check_int("constant_steps", constant_steps, 0)
        self.decay_steps = check_int("decay_steps", decay_steps, 0)
        self.seed = check_int("seed", seed, 0)
        if device is not None:
            for module in modules.values():
                module.to(device)
        devices = {name: next(m.parameters()).device for name, m in modules.items()}
        first = next(iter(devices))
        for name, dev in devices.items():
            if dev != devices[first]:
                raise ValueError(f"{name} is on {dev} but {first} is on {devices[first]}; pass device= to move all")
        self.device, self._dtype = devices[first], next(modules[first].parameters()).dtype
        for name, module in modules.items():
            setattr(self, name, module)
        self._g_params = [p for n in g_names for p in modules[n].parameters() if p.requires_grad]
        d_params = [p for n in modules if n not in g_names for p in modules[n].parameters() if p.requires_grad]
        # one Adam for the generators and one for the discriminators, as the official code chains them
        self.g_optimizer = torch.optim.Adam(self._g_params, lr=lr, betas=betas)
        self.d_optimizer = torch.optim.Adam(d_params, lr=lr, betas=betas)
        self.lr = float(lr)
        self._rng = torch.Generator(device=self.device).manual_seed(self.seed)
        self.step = 0

    def _set_lr(self) -> float:
        lr = self.lr * linear_decay(self.step, self.constant_steps, self.decay_steps)
        for opt in (self.g_optimizer, self.d_optimizer):
            for group in opt.param_groups:
                group["lr"] = lr
        return lr

    def _check_images(self, name: str, x: object) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] == 0:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a non-empty image batch (B, C, H, W), got {got}")
        if x.device != self.device or x.dtype != self._dtype:
            raise TypeError(f"{name} must be {self._dtype} on {self.device} (the parameters'), got {x.dtype} on {x.device}")
        return x

    def _floats(self, values: dict[str, torch.Tensor], lr: float) -> dict[str, float]:
        """The step's values as floats (one device read), and the learning rate it used; counts the step."""
        self.step += 1
        floats = torch.stack([v.detach().to(torch.float32) for v in values.values()]).tolist()
        return {**dict(zip(values, floats)), "lr": lr}

    # --- checkpoints ------------------------------------------------------------------------------------

    def save_checkpoint(self, path: str) -> None:
        """Everything training needs to continue exactly, written atomically with a checksum."""
        checkpoint.save(path, format=self._FORMAT, structure=self._structure(), parts=self._parts(),
                        values={"step": self.step}, generator=self._rng)

    def load_checkpoint(self, path: str) -> None:
        """Restore :meth:`save_checkpoint`'s file (validated whole first; a bad one changes nothing)."""
        self.step = checkpoint.load(path, format=self._FORMAT, structure=self._structure(), parts=self._parts(),
                                    values=_VALUES, generator=self._rng)["step"]

    def fit(self, batches: Iterable, steps: int, *, progress: bool = True, checkpoint_path: str | None = None,
            checkpoint_every: int | None = None) -> list[dict]:
        """``steps`` calls of train_step(*batch) on pairs drawn from ``batches``; a checkpoint every
        ``checkpoint_every`` steps and at the end when ``checkpoint_path`` is given. Returns one dict per
        step: {"step": the count after it, **train_step's values}."""
        steps = check_int("steps", steps, 0)
        if checkpoint_every is not None:
            checkpoint_every = check_int("checkpoint_every", checkpoint_every, 1)
            if checkpoint_path is None:
                raise ValueError("checkpoint_every needs checkpoint_path")
        if checkpoint_path is not None:
            check_writable(checkpoint_path, "checkpoint_path")
        history, iterator = [], iter(batches)
        bar = progress_bar(progress, steps, type(self).__name__)
        try:
            for i in range(steps):
                try:
                    batch = next(iterator)
                except StopIteration:
                    raise ValueError(f"batches ran out after {i} of {steps} steps") from None
                if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                    raise ValueError("batches must yield pairs: (images of A, images of B) for CycleGAN, "
                                     "(images, domain labels) for StarGAN")
                record = self.train_step(*batch)
                history.append({"step": self.step, **record})
                if bar is not None:
                    bar.set_postfix({k: f"{v:.3g}" for k, v in record.items()}, refresh=False)
                    bar.update(1)
                if checkpoint_every is not None and self.step % checkpoint_every == 0:
                    self.save_checkpoint(checkpoint_path)
        finally:
            if bar is not None:
                bar.close()
        if checkpoint_path is not None and (checkpoint_every is None or self.step % checkpoint_every):
            self.save_checkpoint(checkpoint_path)
        return history


class CycleGANTrainer(_TranslationTrainer):
    """CycleGAN (Zhu et al. 2017): G_AB: A -> B, G_BA: B -> A, D_A judges domain A, D_B domain B.

    One :meth:`train_step` = one step of both generators, then one of both discriminators (the
    official order):

        G: lsgan(D_B(G_AB(a))) + lsgan(D_A(G_BA(b)))                          adversarial, (f - 1)^2
           + lambda_cycle * (|G_BA(G_AB(a)) - a|_1 + |G_AB(G_BA(b)) - b|_1)   cycle consistency
           + lambda_identity * lambda_cycle * (|G_AB(b) - b|_1 + |G_BA(a) - a|_1)   identity
        D: for D_A: ((D_A(a) - 1)^2 + D_A(pool_A(fake a))^2) / 2, likewise D_B

    (|.|_1 means over elements). The G term is the paper's (D(G(x)) - 1)^2, i.e. twice
    ``generator_loss(kind="lsgan")``, which halves it: doubled here so that lambda_cycle = 10 keeps
    the paper's balance. The D term is ``discriminator_loss(kind="lsgan")`` as it is (the official
    code halves D's loss to slow D down), on the fakes of the image pools.

    Args:
        G_AB, G_BA, D_A, D_B: nn.Modules; D_A / D_B without batch statistics (the paper: instance norm).
        lambda_cycle: 10 in the paper. lambda_identity: relative to lambda_cycle, 0.5 in the paper
            (0 turns the identity term off, as for the paper's tasks other than painting -> photo).
        pool_size: the image pools' size (50; 0 disables them).
        lr, betas: Adam's (2e-4, (0.5, 0.999)). constant_steps, decay_steps: :func:`linear_decay`.
        device: move the networks there (None: where G_AB is). seed: the trainer's generator (pools).
    """

    _FORMAT = "fastgen.gan.CycleGANTrainer/1"

    def __init__(self, G_AB: nn.Module, G_BA: nn.Module, D_A: nn.Module, D_B: nn.Module, *, lambda_cycle: float = 10.0,
                 lambda_identity: float = 0.5, pool_size: int = 50, lr: float = 2e-4,
                 betas: tuple[float, float] = (0.5, 0.999), constant_steps: int = 0, decay_steps: int = 0,
                 device: torch.device | str | None = None, seed: int = 0):
        self.lambda_cycle = _check_weight("lambda_cycle", lambda_cycle)
        self.lambda_identity = _check_weight("lambda_identity", lambda_identity)
        self.pool_A, self.pool_B = ImagePool(pool_size), ImagePool(pool_size)
        self._setup({"G_AB": G_AB, "G_BA": G_BA, "D_A": D_A, "D_B": D_B}, lr, betas, constant_steps, decay_steps,
                    device, seed, g_names=("G_AB", "G_BA"))

    def _structure(self) -> dict:
        return {"lambda_cycle": self.lambda_cycle, "lambda_identity": self.lambda_identity,
                "pool_size": self.pool_A.pool_size}

    def _parts(self) -> dict:
        return {"G_AB": self.G_AB, "G_BA": self.G_BA, "D_A": self.D_A, "D_B": self.D_B, "g_optimizer": self.g_optimizer,
                "d_optimizer": self.d_optimizer, "pool_A": self.pool_A, "pool_B": self.pool_B}

    def _translate(self, name: str, G: nn.Module, x: torch.Tensor, like: torch.Tensor, like_name: str) -> torch.Tensor:
        y = G(x)
        if y.shape[1:] != like.shape[1:]:
            raise ValueError(f"{name} makes images of shape {tuple(y.shape[1:])} but {like_name} has "
                             f"{tuple(like.shape[1:])}; the generators must map between the two domains' shapes")
        return y

    def train_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, float]:
        """One G step and one D step on unpaired batches of the two domains.

        real_a (B, C_A, H, W), real_b (B, C_B, H, W): the same batch size, dtype and device as the
        parameters. Returns {"g_adv", "cycle", "identity" (weighted; only with lambda_identity > 0),
        "d_A", "d_B", "lr"} as floats, read in one transfer.
        """
        a, b = self._check_images("real_a", real_a), self._check_images("real_b", real_b)
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"real_a and real_b must have the same batch size, got {a.shape[0]} and {b.shape[0]}")
        lr = self._set_lr()
        fake_b = self._translate("G_AB", self.G_AB, a, b, "real_b")
        fake_a = self._translate("G_BA", self.G_BA, b, a, "real_a")
        rec_a, rec_b = self.G_BA(fake_b), self.G_AB(fake_a)
        g_adv = 2 * (losses.generator_loss(self.D_B(fake_b), "lsgan") + losses.generator_loss(self.D_A(fake_a), "lsgan"))
        cycle = self.lambda_cycle * (F.l1_loss(rec_a, a) + F.l1_loss(rec_b, b))
        values = {"g_adv": g_adv, "cycle": cycle}
        total = g_adv + cycle
        if self.lambda_identity > 0:
            identity = self.lambda_identity * self.lambda_cycle * (F.l1_loss(self.G_AB(b), b) + F.l1_loss(self.G_BA(a), a))
            values["identity"] = identity
            total = total + identity
        self.g_optimizer.zero_grad(set_to_none=True)
        total.backward(inputs=self._g_params)  # through D to G without touching D's .grad
        self.g_optimizer.step()

        self.d_optimizer.zero_grad(set_to_none=True)
        d_a, _ = discriminator_objective(self.D_A, a, self.pool_A.query(fake_a.detach(), self._rng), loss="lsgan")
        d_b, _ = discriminator_objective(self.D_B, b, self.pool_B.query(fake_b.detach(), self._rng), loss="lsgan")
        (d_a + d_b).backward()
        self.d_optimizer.step()
        values.update(d_A=d_a, d_B=d_b)
        return self._floats(values, lr)


class StarGANTrainer(_TranslationTrainer):
    """StarGAN (Choi et al. 2018): one G(x, target domain), a D with a source and a domain head.

    Each :meth:`train_step` is one D step and, every ``n_critic``-th call, one G step; targets are the
    batch's own labels in a random order (the official code's ``label_org[randperm]``):

        D: mean D_src(fake) - mean D_src(real) + lambda_gp * GP + lambda_cls * CE(D_cls(real), labels)
        G: -mean D_src(G(x, t)) + lambda_cls * CE(D_cls(G(x, t)), t) + lambda_rec * |G(G(x, t), labels) - x|_1

    WGAN-GP (Gulrajani et al. 2017) penalises D_src's gradient at interpolates of real and fake
    with the fused ops of :func:`fastgen.gan.penalty.gradient_penalty`. D runs once over [real; fake].

    Args:
        G: ``G(x, labels)`` -> images shaped like x, with an int ``c_dim`` (the number of domains).
        D: ``D(x)`` -> (source logits (B, ...), domain logits (B, c_dim)), no batch statistics.
        lambda_cls, lambda_rec, lambda_gp: 1, 10, 10 in the paper. n_critic: 5.
        lr, betas: Adam's (1e-4, (0.5, 0.999)). constant_steps, decay_steps: :func:`linear_decay`
            (counted in train_step calls).
        device, seed: as for :class:`CycleGANTrainer` (the seed drives targets and interpolation weights).
    """

    _FORMAT = "fastgen.gan.StarGANTrainer/1"

    def __init__(self, G: nn.Module, D: nn.Module, *, lambda_cls: float = 1.0, lambda_rec: float = 10.0,
                 lambda_gp: float = 10.0, n_critic: int = 5, lr: float = 1e-4, betas: tuple[float, float] = (0.5, 0.999),
                 constant_steps: int = 0, decay_steps: int = 0, device: torch.device | str | None = None, seed: int = 0):
        c_dim = getattr(G, "c_dim", None)
        if isinstance(c_dim, bool) or not isinstance(c_dim, int) or c_dim < 2:
            raise TypeError(f"G must have an int attribute c_dim >= 2 (the number of domains), got {c_dim!r}")
        if getattr(D, "c_dim", c_dim) != c_dim:
            raise ValueError(f"G.c_dim ({c_dim}) and D.c_dim ({D.c_dim}) must agree")
        self.c_dim = c_dim
        self.lambda_cls = _check_weight("lambda_cls", lambda_cls)
        self.lambda_rec = _check_weight("lambda_rec", lambda_rec)
        self.lambda_gp = _check_weight("lambda_gp", lambda_gp)
        self.n_critic = check_int("n_critic", n_critic, 1)
        self._setup({"G": G, "D": D}, lr, betas, constant_steps, decay_steps, device, seed, g_names=("G",))

    def _structure(self) -> dict:
        return {"c_dim": self.c_dim, "lambda_cls": self.lambda_cls, "lambda_rec": self.lambda_rec,
                "lambda_gp": self.lambda_gp, "n_critic": self.n_critic}

    def _parts(self) -> dict:
        return {"G": self.G, "D": self.D, "g_optimizer": self.g_optimizer, "d_optimizer": self.d_optimizer}

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.D(x)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError("D must return a pair (source logits, domain logits)")
        src, cls = out
        if cls.shape != (x.shape[0], self.c_dim) or src.shape[0] != x.shape[0]:
            raise ValueError(f"D must return source logits (B, ...) and domain logits (B, {self.c_dim}) for a batch of "
                             f"{x.shape[0]}, got {tuple(src.shape)} and {tuple(cls.shape)}")
        return src, cls

    def train_step(self, real: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One D step (and a G step when due) on ``real`` (B, C, H, W) with its domains ``labels``
        (B,) int64 in [0, c_dim). Returns {"d_adv", "d_cls", "gp" (weighted), "lr"} and on G steps
        {"g_adv", "g_cls", "rec" (weighted)}: each term before its lambda except gp and rec."""
        x = self._check_images("real", real)
        labels = check_domain_labels(labels, x.shape[0], self.c_dim, x.device)
        lr = self._set_lr()
        order = torch.randperm(x.shape[0], generator=self._rng, device=self.device)
        target = labels[order]

        with torch.no_grad():
            fake = self.G(x, target)
        if fake.shape != x.shape:
            raise ValueError(f"G makes images of shape {tuple(fake.shape)} from real of shape {tuple(x.shape)}")
        self.d_optimizer.zero_grad(set_to_none=True)
        src, cls = self._heads(torch.cat([x, fake]))
        batch = x.shape[0]
        d_adv = losses.discriminator_loss(src[:batch], src[batch:], "wgan")
        d_cls = F.cross_entropy(cls[:batch].float(), labels)
        gp = gradient_penalty(lambda p: self._heads(p)[0], x, fake, kind="wgan-gp", weight=self.lambda_gp,
                              generator=self._rng)
        (d_adv + gp + self.lambda_cls * d_cls).backward()
        self.d_optimizer.step()
        values = {"d_adv": d_adv, "d_cls": d_cls, "gp": gp}

        if (self.step + 1) % self.n_critic == 0:
            fake = self.G(x, target)
            src, cls = self._heads(fake)
            g_adv = losses.generator_loss(src, "wgan")
            g_cls = F.cross_entropy(cls.float(), target)
            rec = self.lambda_rec * F.l1_loss(self.G(fake, labels), x)
            self.g_optimizer.zero_grad(set_to_none=True)
            (g_adv + self.lambda_cls * g_cls + rec).backward(inputs=self._g_params)
            self.g_optimizer.step()
            values.update(g_adv=g_adv, g_cls=g_cls, rec=rec)
        return self._floats(values, lr)

    @torch.no_grad()
    def translate(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """G(x, target) in eval mode: x (B, C, H, W), target (B,) int64 domains."""
        was = self.G.training
        self.G.eval()
        try:
            return self.G(x, target)
        finally:
            self.G.train(was)
