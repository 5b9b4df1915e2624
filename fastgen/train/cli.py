"""``fastgen train diffusion|gan2d``: the argparse subcommands (registered by fastgen.cli)."""
from __future__ import annotations

import sys

__all__ = ["add_train_parser"]


def add_train_parser(sub) -> None:
    """Add ``train`` with its two commands to ``sub``; each sets ``args.handler(args, argv) -> exit code``."""
    from .presets import UNET_PRESETS

    train = sub.add_parser("train", help="train a model").add_subparsers(dest="kind", required=True)
    p = train.add_parser("diffusion", help="a DDPM UNet on the digits, a PNG folder or an npz (torchrun: DDP)",
                         description="Train a DDPM UNet; writes DIR/checkpoint.pt and DIR/fastgen_model.json "
                                     "(fastgen generate DIR/checkpoint.pt ... samples from it). Under torchrun "
                                     "--nproc_per_node=N -m fastgen train diffusion ... it trains data-parallel.")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--data", default="digits", help="'digits' (the shipped UCI digits, train split), a folder of "
                   "PNG images or an .npz with uint8 NHWC 'images' (fastgen generate --format npz)")
    p.add_argument("--size", type=int, default=None, help="digits: 8, 16 (default) or 32; files: their size (checked)")
    p.add_argument("--preset", default=None, choices=sorted(UNET_PRESETS),
                   help="UNet architecture (default digits<size>)")
    p.add_argument("--steps", type=int, default=1000, help="total training steps (with --resume: continue to this)")
    p.add_argument("--batch-size", type=int, default=64, help="the global batch (split over torchrun's processes)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--ema-decay", type=float, default=0.995, help="EMA decay of the weights (default 0.995)")
    p.add_argument("--resume", action="store_true", help="continue DIR/checkpoint.pt exactly")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N", help="also checkpoint every N steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default cuda where available")
    p.add_argument("--amp", "--dtype", dest="amp", choices=("none", "float32", "bf16", "bfloat16"), default="none",
                   help="bf16: the model's forward under bfloat16 autocast (loss and optimizer in float32)")
    p.add_argument("--log-every", type=int, default=50, help="read the loss every N steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_train_diffusion)

    from ..gan.recipes import DATA, DEFAULT_RECIPE, RUNS

    g = train.add_parser("gan2d", help="a GAN recipe on PacGAN's 2-D grid or ring, scored by PacGAN's protocol",
                         description="Train a recipe of fastgen.gan.recipes; writes DIR/samples.npy (2500 x 2), "
                                     "DIR/samples.png and DIR/scores.json and prints modes, high-quality fraction "
                                     "and reverse KL.")
    g.add_argument("--data", required=True, choices=DATA)
    g.add_argument("--seed", type=int, required=True)
    g.add_argument("--out", required=True, metavar="DIR")
    g.add_argument("--recipe", default=DEFAULT_RECIPE, choices=sorted(RUNS), help=f"default {DEFAULT_RECIPE}")
    g.add_argument("--steps", type=int, default=None, help="generator steps (default: the recipe's, 3000 unless it says)")
    g.add_argument("--quick", action="store_true", help="tiny networks, 10 steps: a smoke run")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.set_defaults(handler=run_train_gan2d)


def run_train_diffusion(args, argv: list[str]) -> int:
    from .diffusion import train_diffusion

    try:
        train_diffusion(out=args.out, data=args.data, size=args.size, preset=args.preset, steps=args.steps,
                        batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay, resume=args.resume,
                        checkpoint_every=args.checkpoint_every, seed=args.seed, device=args.device,
                        amp="bf16" if args.amp in ("bf16", "bfloat16") else None, log_every=args.log_every,
                        progress=not args.no_progress)
    except ValueError as exc:  # bad input (and fastgen.checkpoint.CheckpointError): a message, exit 2
        print(f"fastgen train diffusion: {exc}", file=sys.stderr)
        return 2
    return 0


def run_train_gan2d(args, argv: list[str]) -> int:
    from .gan2d import train_gan2d

    try:
        train_gan2d(data=args.data, seed=args.seed, out=args.out, recipe=args.recipe, steps=args.steps,
                    quick=args.quick, progress=not args.no_progress)
    except ValueError as exc:
        print(f"fastgen train gan2d: {exc}", file=sys.stderr)
        return 2
    return 0
