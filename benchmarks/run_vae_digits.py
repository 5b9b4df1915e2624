"""Train a VAE on the shipped UCI digits on a CPU; report ELBO and IWAE negative log-likelihoods on a test split.

    python benchmarks/run_vae_digits.py [--steps 3000] [--batch 64] [--lr 1e-3] [--latent 16] [--iwae-k 64 1000]
                                        [--device cpu] [--threads N] [--out benchmarks/results] [--label TEXT]
                                        [--quick]

Data: the 1,797 8x8 digits of :func:`fastgen.data.load_digits` (normalize="[-1,1]": x = k / 8 - 1 for the
17 ink levels k = 0..16). Split: every fifth image in file order (index % 5 == 0, 360 images) is the
test split, the other 1,437 train. Model: :meth:`fastgen.models.VAE.digits` (conv encoder/decoder,
16-d latent) with a discretised logistic over the 17 levels, so log p(x|z) is a probability mass
and bits/dim need no Jacobian term: bits/dim = NLL / (64 ln 2), in the 17-level space (a uniform
model scores log2(17) = 4.09). Trained with :class:`fastgen.vae.VAETrainer` (AdamW, clipping, EMA);
the EMA weights are evaluated (and, for comparison, the last weights' test ELBO).

Reported on both splits: the ELBO (closed-form KL, mean over ``--elbo-draws`` draws of z per image)
as an NLL bound, and on the test split IWAE_k (Burda et al. 2016) for each ``--iwae-k``, a tighter
bound: NLL_IWAE <= NLL_ELBO. Written: ``<out>/vae_digits_<device>.json`` (provenance, config, loss
curve, numbers), ``<out>/vae_digits_reconstructions.png`` (test images, rows alternating with their
reconstructions at the posterior mean) and ``<out>/vae_digits_samples.png`` (64 decoder means at
z ~ N(0, I)). ``--quick`` is a seconds-long smoke run writing ``*_quick`` files, for a test.
"""
import argparse
import json
import math
import os
import sys
import time

import torch

from fastgen import benchmarking
from fastgen._io import atomic_write
from fastgen.data import load_digits, split_indices
from fastgen.data.digits import TEST_EVERY
from fastgen.models import VAE, bits_per_dim
from fastgen.vae import VAETrainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_digits_training import image_grid_png  # noqa: E402  (one grid writer for the digits scripts)

DIMS = 64


def split_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """(train (1437, 1, 8, 8), test (360, 1, 8, 8)) float32 in [-1, 1]: the package's one split
    (fastgen.data.digits.split_indices, the digits classifier's too)."""
    images, _ = load_digits(8, normalize="[-1,1]")
    split = split_indices()
    return images[torch.as_tensor(split["train"])].contiguous(), images[torch.as_tensor(split["test"])].contiguous()


def endless_batches(images: torch.Tensor, batch: int, generator: torch.Generator):
    """Shuffled minibatches of ``images``, reshuffled each epoch, full batches only, forever."""
    while True:
        order = torch.randperm(images.shape[0], generator=generator)
        for start in range(0, images.shape[0] - batch + 1, batch):
            yield images[order[start:start + batch]]


@torch.no_grad()
def evaluate(model: VAE, images: torch.Tensor, *, elbo_draws: int, iwae_ks: list[int], seed: int,
             max_batch: int) -> dict:
    """Mean NLL bounds in nats and bits/dim over ``images``."""
    model.eval()
    g = torch.Generator(device=images.device).manual_seed(seed)
    out = {}
    elbo = torch.stack([model.elbo(images, generator=g) for _ in range(elbo_draws)]).mean(0)
    nll = -elbo.double()
    out["elbo"] = {"nll_nats": nll.mean().item(), "nll_nats_sem": (nll.std() / math.sqrt(nll.numel())).item(),
                   "bits_per_dim": bits_per_dim(nll.mean().item(), DIMS), "draws": elbo_draws}
    for k in iwae_ks:
        start = time.perf_counter()
        nll = -model.iwae_bound(images, k, generator=g, max_batch=max_batch).double()
        out[f"iwae_{k}"] = {"nll_nats": nll.mean().item(), "nll_nats_sem": (nll.std() / math.sqrt(nll.numel())).item(),
                            "bits_per_dim": bits_per_dim(nll.mean().item(), DIMS), "k": k,
                            "seconds": time.perf_counter() - start}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--ema-decay", type=float, default=0.995)
    parser.add_argument("--iwae-k", type=int, nargs="+", default=[64, 1000])
    parser.add_argument("--elbo-draws", type=int, default=10)
    parser.add_argument("--max-batch", type=int, default=8192, help="IWAE: decoder passes of at most this many images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--label", default="")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads; on a CPU shared with other jobs 1 avoids oversubscription")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (20 steps, 20 test images)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch, args.iwae_k, args.elbo_draws = 20, 16, [64], 2
    if min(args.steps, args.batch, args.latent, args.elbo_draws, args.max_batch, *args.iwae_k) < 1:
        parser.error("--steps, --batch, --latent, --elbo-draws, --max-batch and --iwae-k must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    suffix = "_quick" if args.quick else ""

    train, test = (t.to(device) for t in split_digits())
    if args.quick:
        train, test = train[:200], test[:20]
    torch.manual_seed(args.seed)
    model = VAE.digits(latent_dim=args.latent)
    trainer = VAETrainer(model, lr=args.lr, ema_decay=args.ema_decay, grad_clip=100.0, device=device, seed=args.seed)
    batches = endless_batches(train, args.batch, torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    history = trainer.fit(batches, args.steps, progress=not args.quick, log_every=max(1, min(100, args.steps // 10)))
    train_s = time.perf_counter() - start

    start = time.perf_counter()
    ema = trainer.ema
    results = {"test": evaluate(ema, test, elbo_draws=args.elbo_draws, iwae_ks=args.iwae_k, seed=args.seed + 1,
                                max_batch=args.max_batch),
               "train": evaluate(ema, train, elbo_draws=args.elbo_draws, iwae_ks=[], seed=args.seed + 2,
                                 max_batch=args.max_batch),
               # the last weights, not averaged: how much the EMA buys
               "test_last_weights": evaluate(trainer.model, test, elbo_draws=args.elbo_draws, iwae_ks=[],
                                             seed=args.seed + 1, max_batch=args.max_batch)}
    eval_s = time.perf_counter() - start

    os.makedirs(args.out, exist_ok=True)
    n_rows = max(1, min(32, test.shape[0]) // 8)
    shown = test[:8 * n_rows]
    pairs = torch.stack([shown, ema.reconstruct(shown)], 1)        # (8 n_rows, 2, 1, 8, 8)
    rows = pairs.view(n_rows, 8, 2, 1, 8, 8).transpose(1, 2).reshape(-1, 1, 8, 8)  # 8 images, then theirs
    samples = ema.sample(64, generator=torch.Generator(device=device).manual_seed(args.seed))
    pngs = {}
    for name, images in (("reconstructions", rows), ("samples", samples)):
        pngs[name] = os.path.join(args.out, f"vae_digits_{name}{suffix}.png")
        image = image_grid_png(images)
        atomic_write(pngs[name], lambda f, image=image: image.save(f, format="PNG"))

    result = {
        "provenance": benchmarking.provenance(device, label=args.label),
        "config": {"steps": args.steps, "batch": args.batch, "lr": args.lr, "ema_decay": args.ema_decay,
                   "grad_clip": 100.0, "latent_dim": args.latent, "likelihood": "discretized logistic, 17 bins",
                   "model": "fastgen.models.VAE.digits", "parameters": sum(p.numel() for p in model.parameters()),
                   "split": f"test = images with index % {TEST_EVERY} == 0 ({test.shape[0]}), train = the rest "
                            f"({train.shape[0]})", "evaluated": "EMA weights", "seed": args.seed},
        "units": "NLL in nats per image (64 dims) and bits/dim in the 17-level space; uniform = log2(17) = "
                 f"{math.log2(17):.4f} bits/dim",
        "results": results,
        "train_seconds": train_s, "steps_per_second": args.steps / train_s, "eval_seconds": eval_s,
        "loss_curve": history, "pngs": {k: os.path.basename(v) for k, v in pngs.items()},
    }
    path = os.path.join(args.out, f"vae_digits_{device.type}{suffix}.json")
    text = json.dumps(result, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    t = results["test"]
    print(f"trained {args.steps} steps in {train_s:.1f} s; test NLL (nats / bits per dim): ELBO "
          f"{t['elbo']['nll_nats']:.2f} / {t['elbo']['bits_per_dim']:.4f}, "
          + ", ".join(f"IWAE k={k} {t[f'iwae_{k}']['nll_nats']:.2f} / {t[f'iwae_{k}']['bits_per_dim']:.4f}"
                      for k in args.iwae_k), flush=True)
    print(f"wrote {path}, {pngs['reconstructions']}, {pngs['samples']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
