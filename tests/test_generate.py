"""fastgen generate (fastgen/generation/): per-seed equality with the diffusers pipelines on CPU,
invariance to batch size, process count and resume, the manifest, bad input, npz, checkpoints.

Models are tiny random UNet2DModels (8x8, 2-3 steps) so the whole file takes seconds."""
import json
import os
import re
import socket
import time

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from fastgen.cli import main
from fastgen.generation import ManifestMismatch, generate, parse_seeds, png_path
from fastgen.generation import loop as gen_loop
from fastgen.generation.seeds import npz_units, rank_units

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 3
PIPELINES = {"DDPMScheduler": diffusers.DDPMPipeline, "DDIMScheduler": diffusers.DDIMPipeline}


def _unet(**overrides):
    torch.manual_seed(0)
    cfg = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
               norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
               up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    cfg.update(overrides)
    return diffusers.UNet2DModel(**cfg)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """{scheduler class name: (saved folder, the diffusers pipeline)} of one tiny random U-Net."""
    out = {}
    for name, cls in PIPELINES.items():
        pipe = cls(unet=_unet(), scheduler=getattr(diffusers, name)())
        folder = str(tmp_path_factory.mktemp(name))
        pipe.save_pretrained(folder)
        out[name] = (folder, pipe)
    return out


def _pipeline_image(pipe, seed: int, steps: int = STEPS) -> np.ndarray:
    """The diffusers pipeline's image for batch_size=1 and generator=manual_seed(seed), as its PIL output."""
    images = pipe(batch_size=1, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                  output_type="pil").images
    return np.asarray(images[0])


def _png(out, seed, subdirs=False) -> np.ndarray:
    return np.asarray(Image.open(png_path(str(out), seed, subdirs)))


def _run(model, out, seeds="0-5", **kw):
    kw.setdefault("steps", STEPS)
    kw.setdefault("device", "cpu")
    kw.setdefault("progress", False)
    kw.setdefault("log", lambda *a: None)
    return generate(model, str(out), parse_seeds(seeds), **kw)


def _pngs(out) -> dict[str, bytes]:
    """The finished PNGs of ``out`` (not temp files) by name."""
    return {n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out))
            if n.endswith(".png") and not n.startswith(".tmp-")}


# --- the contract: diffusers' image per seed, whatever the batch -------------------------------------------

@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_equals_diffusers_pipeline_per_seed(pipelines, name, tmp_path):
    folder, pipe = pipelines[name]
    result = _run(folder, tmp_path, "0-4", batch_size=3)
    assert (result.generated, result.skipped) == (5, 0)
    informative = 0
    for seed in range(5):
        got, ref = _png(tmp_path, seed).astype(int), _pipeline_image(pipe, seed).astype(int)
        assert got.shape == ref.shape == (8, 8, 3)
        diff = np.abs(got - ref)
        # the same draws and the same math in another order: 8-bit rounding may move a level, rarely
        assert diff.max() <= 1 and (diff > 0).mean() < 0.02, (seed, diff.max(), (diff > 0).mean())
        informative += ((ref > 0) & (ref < 255)).sum()
    assert informative > 200  # not a saturated image that any sampler would match
    # different seeds, different images (the noise really is per seed)
    assert not np.array_equal(_png(tmp_path, 0), _png(tmp_path, 1))


def test_scheduler_override_and_alias(pipelines, tmp_path):
    """--scheduler ddim on a DDPM pipeline: fastgen's DDIM from the folder's config, i.e. the DDIM pipeline of
    diffusers' DDIMScheduler.from_config(that config)."""
    folder, pipe = pipelines["DDPMScheduler"]
    _run(folder, tmp_path, "7", scheduler="ddim")
    ddim = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    ref_pipe = diffusers.DDIMPipeline(unet=pipe.unet, scheduler=ddim)
    diff = np.abs(_png(tmp_path, 7).astype(int) - _pipeline_image(ref_pipe, 7).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.02
    manifest = json.load(open(tmp_path / "manifest.json"))
    assert manifest["images"]["scheduler"]["class"] == "DDIMScheduler"


def test_batch_size_invariance_and_subdirs(pipelines, tmp_path):
    folder, _ = pipelines["DDPMScheduler"]
    _run(folder, tmp_path / "b1", "998-1003", batch_size=1)
    _run(folder, tmp_path / "b4", "998-1003", batch_size=4, subdirs=True)
    for seed in range(998, 1004):
        assert np.array_equal(_png(tmp_path / "b1", seed), _png(tmp_path / "b4", seed, subdirs=True)), seed
    assert sorted(os.listdir(tmp_path / "b4")) == ["000000", "001000", "manifest.json"]


# --- resume ------------------------------------------------------------------------------------------------

def test_resume_after_kill_every_image_once_and_identical(pipelines, tmp_path, monkeypatch):
    folder, _ = pipelines["DDIMScheduler"]
    _run(folder, tmp_path / "ref", "0-7", batch_size=3)
    reference = _pngs(tmp_path / "ref")

    out = tmp_path / "run"
    real_write, writes = gen_loop.PngWriter.write, []

    def dying_write(self, unit, images):  # the process "dies" after 4 images
        if len(writes) == 4:
            raise KeyboardInterrupt
        writes.append(unit[0])
        real_write(self, unit, images)

    monkeypatch.setattr(gen_loop.PngWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        _run(folder, out, "0-7", batch_size=3)
    monkeypatch.setattr(gen_loop.PngWriter, "write", real_write)
    assert len(_pngs(out)) == 4 and not [n for n in os.listdir(out) if n.startswith(".tmp-")]
    # what a SIGKILL can leave besides: a temp file of an unfinished PNG (fresh) and an old one
    fresh, stale = out / ".tmp-abcd1234000005.png", out / ".tmp-zz99yy88000006.png"
    fresh.write_bytes(b"\x89PNG half")
    stale.write_bytes(b"\x89PNG half")
    os.utime(stale, (1e9, 1e9))
    os.remove(out / "000001.png")  # and a user deleted one
    before = {n: os.stat(out / n).st_mtime_ns for n in _pngs(out)}

    result = _run(folder, out, "0-7", batch_size=2)
    assert (result.generated, result.skipped, result.folder) == (5, 3, "resumed")
    assert _pngs(out) == reference  # every image, byte for byte as the uninterrupted run
    assert all(os.stat(out / n).st_mtime_ns == t for n, t in before.items())  # finished ones untouched
    assert not stale.exists() and fresh.exists()  # only temp files older than 10 minutes are swept

    again = _run(folder, out, "0-7")
    assert (again.generated, again.skipped) == (0, 8)


# --- the manifest --------------------------------------------------------------------------------------------

def test_manifest_provenance_and_mismatch(pipelines, tmp_path):
    folder, _ = pipelines["DDIMScheduler"]
    _run(folder, tmp_path, "0-2")
    manifest = json.load(open(tmp_path / "manifest.json"))
    assert manifest["images"]["steps"] == STEPS and manifest["images"]["dtype"] == "float32"
    assert manifest["images"]["device_type"] == "cpu" and len(manifest["images"]["model"]["sha256"]) == 64
    assert manifest["images"]["scheduler"]["config"]["num_train_timesteps"] == 1000
    assert manifest["provenance"]["model_path"] == os.path.abspath(folder)
    assert manifest["provenance"]["versions"]["torch"] == torch.__version__
    files = _pngs(tmp_path)
    text = (tmp_path / "manifest.json").read_text()

    with pytest.raises(ManifestMismatch, match=r"--out.*steps: folder 3, this run 2"):
        _run(folder, tmp_path, "0-5", steps=2)
    with pytest.raises(ManifestMismatch, match="scheduler.class"):
        _run(folder, tmp_path, "0-5", scheduler="ddpm")
    assert _pngs(tmp_path) == files and (tmp_path / "manifest.json").read_text() == text  # nothing written
    # a batch size, process count or seed list of its own is the same images: accepted
    assert _run(folder, tmp_path, "0-3", batch_size=1).generated == 1

    other = tmp_path / "other"
    other.mkdir()
    (other / "cat.png").write_bytes(b"not ours")
    with pytest.raises(ManifestMismatch, match="not empty"):
        _run(folder, other, "0")
    assert os.listdir(other) == ["cat.png"]


# --- bad input --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("0-9,5-12", "overlap"), ("3,3", "overlap"), ("9-5", "ends before"), ("a-b", "not a seed"), ("-1", "not a seed"),
    ("", "seed list"), ("1-2-3", "not a seed"), (f"0-{2**63}", "out of range")])
def test_bad_seeds(text, message):
    with pytest.raises(ValueError, match=f"--seeds.*{message}"):
        parse_seeds(text)


def test_seed_units_and_ranks():
    assert parse_seeds("10-12, 3,0-1") == [0, 1, 3, 10, 11, 12]
    units = npz_units([0, 1, 3, 10, 11, 999, 1000], 4)
    assert units == [[0, 1, 3], [10, 11], [999], [1000]]
    shares = [rank_units(units, r, 3) for r in range(3)]
    assert sorted(u[0] for share in shares for u in share) == [u[0] for u in units]  # each unit exactly once


def test_bad_inputs_from_the_command_line(pipelines, tmp_path, capsys):
    folder, pipe = pipelines["DDPMScheduler"]
    bare = tmp_path / "bare"
    pipe.unet.save_pretrained(bare)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    cases = [
        ([str(tmp_path / "junk")], "MODEL: .* neither a diffusers pipeline"),
        ([str(tmp_path / "missing")], "MODEL: .* does not exist"),
        ([str(tmp_path / "junk" / "x.txt")], "MODEL: .* not a fastgen training checkpoint"),
        ([str(bare)], "bare UNet2DModel folder.*--scheduler"),
        ([folder, "--scheduler", "nope"], "--scheduler='nope' is not a fastgen scheduler"),
        ([folder, "--seeds", "0-9,5-12"], "--seeds.*overlap"),
        ([folder, "--steps", "5000"], "--steps=5000 exceeds"),
        ([folder, "--scheduler", "pndm", "--steps", "2"], "--steps=2: num_inference_steps must be >= 4"),
        ([folder, "--class-labels", "1"], "--class-labels: the model is not class-conditional"),
        ([folder, "--format", "npz", "--subdirs"], "--subdirs applies to --format png"),
    ]
    for args, message in cases:
        argv = ["generate", *args, "--out", str(tmp_path / "out")] + ([] if "--seeds" in args else ["--seeds", "0"])
        assert main(argv + ["--device", "cpu", "--no-progress"]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("fastgen generate: ") and re.search(message, err), (args, err)
    assert not (tmp_path / "out").exists()  # nothing written by any of them

    # the bare folder with a scheduler works, and a pipeline folder's scheduler fastgen lacks is named
    assert main(["generate", str(bare), "--scheduler", "DDIMScheduler", "--out", str(tmp_path / "o2"), "--seeds", "0",
                 "--steps", "2", "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    config = json.load(open(os.path.join(folder, "scheduler", "scheduler_config.json")))
    odd = tmp_path / "odd"
    pipe.save_pretrained(odd)
    config["_class_name"] = "ScoreSdeVeScheduler"
    (odd / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    assert main(["generate", str(odd), "--out", str(tmp_path / "o3"), "--seeds", "0", "--device", "cpu"]) == 2
    assert "ScoreSdeVeScheduler" in capsys.readouterr().err


def test_class_labels():
    assert gen_loop.parse_class_labels(None, 3) == [0, 1, 2]
    assert gen_loop.parse_class_labels("2", 3) == [2]
    with pytest.raises(ValueError, match=r"--class-labels: \[7\] out of range"):
        gen_loop.parse_class_labels("1,7", 3)
    with pytest.raises(ValueError, match="--class-labels must be"):
        gen_loop.parse_class_labels("a", 3)


def test_class_conditional_unet(tmp_path):
    pipe = diffusers.DDIMPipeline(unet=_unet(num_class_embeds=3), scheduler=diffusers.DDIMScheduler())
    pipe.save_pretrained(tmp_path / "m")
    _run(str(tmp_path / "m"), tmp_path / "a", "0-2")
    _run(str(tmp_path / "m"), tmp_path / "b", "0-2", class_labels="0")
    a, b = _pngs(tmp_path / "a"), _pngs(tmp_path / "b")
    assert a["000000.png"] == b["000000.png"] and a["000001.png"] != b["000001.png"]  # seed 1: class 1 vs class 0


# --- npz output ---------------------------------------------------------------------------------------------

def test_npz_shards_equal_pngs(pipelines, tmp_path):
    folder, _ = pipelines["DDIMScheduler"]
    _run(folder, tmp_path / "png", "0-9")
    _run(folder, tmp_path / "npz", "0-9", fmt="npz", shard_size=4, batch_size=3)
    names = sorted(n for n in os.listdir(tmp_path / "npz") if n.endswith(".npz"))
    assert names == ["samples_000000-000003.npz", "samples_000004-000007.npz", "samples_000008-000011.npz"]
    seen = []
    for n in names:
        with np.load(tmp_path / "npz" / n) as f:
            images, seeds = f["images"], f["seeds"]
        assert images.dtype == np.uint8 and images.shape == (len(seeds), 8, 8, 3)
        for image, seed in zip(images, seeds):
            assert np.array_equal(image, _png(tmp_path / "png", int(seed)))
        seen += seeds.tolist()
    assert seen == list(range(10))
    # resuming with another seed list that changes a finished shard's seeds is refused, naming --seeds
    with pytest.raises(ValueError, match="--seeds: .*samples_000008-000011.npz"):
        _run(folder, tmp_path / "npz", "0-10", fmt="npz", shard_size=4)


# --- checkpoints ------------------------------------------------------------------------------------------------

def test_gan_checkpoint_uses_ema_generator(tmp_path):
    from fastgen.gan import GANTrainer
    from fastgen.generation import write_model_config
    from fastgen.models import DCGANDiscriminator, DCGANGenerator

    kwargs = dict(latent_dim=8, channels=3, image_size=16, base_channels=4)
    trainer = GANTrainer(DCGANGenerator(**kwargs), DCGANDiscriminator(channels=3, image_size=16, base_channels=4),
                         ema_decay=0.9)
    with torch.no_grad():
        trainer.ema.net[0].weight.mul_(3.0)  # EMA weights differ from G's: the images must come from the EMA
    trainer.save_checkpoint(str(tmp_path / "gan.pt"))
    write_model_config(str(tmp_path / "fastgen_model.json"), "DCGANGenerator", kwargs)
    result = _run(str(tmp_path / "gan.pt"), tmp_path / "out", "5-7", batch_size=2)
    assert result.generated == 3
    ema = trainer.ema.eval()
    for seed in (5, 6, 7):
        z = torch.randn((1, 8), generator=torch.Generator().manual_seed(seed))
        x = ema(z)[0].permute(1, 2, 0).numpy()
        expected = (np.clip(x / 2 + 0.5, 0, 1) * 255).round().astype(np.uint8)
        assert np.array_equal(_png(tmp_path / "out", seed), expected), seed
    manifest = json.load(open(tmp_path / "out" / "manifest.json"))
    assert manifest["images"]["kind"] == "gan" and "ema" in manifest["images"]["model"]["layout"]
    with pytest.raises(ValueError, match="--scheduler: MODEL .* is a GAN"):
        _run(str(tmp_path / "gan.pt"), tmp_path / "o2", "0", scheduler="ddim")


def test_diffusion_checkpoint_uses_ema_and_config_scheduler(tmp_path):
    import fastgen.diffusion as fd
    from fastgen.generation import to_uint8, write_model_config
    from fastgen.models import UNet

    kwargs = dict(in_channels=1, out_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(), image_size=8, groups=4)
    trainer = fd.DiffusionTrainer(UNet(**kwargs), fd.DDPMScheduler(), ema_decay=0.5, device="cpu")
    trainer.train_step(torch.randn(2, 1, 8, 8))  # one step: records the sample shape, EMA != model
    trainer.save_checkpoint(str(tmp_path / "ckpt.pt"))
    write_model_config(str(tmp_path / "arch.json"), "UNet", kwargs, scheduler=fd.DDIMScheduler())
    _run(str(tmp_path / "ckpt.pt"), tmp_path / "out", "3-4", model_config=str(tmp_path / "arch.json"), steps=2)
    x = fd.sample(trainer.ema.eval(), fd.DDIMScheduler(), (2, 1, 8, 8), num_inference_steps=2, progress=False,
                  generator=[torch.Generator().manual_seed(s) for s in (3, 4)])
    expected = to_uint8(x)
    for i, seed in enumerate((3, 4)):
        assert np.array_equal(_png(tmp_path / "out", seed), expected[i, ..., 0]), seed
    assert "ema" in json.load(open(tmp_path / "out" / "manifest.json"))["images"]["model"]["layout"]
    with pytest.raises(ValueError, match="--model-config"):  # no fastgen_model.json beside it, none given
        _run(str(tmp_path / "ckpt.pt"), tmp_path / "o2", "0")


def test_draws_step_noise_decides_the_cuda_graph():
    """On a GPU a loop whose steps draw no noise is captured whole; the probe must tell them apart."""
    import fastgen.diffusion as fd
    from fastgen.generation.noise import draws_step_noise

    assert draws_step_noise(fd.DDPMScheduler(), 5)
    assert draws_step_noise(fd.EulerAncestralDiscreteScheduler(), 5)
    assert draws_step_noise(fd.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"), 5)
    for cls in (fd.DDIMScheduler, fd.DPMSolverMultistepScheduler, fd.EulerDiscreteScheduler, fd.UniPCMultistepScheduler,
                fd.PNDMScheduler):
        assert not draws_step_noise(cls(), 5), cls.__name__


def test_sample_takes_the_initial_noise():
    """fd.sample(noise=...): the caller's initial noise (per-seed rows on a GPU) instead of a draw."""
    import fastgen.diffusion as fd

    def model(x, t):
        return 0.1 * x + 0.001 * t.float().view(-1, 1, 1, 1)

    shape = (3, 2, 4, 4)
    drawn = fd.sample(model, fd.DDIMScheduler(), shape, num_inference_steps=4, progress=False,
                      generator=torch.Generator().manual_seed(5))
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    given = fd.sample(model, fd.DDIMScheduler(), shape, num_inference_steps=4, progress=False, seed=0, noise=noise)
    assert torch.equal(given, drawn)
    with pytest.raises(ValueError, match=r"noise must be a tensor of shape \(3, 2, 4, 4\)"):
        fd.sample(model, fd.DDIMScheduler(), shape, num_inference_steps=4, progress=False, noise=noise[:2])


def test_bench_generate_runs():
    from fastgen.generation.bench import comparison

    rows = comparison("tiny", torch.device("cpu"), 2, 2, torch.float32, timing={"min_run_time": 0.01}).run()
    assert [r.impl for r in rows] == ["diffusers", "fastgen", "fastgen --no-accelerate"]
    assert all(r.median_s > 0 and r.speedup > 0 for r in rows)


# --- several processes -------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, argv: list[str]) -> None:
    """One process of a torchrun-like launch: the environment torchrun sets, then the command line."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    code = main(argv)
    if code != 0:
        raise SystemExit(code)


def test_two_processes_gloo_same_images(pipelines, tmp_path, capfd):
    """Two processes (gloo, env:// as under torchrun): the one-process images, each written once, one final line.
    Forked from this interpreter so the test costs no imports; ``torchrun --nproc_per_node=2 -m fastgen
    generate ...`` runs the same code after its launcher has set the same variables."""
    folder, _ = pipelines["DDPMScheduler"]
    _run(folder, tmp_path / "one", "0-6", batch_size=2)
    argv = ["generate", folder, "--out", str(tmp_path / "two"), "--seeds", "0-6", "--batch-size", "2",
            "--steps", str(STEPS), "--device", "cpu", "--no-progress"]

    def launch() -> str:
        capfd.readouterr()
        ctx = torch.multiprocessing.start_processes(_rank_main, args=(2, _free_port(), argv), nprocs=2, join=False,
                                                    start_method="fork")
        deadline = time.monotonic() + 120
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                pytest.fail("the two processes did not finish within 120 s")
        return capfd.readouterr().out

    out = launch()
    assert "7 images in" in out and out.count("images in") == 1, out  # all ranks' images, rank 0's line only
    assert _pngs(tmp_path / "two") == _pngs(tmp_path / "one")
    assert json.load(open(tmp_path / "two" / "manifest.json"))["provenance"]["world_size"] == 2
    for seed in (0, 2, 3):  # resumed by two processes: the missing three, shared between them
        os.remove(tmp_path / "two" / f"{seed:06d}.png")
    out = launch()
    assert "4 images already" in out and "3 images in" in out, out
    assert _pngs(tmp_path / "two") == _pngs(tmp_path / "one")


# --- GPU ---------------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_cuda_per_seed_noise_batch_invariant(pipelines, name, tmp_path):
    """On a GPU: per-seed CUDA generators (DDPM draws step noise: eager; DDIM draws none: CUDA graph), so an
    image does not depend on its batch, up to the network's own batch-shape-dependent rounding."""
    folder, _ = pipelines[name]
    _run(folder, tmp_path / "a", "0-9", device="cuda", batch_size=1)
    _run(folder, tmp_path / "b", "0-9", device="cuda", batch_size=7)
    for seed in range(10):
        diff = np.abs(_png(tmp_path / "a", seed).astype(int) - _png(tmp_path / "b", seed).astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.02, seed
    manifest = json.load(open(tmp_path / "a" / "manifest.json"))
    assert manifest["provenance"]["cuda_graph"] is (name == "DDIMScheduler")
