"""Train fastgen's digits classifier (fastgen.metrics.digits_classifier) and ship its weights.

    python benchmarks/train_digits_classifier.py [--epochs 60] [--out fastgen/metrics/digits_classifier.pt]
                                                 [--results benchmarks/results]

Deterministic: fixed seeds, one CPU thread (so the same torch build gives the same weights on any
machine). Trains on the 1,437-image train split, measures the 360-image held-out split, writes the
weights (with that record inside) atomically, and ``<results>/digits_classifier.json`` with
provenance, the record and the weights' SHA-256.
"""
import argparse
import hashlib
import json
import os
import sys
import time

import torch

from fastgen import benchmarking
from fastgen._io import atomic_write, atomic_write_text
from fastgen.metrics.digits_classifier import WEIGHTS_PATH, train_digits_classifier

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--out", default=WEIGHTS_PATH, help="weights file (default: the package's)")
    parser.add_argument("--results", default=RESULTS, help="folder for digits_classifier.json ('' for none)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    torch.set_num_threads(1)
    start = time.perf_counter()
    model, record = train_digits_classifier(epochs=args.epochs)
    seconds = time.perf_counter() - start
    state = {k: v.clone() for k, v in model.state_dict().items()}
    atomic_write(args.out, lambda f: torch.save(dict(state_dict=state, **record), f))
    with open(args.out, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, sha256 {sha[:12]}): held-out accuracy "
          f"{record['test_accuracy']:.4f} ({record['test_correct']}/{record['test_size']}), {seconds:.0f} s")
    if args.results:
        result = {"provenance": benchmarking.provenance("cpu", command=" ".join(["python"] + sys.argv)),
                  "record": record, "train_seconds": seconds, "weights_sha256": sha,
                  "parameters": sum(p.numel() for p in model.parameters())}
        path = os.path.join(args.results, "digits_classifier.json")
        atomic_write_text(path, json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
