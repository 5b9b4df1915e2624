"""``fastgen generate`` vs the diffusers pipeline loop, images/s end to end (noise -> PNG files), one run.

    python benchmarks/bench_generate.py [--device cuda] [--model tiny|ddpm-cifar10] [--batch-size 256]
        [--steps 50] [--dtype bfloat16] [--repeats 3] [--compile] [--out benchmarks/results] [--label ""]

The same as ``fastgen bench generate`` (the comparison lives in :mod:`fastgen.generation.bench`).
Defaults: on CUDA the DDPM CIFAR-10 U-Net (random weights) at batch 256, DDIM 50 steps, bfloat16 (the
issue's target: >= 2x diffusers eager bf16); on CPU a tiny U-Net at batch 16, 10 steps, float32.
Results go to ``<out>/generate_<device>.{csv,json}`` with provenance.
"""
import sys

from fastgen.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "generate", *sys.argv[1:]]))
