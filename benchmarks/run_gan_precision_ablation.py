"""Precision of the 2-D mixture GANs: what raises the high-quality fraction of ``ns+r1`` (issue 11).

    python benchmarks/run_gan_precision_ablation.py --configs NAME[,NAME] --data grid,ring --seeds 0,1
                                                    [--part-dir DIR] [--threads 1] [--quick]
    python benchmarks/run_gan_precision_ablation.py --collect DIR [--out benchmarks/results] [--label TEXT]

PacGAN's protocol (Lin et al. 2018, Table 1), as in benchmarks/run_gan_mode_coverage.py: 2500 samples
from latents seeded with seed + 1; high quality = within 3 std of the nearest mode; a mode is covered
by >= 1 high-quality sample; reverse KL of the high-quality histogram (``reverse_kl``) and of the
nearest-mode histogram of all samples (``reverse_kl_all``, the paper's) against uniform. Data: the
5 x 5 grid (std 0.05) and the 8-mode ring (radius 2, std 0.02) of fastgen.data; fresh batches.
The issue's goal, on every seed 0-9: all modes, >= 96% (grid) / >= 98% (ring) high quality, reverse KL
(all samples) <= 0.02. For scale: samples of the data itself are high quality with probability
1 - exp(-9/2) = 98.9%, so the ring's goal leaves 0.9 points for samples between modes.

Every config starts from ``ns+r1`` (fastgen.gan.recipes.RUNS: NS loss, R1 gamma 0.1, Adam lr 1e-3,
betas (0, 0.99), EMA 0.99, MLPs 3 x 256, latent 2, batch 256) and changes what its entry says. One
training run is scored several times, which costs little next to training:

* at each G step of ``eval_at`` (longer training, read off the same run);
* from G itself, from the trainer's EMA (decay 0.99) and from extra EMAs (``extra_ema``, e.g. 0.999),
  all updated after every G step from the same G, so the EMA ablation is exact (same G trajectory);
* ``lr_decay = (start, final)``: both Adam learning rates held at lr until G step ``start *
  steps``, then decayed linearly to ``final * lr`` at ``steps`` (torch.optim.lr_scheduler.LambdaLR,
  stepped after each G step: GANTrainer's lr_schedule=linear_lr_decay(steps, start, final));
* ``jbt_keep``: each model is also scored on the samples of Jacobian-based truncation
  (fastgen.gan.jacobian_truncation, Tanielian et al. 2020): the 2500 of ceil(2500 / keep) latents
  (the same evaluation stream) whose Jacobian dG/dz has the smallest Frobenius norm; rows
  ``<model>+jbt<keep>``, with the sampler's own time in ``sample_seconds``.

``--rescore-from DIR`` scores a config from the final models (``.pt`` beside each part file) that a
run of its ``trains_like`` config saved in DIR, instead of training the same G again (training is
deterministic: same seed, same G; rows say ``rescored_from``).

Results: a part file per (config, data, seed) in ``--part-dir`` (so that runs can go in separate
processes), then ``--collect`` merges every part into ``<out>/gan_precision_ablation_cpu.{json,csv}``
with provenance, written atomically (fastgen._io). ``--threads`` defaults to 1 (a shared machine).
"""
from __future__ import annotations

import argparse
import csv
import glob
import io
import itertools
import json
import math
import os
import shlex
import sys
import time

import torch

from fastgen import benchmarking, checkpoint
from fastgen._io import atomic_write_text
from fastgen.data import grid_mixture, ring_mixture, toy_batches
from fastgen.gan import GANTrainer
from fastgen.gan.jacobian_truncation import jacobian_truncated_sample
from fastgen.gan.metrics import mode_coverage
from fastgen.gan.trainer import linear_lr_decay
from fastgen.gan.recipes import EVAL_SAMPLES, QUICK_SETTINGS, RUNS, SETTINGS
from fastgen.models import MLPDiscriminator, MLPGenerator

MIXTURES = {"grid": grid_mixture, "ring": ring_mixture}
GOAL_HQ = {"grid": 0.96, "ring": 0.98}
GOAL_KL_ALL = 0.02
BASE = {k: v for k, v in RUNS["ns+r1"].items() if k != "first_seed_only"}

# Not every config was run on every seed (a shared 2-core machine): the results JSON lists what ran.
# b1024 and g0001 were not run to the end (time); their entries stay for the next session.
# name -> changes to ns+r1: "trainer" (GANTrainer keyword arguments over BASE), "steps" (G steps),
# "eval_at" (G steps to score at), "lr_decay" ((start fraction, final factor) or None),
# "extra_ema" (decays kept besides the trainer's), "settings" (over SETTINGS: batch, hidden, depth, latent_dim),
# "jbt_keep" (fractions of candidate latents kept by Jacobian-based truncation, each scored as well),
# "trains_like" (a config with the same training, whose saved final models --rescore-from can score)
CONFIGS = {
    "base-6k": dict(steps=6000, eval_at=(3000, 4500, 6000), extra_ema=(0.999,)),
    "decay-3k": dict(steps=3000, eval_at=(1500, 3000), lr_decay=(0.5, 0.01), extra_ema=(0.999,)),
    "decay-6k": dict(steps=6000, eval_at=(3000, 6000), lr_decay=(0.5, 0.01), extra_ema=(0.999,)),
    "decay-9k": dict(steps=9000, eval_at=(4500, 9000), lr_decay=(0.5, 0.01), extra_ema=(0.999,)),
    # decay-6k again (same seeds -> the same G), its EMA and G also scored after Jacobian-based truncation;
    # keep 0.9 is the recipe ns+r1-decay-jbt's (chosen on decay-6k / decay-9k runs of seeds 0-3 before this one)
    "decay-6k-jbt": dict(steps=6000, eval_at=(6000,), lr_decay=(0.5, 0.01), jbt_keep=(0.95, 0.9, 0.8),
                         trains_like="decay-6k"),
    "decay-9k-jbt": dict(steps=9000, eval_at=(9000,), lr_decay=(0.5, 0.01), jbt_keep=(0.95, 0.9, 0.8),
                         trains_like="decay-9k"),
    "decay-3k-b1024": dict(steps=3000, eval_at=(3000,), lr_decay=(0.5, 0.01), extra_ema=(0.999,),
                           settings={"batch": 1024}),
    "decay-3k-g1": dict(steps=3000, eval_at=(3000,), lr_decay=(0.5, 0.01), extra_ema=(0.999,),
                        trainer={"penalty_weight": 1.0}),
    "decay-3k-g001": dict(steps=3000, eval_at=(3000,), lr_decay=(0.5, 0.01), extra_ema=(0.999,),
                          trainer={"penalty_weight": 0.01}),
    "decay-3k-g0001": dict(steps=3000, eval_at=(3000,), lr_decay=(0.5, 0.01), extra_ema=(0.999,),
                           trainer={"penalty_weight": 0.001}),
}
COLUMNS = ["config", "data", "seed", "g_steps", "model", "modes_covered", "num_modes", "high_quality_fraction",
           "reverse_kl", "reverse_kl_all", "meets_goal", "train_seconds", "lr_at_eval", "penalty_weight", "batch",
           "hidden", "depth", "latent_dim", "lr_decay", "jbt_keep", "sample_seconds", "rescored_from"]
PROVENANCE_COLUMNS = ["device_name", "torch", "git_commit", "date_utc"]


def meets_goal(data: str, score: dict) -> bool:
    return (score["modes_covered"] == score["num_modes"] and score["high_quality_fraction"] >= GOAL_HQ[data]
            and score["reverse_kl_all"] <= GOAL_KL_ALL)


def _settings(cfg: dict, quick: bool) -> dict:
    settings = {**(QUICK_SETTINGS if quick else SETTINGS), **cfg.get("settings", {})}
    if quick:
        settings["batch"] = QUICK_SETTINGS["batch"]
    return settings


def _score(name: str, data: str, seed: int, g_step: int, models: dict, settings: dict, common: dict,
           progress: bool) -> list[dict]:
    """One row per (model, jbt_keep of the config or none) on the evaluation latents of ``seed``."""
    cfg, mixture, rows = CONFIGS[name], MIXTURES[data](), []
    for (label, model), keep in itertools.product(models.items(), (None, *cfg.get("jbt_keep", ()))):
        rng = torch.Generator().manual_seed(seed + 1)
        start = time.perf_counter()
        if keep is None:
            z = torch.randn(EVAL_SAMPLES, settings["latent_dim"], generator=rng)
            was_training = model.training
            model.eval()
            with torch.no_grad():
                samples = model(z)
            model.train(was_training)
        else:
            samples = jacobian_truncated_sample(model, EVAL_SAMPLES, keep, rng=rng).samples
        sample_seconds = time.perf_counter() - start
        score = mode_coverage(samples, mixture).as_dict()
        rows.append({"config": name, "data": data, "seed": seed, "g_steps": g_step,
                     "model": label if keep is None else f"{label}+jbt{keep:g}", **score,
                     "meets_goal": meets_goal(data, score), **common, **settings,
                     "lr_decay": None if not cfg.get("lr_decay") else list(cfg["lr_decay"]),
                     "jbt_keep": keep, "sample_seconds": sample_seconds})
        if progress:
            r = rows[-1]
            print(f"  {name} {data} seed {seed} step {g_step} {r['model']}: {r['modes_covered']}/{r['num_modes']} "
                  f"HQ {100 * r['high_quality_fraction']:.1f}% KL all {r['reverse_kl_all']:.4f} "
                  f"({r['train_seconds']:.0f} s)", flush=True)
    return rows


def run(name: str, data: str, seed: int, *, quick: bool = False, progress: bool = False,
        model_path: str | None = None) -> list[dict]:
    """Train config ``name`` on ``data`` from seed ``seed``; one row per (eval step, scored model).
    ``model_path``: also torch.save the final G, EMA and D state dicts there."""
    cfg = CONFIGS[name]
    settings = _settings(cfg, quick)
    steps = 12 if quick else cfg["steps"]
    eval_at = (6, 12) if quick else cfg["eval_at"]
    kwargs = {**BASE, **cfg.get("trainer", {})}
    if cfg.get("lr_decay"):
        kwargs["lr_schedule"] = linear_lr_decay(steps, *cfg["lr_decay"])
    torch.manual_seed(seed)
    G = MLPGenerator(latent_dim=settings["latent_dim"], hidden=settings["hidden"], depth=settings["depth"])
    D = MLPDiscriminator(hidden=settings["hidden"], depth=settings["depth"])
    trainer = GANTrainer(G, D, seed=seed, **kwargs)
    extra = {d: checkpoint.ema_copy(G) for d in cfg.get("extra_ema", ())}
    batches = toy_batches(data, settings["batch"], generator=torch.Generator().manual_seed(seed))
    rows, seconds = [], 0.0
    for g_step in range(1, steps + 1):
        start = time.perf_counter()
        for _ in range(trainer.n_critic):
            trainer.train_step(next(batches))
        for decay, ema in extra.items():
            checkpoint.update_ema(ema, trainer.generator, decay)
        seconds += time.perf_counter() - start
        if g_step not in eval_at:
            continue
        models = {"G": trainer.generator, f"ema{trainer.ema_decay:g}": trainer.ema,
                  **{f"ema{d:g}": m for d, m in extra.items()}}
        common = {"train_seconds": seconds, "lr_at_eval": trainer.g_optimizer.param_groups[0]["lr"],
                  "penalty_weight": kwargs.get("penalty_weight")}
        rows += _score(name, data, seed, g_step, models, settings, common, progress)
    if model_path is not None:  # scratch, for looking at the samples afterwards (not a result file)
        torch.save({"settings": settings, "generator": trainer.generator.state_dict(),
                    "ema": trainer.ema.state_dict(), "discriminator": trainer.discriminator.state_dict()}, model_path)
    return rows


def rescore(name: str, data: str, seed: int, model_dir: str, *, progress: bool = False) -> list[dict]:
    """Score config ``name`` from the final models that an earlier run of config ``trains_like`` saved in
    ``model_dir`` (``<trains_like>_<data>_<seed>.pt`` and its part file) instead of training again: the
    same training (same seed -> the same G and EMA), so only the scoring is new. Training time and lr are
    the part file's."""
    cfg = CONFIGS[name]
    source = cfg.get("trains_like")
    if source is None or cfg["eval_at"] != (cfg["steps"],):
        raise SystemExit(f"config {name} cannot be rescored: it needs trains_like and eval_at = (steps,)")
    stem = os.path.join(model_dir, f"{source}_{data}_{seed}")
    with open(stem + ".json") as f:
        trained = [r for r in json.load(f)["rows"] if r["g_steps"] == cfg["steps"]]
    state = torch.load(stem + ".pt")
    settings = _settings(cfg, False)
    models = {}
    for label, key in (("G", "generator"), (f"ema{BASE['ema_decay']:g}", "ema")):
        models[label] = MLPGenerator(latent_dim=settings["latent_dim"], hidden=settings["hidden"],
                                     depth=settings["depth"])
        models[label].load_state_dict(state[key])
    common = {k: trained[0][k] for k in ("train_seconds", "lr_at_eval", "penalty_weight")}
    return _score(name, data, seed, cfg["steps"], models, settings, {**common, "rescored_from": source}, progress)


def _json_value(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def summarize(rows: list[dict]) -> list[dict]:
    """Per (config, data, g_steps, model) over its seeds: per-seed modes / HQ / KL, the worst and mean."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["config"], r["data"], r["g_steps"], r["model"]), []).append(r)
    out = []
    for (config, data, g_steps, model), mine in groups.items():
        mine = sorted(mine, key=lambda r: r["seed"])
        hq = [r["high_quality_fraction"] for r in mine]
        kl = [r["reverse_kl_all"] for r in mine]
        out.append({"config": config, "data": data, "g_steps": g_steps, "model": model,
                    "seeds": [r["seed"] for r in mine], "modes_covered": [r["modes_covered"] for r in mine],
                    "num_modes": mine[0]["num_modes"], "high_quality_fraction": hq, "reverse_kl_all": kl,
                    "min_high_quality_fraction": min(hq), "mean_high_quality_fraction": sum(hq) / len(hq),
                    "max_reverse_kl_all": max(kl), "mean_reverse_kl_all": sum(kl) / len(kl),
                    "min_modes_covered": min(r["modes_covered"] for r in mine),
                    "seeds_meeting_goal": sum(r["meets_goal"] for r in mine),
                    "mean_train_seconds": sum(r["train_seconds"] for r in mine) / len(mine),
                    "mean_sample_seconds": (None if any(r.get("sample_seconds") is None for r in mine)
                                            else sum(r["sample_seconds"] for r in mine) / len(mine))})
    return out


def format_summary(summary: list[dict]) -> str:
    lines = []
    for s in summary:
        lines.append(f"{s['config']:16s} {s['data']:4s} {s['g_steps']:5d} {s['model']:9s} seeds "
                     f"{','.join(map(str, s['seeds']))}: modes {s['modes_covered']} HQ "
                     f"{', '.join(f'{100 * h:.1f}' for h in s['high_quality_fraction'])} (min "
                     f"{100 * s['min_high_quality_fraction']:.1f}) KL_all max {s['max_reverse_kl_all']:.4f} "
                     f"goal {s['seeds_meeting_goal']}/{len(s['seeds'])}")
    return "\n".join(lines)


def collect(part_dir: str, out_dir: str, label: str, argv: list[str]) -> tuple[str, str]:
    """Merge the part files of ``part_dir`` into ``<out_dir>/gan_precision_ablation_cpu.{json,csv}``."""
    parts = sorted(p for p in glob.glob(os.path.join(part_dir, "*.json")) if not p.endswith("_quick.json"))
    if not parts:
        raise SystemExit(f"no part files (*.json) in {part_dir}")
    rows, commands = [], []
    for path in parts:
        with open(path) as f:
            part = json.load(f)
        rows += part["rows"]
        commands.append(part["command"])
    key = list(CONFIGS)
    rows.sort(key=lambda r: (key.index(r["config"]) if r["config"] in key else len(key), r["config"], r["data"],
                             r["g_steps"], r["model"], r["seed"]))
    summary = summarize(rows)
    prov = benchmarking.provenance("cpu", label=label, command=shlex.join(["python", __file__] + argv))
    prov.update(part_commands=sorted(set(commands)), eval_samples=EVAL_SAMPLES, threshold_std=3.0,
                min_samples_per_mode=1, goal={"high_quality_fraction": GOAL_HQ, "reverse_kl_all": GOAL_KL_ALL},
                configs={k: {kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()}
                         for k, v in CONFIGS.items()}, base=dict(BASE, betas=list(BASE["betas"])))
    text_json = json.dumps({"provenance": prov, "rows": [{k: _json_value(v) for k, v in r.items()} for r in rows],
                            "summary": summary}, indent=1, allow_nan=False) + "\n"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS + PROVENANCE_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, **{k: prov.get(k) for k in PROVENANCE_COLUMNS}})
    os.makedirs(out_dir, exist_ok=True)
    paths = (os.path.join(out_dir, "gan_precision_ablation_cpu.json"),
             os.path.join(out_dir, "gan_precision_ablation_cpu.csv"))
    atomic_write_text(paths[0], text_json)
    atomic_write_text(paths[1], buf.getvalue())
    print(format_summary(summary))
    return paths


def _list(text: str, kind=str) -> list:
    try:
        return [kind(s) for s in text.split(",") if s]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", type=_list, default=["decay-3k"])
    parser.add_argument("--data", type=_list, default=["grid", "ring"])
    parser.add_argument("--seeds", type=lambda t: _list(t, int), default=[0, 1])
    parser.add_argument("--part-dir", default="/tmp/gan_precision_parts")
    parser.add_argument("--collect", metavar="DIR", help="merge the part files of DIR into the results and exit")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--label", default="")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny networks, 12 steps: a smoke run")
    parser.add_argument("--rescore-from", metavar="DIR",
                        help="score the final models that a run of the config's trains_like saved in DIR, no training")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    if args.collect:
        print("results:", *collect(args.collect, args.out, args.label, argv))
        return 0
    bad = [c for c in args.configs if c not in CONFIGS] + [d for d in args.data if d not in MIXTURES]
    if bad:
        parser.error(f"unknown config / data {bad}; configs: {sorted(CONFIGS)}, data: {sorted(MIXTURES)}")
    if args.threads < 1 or any(s < 0 for s in args.seeds):
        parser.error("--threads must be >= 1 and seeds >= 0")
    torch.set_num_threads(args.threads)
    os.makedirs(args.part_dir, exist_ok=True)
    command = shlex.join(["python", "benchmarks/run_gan_precision_ablation.py"] + argv)
    for name in args.configs:
        for data in args.data:
            for seed in args.seeds:
                stem = os.path.join(args.part_dir, f"{name}_{data}_{seed}{'_quick' if args.quick else ''}")
                if args.rescore_from:
                    rows = rescore(name, data, seed, args.rescore_from, progress=True)
                else:
                    rows = run(name, data, seed, quick=args.quick, progress=True, model_path=stem + ".pt")
                path = stem + ".json"
                atomic_write_text(path, json.dumps({"command": command, "rows": [
                    {k: _json_value(v) for k, v in r.items()} for r in rows]}, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
