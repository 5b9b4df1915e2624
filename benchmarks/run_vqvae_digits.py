"""Train a VQ-VAE and a two-level VQ-VAE-2 on the shipped 8x8 digits, then gated PixelCNN priors over
their codes, on a CPU in a few minutes; report reconstruction MSE, code usage and perplexity, prior
NLL, and write reconstructions and samples.

    python benchmarks/run_vqvae_digits.py [--steps 1500] [--prior-steps 600] [--batch 64] [--codes 32]
                                          [--code-dim 16] [--hidden 32] [--threads N] [--seed 0]
                                          [--out benchmarks/results] [--label TEXT] [--quick]

Data: the VAE script's split (benchmarks/run_vae_digits.py: every 5th image is test, 360 of 1,797),
pixels in [-1, 1]. Models: :class:`fastgen.models.VQVAE` (codes on a 4x4 map) and
:class:`fastgen.models.VQVAE2` (top codes 2x2, bottom codes 4x4), EMA codebooks (decay 0.99) with
k-means initialisation on the first batch and restarts of codes unused for 100 steps; Adam.
Priors: :class:`fastgen.models.GatedPixelCNN` on the training set's code maps (VQ-VAE-2: a top
prior and a bottom prior conditioned on the upsampled top codes). Reported on the test split: MSE
in the [-1, 1] scale (and in [0, 1], a quarter of it), perplexity exp(H) of the code frequencies
and the fraction of codes used (over all test code maps), the priors' NLL in nats per code.
Writes ``<out>/vqvae_digits.json`` (provenance, configuration, numbers, loss curves) and per model
``vqvae_digits_<model>_reconstructions.png`` (test images, rows alternating with their
reconstructions) and ``vqvae_digits_<model>_samples.png`` (64 samples from the prior). ``--quick``:
a seconds-long smoke run writing ``*_quick`` files.
"""
import argparse
import copy
import json
import os
import sys
import time

import torch

from fastgen import benchmarking
from fastgen._io import atomic_write
from fastgen.models import VQVAE, VQVAE2, GatedPixelCNN
from fastgen.nn.vector_quantizer import code_statistics

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_digits_training import image_grid_png  # noqa: E402  (one grid writer for the digits scripts)
from run_vae_digits import endless_batches, split_digits  # noqa: E402  (the same split as the VAE's)

PRIOR_DIM = 32  # channels of the priors' stacks


def train(model, images, steps, batch, lr, generator, loss_fn, log_every, validate=None):
    """Adam on ``loss_fn(model, batch)`` -> (loss, stats dict); returns the logged curve.

    ``validate()`` (a float, lower is better), when given, runs at each log point; the model ends
    with the weights of the best one (early stopping on a held-out part of the training data)."""
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    curve, window, best = [], [], (float("inf"), None)
    for step, x in zip(range(1, steps + 1), endless_batches(images, batch, generator)):
        loss, stats = loss_fn(model, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window.append({"loss": float(loss.detach()), **stats})
        if step % log_every == 0 or step == steps:
            curve.append({"step": step, **{k: sum(w[k] for w in window) / len(window) for k in window[0]}})
            window = []
            if validate is not None:
                model.eval()
                with torch.no_grad():
                    curve[-1]["validation"] = value = validate()
                model.train()
                if value < best[0]:
                    best = (value, copy.deepcopy(model.state_dict()))
    if best[1] is not None:
        model.load_state_dict(best[1])
    return curve


def vq_loss(model, x):
    out = model(x)
    perp = out.perplexity if isinstance(out.perplexity, torch.Tensor) else out.perplexity[-1]
    return out.loss, {"mse": float(out.mse.detach()), "perplexity": float(perp)}


@torch.no_grad()
def evaluate(model, images, num_codes) -> dict:
    model.eval()
    out = model(images)
    levels = out.indices if isinstance(out.indices, tuple) else (out.indices,)
    names = ("top", "bottom") if len(levels) == 2 else ("codes",)
    result = {"mse": float(out.mse), "mse_0_1_scale": float(out.mse) / 4}
    for name, idx in zip(names, levels):
        perplexity, usage = code_statistics(idx, num_codes)
        result[name] = {"perplexity": float(perplexity), "usage": float(usage), "map": list(idx.shape[1:])}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--prior-steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--codes", type=int, default=32)
    parser.add_argument("--code-dim", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default torch's)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--label", default="")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.prior_steps, args.batch = 20, 20, 16
    if min(args.steps, args.prior_steps, args.batch, args.codes, args.code_dim, args.hidden) < 1:
        parser.error("--steps, --prior-steps, --batch, --codes, --code-dim and --hidden must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    suffix = "_quick" if args.quick else ""
    torch.manual_seed(args.seed)
    train_images, test_images = split_digits()
    log_every = max(1, min(50, args.steps // 10))
    vq = dict(ema=True, decay=0.99, kmeans_init=True, restart_after=100, beta=0.25)
    arch = dict(hidden=args.hidden, num_codes=args.codes, code_dim=args.code_dim, down=1, res_blocks=2)
    results, pngs = {}, {}
    os.makedirs(args.out, exist_ok=True)
    for name, cls in (("vqvae", VQVAE), ("vqvae2", VQVAE2)):
        gen = torch.Generator().manual_seed(args.seed)
        model = cls(1, **arch, **vq)
        start = time.perf_counter()
        curve = train(model, train_images, args.steps, args.batch, args.lr, gen, vq_loss, log_every)
        train_s = time.perf_counter() - start
        numbers = evaluate(model, test_images, args.codes)

        with torch.no_grad():  # code maps of the training set for the priors
            codes = model(train_images).indices
            test_codes = model(test_images).indices
        if name == "vqvae":
            priors = {"codes": GatedPixelCNN(args.codes, dim=PRIOR_DIM, layers=6)}
            inputs = {"codes": (codes, None)}
            test_inputs = {"codes": (test_codes, None)}
        else:
            priors = {"top": GatedPixelCNN(args.codes, dim=PRIOR_DIM, layers=4),
                      "bottom": GatedPixelCNN(args.codes, dim=PRIOR_DIM, layers=6, cond_channels=args.code_dim)}
            with torch.no_grad():
                inputs = {"top": (codes[0], None), "bottom": (codes[1], model.bottom_condition(codes[0]))}
                test_inputs = {"top": (test_codes[0], None),
                               "bottom": (test_codes[1], model.bottom_condition(test_codes[0]))}
        prior_numbers, prior_curves = {}, {}
        start = time.perf_counter()
        for level, prior in priors.items():
            target, cond = inputs[level]
            # batches of indices, so code maps and conditions stay paired; the last 10% of the
            # training images are held out for early stopping (the prior overfits 1,437 maps fast)
            n_fit = target.shape[0] - target.shape[0] // 10
            data, held = torch.arange(n_fit), torch.arange(n_fit, target.shape[0])

            def prior_loss(p, idx, target=target, cond=cond):
                loss = p.loss(target[idx], None if cond is None else cond[idx])
                return loss, {}

            def validate(prior=prior, target=target, cond=cond):
                return float(prior.loss(target[held], None if cond is None else cond[held]))
            prior_curves[level] = train(prior, data, args.prior_steps, args.batch, 1e-3, gen, prior_loss,
                                        max(1, min(25, args.prior_steps // 10)), validate)
            prior.eval()
            with torch.no_grad():
                t_target, t_cond = test_inputs[level]
                nll = float(prior.loss(t_target, t_cond))
            prior_numbers[level] = {"test_nll_nats_per_code": nll, "test_nll_bits_per_code": nll / 0.6931471805599453}
        prior_s = time.perf_counter() - start

        sample_gen = torch.Generator().manual_seed(args.seed + 1)
        start = time.perf_counter()
        if name == "vqvae":
            samples = model.sample(priors["codes"], 64, (8, 8), generator=sample_gen)
        else:
            samples = model.sample(priors["top"], priors["bottom"], 64, (8, 8), generator=sample_gen)
        sample_s = time.perf_counter() - start
        with torch.no_grad():
            shown = test_images[:32]
            recon = model(shown).reconstruction
        pairs = torch.stack([shown.view(4, 8, 1, 8, 8), recon.view(4, 8, 1, 8, 8)], 1).reshape(64, 1, 8, 8)
        for kind, images in (("reconstructions", pairs), ("samples", samples)):
            path = os.path.join(args.out, f"vqvae_digits_{name}_{kind}{suffix}.png")
            image = image_grid_png(images)
            atomic_write(path, lambda f, image=image: image.save(f, format="PNG"))
            pngs[f"{name}_{kind}"] = os.path.basename(path)
        results[name] = {"test": numbers, "prior": prior_numbers, "train_seconds": train_s,
                         "prior_train_seconds": prior_s, "sample_seconds_64": sample_s,
                         "parameters": sum(p.numel() for p in model.parameters()),
                         "prior_parameters": sum(p.numel() for pr in priors.values() for p in pr.parameters()),
                         "loss_curve": curve, "prior_loss_curves": prior_curves}
        print(f"{name}: trained {args.steps} steps in {train_s:.1f} s; test MSE {numbers['mse']:.4f} ([-1,1] scale); "
              + "; ".join(f"{k} perplexity {v['perplexity']:.1f}, usage {v['usage']:.2f}"
                          for k, v in numbers.items() if isinstance(v, dict))
              + "; prior NLL " + ", ".join(f"{k} {v['test_nll_nats_per_code']:.3f}" for k, v in prior_numbers.items())
              + " nats/code", flush=True)

    result = {
        "provenance": benchmarking.provenance("cpu", label=args.label),
        "config": {"steps": args.steps, "prior_steps": args.prior_steps, "batch": args.batch, "lr": args.lr,
                   "prior_lr": 1e-3, "architecture": arch, "quantizer": vq, "seed": args.seed,
                   "split": "test = images with index % 5 == 0 (360), train = the rest (1437), as run_vae_digits.py",
                   "prior": f"gated PixelCNN (vertical/horizontal stacks), {PRIOR_DIM} channels, kernel 3; "
                            "VQ-VAE: 6 layers; VQ-VAE-2: top 4 layers, bottom 6 conditioned on the top codes; "
                            "early stopping on the last 10% of the training images (validation NLL every 25 steps)",
                   "mse_scale": "pixels in [-1, 1]; mse_0_1_scale = mse / 4"},
        "results": results, "pngs": pngs,
    }
    path = os.path.join(args.out, f"vqvae_digits{suffix}.json")
    text = json.dumps(result, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    print(f"wrote {path} and {', '.join(pngs.values())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
