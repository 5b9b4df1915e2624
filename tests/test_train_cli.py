"""``fastgen train diffusion`` and ``fastgen train gan2d``: files, exact resume, 2-process DDP (gloo) against
one process, the data sources, bad input; and the --quick run of benchmarks/run_digits_quality_vs_steps.py."""
import importlib.util
import json
import os
import shutil
import socket
import time

import numpy as np
import pytest
import torch

from fastgen import checkpoint
from fastgen.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--size", "8", "--preset", "tiny", "--batch-size", "8", "--log-every", "1", "--no-progress"]


def _train(out, steps, *extra) -> int:
    return main(["train", "diffusion", "--out", str(out), "--steps", str(steps), *TINY, *extra])


def _state(out) -> dict:
    """The checkpoint's payload (checksum verified)."""
    return checkpoint._read(str(out / "checkpoint.pt"), "training")


def _assert_same_modules(a: dict, b: dict, exact: bool = True, atol: float = 0.0) -> None:
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            if exact:
                assert torch.equal(a[part][key], b[part][key]), (part, key)
            else:
                torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=atol, msg=f"{part}.{key}")


def test_train_writes_checkpoint_and_model_config_for_generate(tmp_path):
    from fastgen.generation import load_model

    assert _train(tmp_path / "run", 2) == 0
    state = _state(tmp_path / "run")
    assert state["step"] == 2 and list(state["sample_shape"]) == [1, 8, 8]
    config = json.load(open(tmp_path / "run" / "fastgen_model.json"))
    assert config["class"] == "UNet" and config["kwargs"]["image_size"] == 8
    assert config["scheduler"]["_class_name"] == "DDIMScheduler"
    loaded = load_model(str(tmp_path / "run" / "checkpoint.pt"))  # what fastgen generate reads
    assert loaded.kind == "diffusion" and loaded.sample_shape == (1, 8, 8)
    for key, value in loaded.module.state_dict().items():  # the EMA weights
        assert torch.equal(value, state["ema"][key]), key


def test_resume_is_exact(tmp_path):
    """4 steps in one go == 2 steps, then --resume to 4: bit for bit (weights, EMA, optimizer, RNG states)."""
    assert _train(tmp_path / "straight", 4) == 0
    assert _train(tmp_path / "resumed", 2) == 0
    assert _train(tmp_path / "resumed", 4, "--resume") == 0
    a, b = _state(tmp_path / "straight"), _state(tmp_path / "resumed")
    assert a["step"] == b["step"] == 4
    _assert_same_modules(a, b)
    for key, value in a["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(value[name], b["optimizer"]["state"][key][name])
    assert torch.equal(a["rng"]["trainer"], b["rng"]["trainer"])
    # and the weights did move from their initial values (not a comparison of two untouched models)
    assert _train(tmp_path / "zero", 0) == 0  # a checkpoint of the initial weights
    initial = _state(tmp_path / "zero")["model"]
    assert all(not torch.equal(initial[k], a["model"][k]) for k in ("conv_in.weight", "conv_out.weight"))


# --- two processes ---------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, argv: list[str]) -> None:
    """One process of a torchrun launch: the environment torchrun sets, then the command line."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    code = main(argv)
    if code != 0:
        raise SystemExit(code)


def _launch(argv: list[str], world: int = 2) -> None:
    """Fork ``world`` ranks of ``fastgen <argv>`` from this interpreter (no imports to pay); ``torchrun
    --nproc_per_node=2 -m fastgen train diffusion ...`` runs the same code with the same variables set."""
    ctx = torch.multiprocessing.start_processes(_rank_main, args=(world, _free_port(), argv), nprocs=world,
                                                join=False, start_method="fork")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the processes did not finish within 120 s")


def test_two_processes_gloo_equal_one_process(tmp_path):
    """DDP over 2 CPU processes (global batch 8 = 2 x 4) == 1 process on the same global batch, 3 steps:
    same timesteps, the same noise (the global batch's Philox stream at each shard's offset), gradients
    averaged; equal up to float summation order. Then 2 processes resume a 1-process checkpoint as one
    process would (the global batch, not the process count, fixes the batches, timesteps and noise).

    Tolerance: Adam moves every weight by ~lr (1e-3) per step whatever its gradient's size, so a weight
    whose gradient is mostly rounding (the attention's key bias, which softmax ignores) moves by an
    amount the summation order decides; 2e-5 is 2% of one step. Shards with the same noise on both ranks
    (offset 0) fail it, in conv_in.weight already."""
    assert _train(tmp_path / "one", 3) == 0
    _launch(["train", "diffusion", "--out", str(tmp_path / "two"), "--steps", "3", *TINY, "--device", "cpu"])
    one, two = _state(tmp_path / "one"), _state(tmp_path / "two")
    assert two["step"] == 3
    _assert_same_modules(one, two, exact=False, atol=2e-5)
    assert torch.equal(one["rng"]["trainer"], two["rng"]["trainer"])  # the global batch's timesteps were drawn
    shutil.copytree(tmp_path / "one", tmp_path / "mixed")  # one process's checkpoint, resumed by two
    assert _train(tmp_path / "one", 5, "--resume") == 0
    _launch(["train", "diffusion", "--out", str(tmp_path / "mixed"), "--steps", "5", "--resume", *TINY, "--device",
             "cpu"])
    _assert_same_modules(_state(tmp_path / "one"), _state(tmp_path / "mixed"), exact=False, atol=2e-5)


# --- data sources ----------------------------------------------------------------------------------------------

def _pngs(folder, sizes, mode="L"):
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, s in enumerate(sizes):
        shape = (s, s) if mode == "L" else (s, s, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(folder / f"{i:03d}.png")


def test_png_folder_and_npz_data(tmp_path):
    from fastgen.train.data import load_training_images

    _pngs(tmp_path / "rgb" / "sub", [8] * 9, mode="RGB")  # recursive, like generate's --subdirs
    images, info = load_training_images(str(tmp_path / "rgb"))
    assert images.shape == (9, 3, 8, 8) and info["num_images"] == 9
    assert -1.0 <= images.min() and images.max() <= 1.0
    from PIL import Image
    first = np.array(Image.open(sorted((tmp_path / "rgb" / "sub").iterdir())[0]))
    torch.testing.assert_close(images[0], torch.from_numpy(first).permute(2, 0, 1).float() / 127.5 - 1)
    pixels = np.random.default_rng(1).integers(0, 256, (10, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "x.npz", images=pixels, seeds=np.arange(10))  # fastgen generate --format npz's layout
    images, _ = load_training_images(str(tmp_path / "x.npz"))
    torch.testing.assert_close(images, torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert main(["train", "diffusion", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "x.npz"),
                 "--steps", "1", "--preset", "tiny", "--batch-size", "4", "--no-progress"]) == 0
    assert list(_state(tmp_path / "run")["sample_shape"]) == [1, 8, 8]


def test_batches_shard_the_global_batch():
    from fastgen.train.data import global_batch_indices, step_batches

    images = torch.arange(23, dtype=torch.float32).view(23, 1, 1, 1)
    one = step_batches(images, 6, start=0, seed=3)
    ranks = [step_batches(images, 6, start=0, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for step in range(9):  # 3 steps per epoch: crosses epochs
        whole = next(one)
        assert torch.equal(whole.flatten(), global_batch_indices(23, 6, step, 3).float())
        assert torch.equal(torch.cat([next(r) for r in ranks]), whole)
    late = step_batches(images, 6, start=7, seed=3)
    assert torch.equal(next(late).flatten(), global_batch_indices(23, 6, 7, 3).float())
    epoch = torch.cat([global_batch_indices(23, 6, s, 3) for s in range(3)])
    assert len(set(epoch.tolist())) == 18  # an epoch draws without replacement


# --- bad input -------------------------------------------------------------------------------------------------

def _fails(capsys, argv, *words) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, err


def test_bad_input_names_the_argument(tmp_path, capsys):
    out = ["train", "diffusion", "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress"]
    _fails(capsys, out + ["--data", str(tmp_path / "missing")], "--data", "does not exist")
    _pngs(tmp_path / "mixed", [8, 8, 10])
    _fails(capsys, out + ["--data", str(tmp_path / "mixed")], "--data", "one size", "10x10")
    _pngs(tmp_path / "ok", [8, 8])
    _fails(capsys, out + ["--data", str(tmp_path / "ok"), "--size", "16"], "--size 16", "8x8")
    (tmp_path / "notes.txt").write_text("x")
    _fails(capsys, out + ["--data", str(tmp_path / "notes.txt")], "--data", "not an .npz")
    np.savez(tmp_path / "floats.npz", images=np.zeros((4, 8, 8, 1), np.float32))
    _fails(capsys, out + ["--data", str(tmp_path / "floats.npz")], "--data", "uint8")
    _fails(capsys, out + ["--resume"], "--resume", "no ")
    _fails(capsys, out + ["--size", "12"], "--size")
    _fails(capsys, out + ["--batch-size", "5000"], "--batch-size")
    if not torch.cuda.is_available():
        _fails(capsys, out + ["--device", "cuda"], "--device cuda")
    assert not os.path.exists(tmp_path / "run" / "checkpoint.pt")
    assert _train(tmp_path / "run", 1) == 0
    _fails(capsys, ["train", "diffusion", "--out", str(tmp_path / "run"), "--steps", "2", *TINY], "--resume", "exists")
    _fails(capsys, ["train", "diffusion", "--out", str(tmp_path / "run"), "--steps", "2", *TINY, "--resume",
                    "--seed", "1"], "--resume", "seed=0")
    from fastgen.train.data import step_batches
    with pytest.raises(ValueError, match="--batch-size 7 .* divisible by the number of processes, 2"):
        step_batches(torch.zeros(20, 1, 8, 8), 7, start=0, seed=0, rank=0, world_size=2)  # raised at the call


# --- gan2d -----------------------------------------------------------------------------------------------------

def test_train_gan2d_quick(tmp_path, capsys):
    from fastgen.data import ring_mixture
    from fastgen.gan.metrics import mode_coverage

    assert main(["train", "gan2d", "--data", "ring", "--seed", "0", "--out", str(tmp_path), "--quick", "--steps", "3",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "modes" in printed and "high quality" in printed and "reverse KL" in printed
    samples = np.load(tmp_path / "samples.npy")
    assert samples.shape == (2500, 2) and samples.dtype == np.float32
    scores = json.load(open(tmp_path / "scores.json"))
    expected = mode_coverage(torch.from_numpy(samples), ring_mixture())
    from fastgen.gan.recipes import DEFAULT_RECIPE

    assert scores["modes_covered"] == expected.modes_covered and scores["recipe"] == DEFAULT_RECIPE
    assert scores["scored"] == "ema"
    from PIL import Image
    image = Image.open(tmp_path / "samples.png").convert("RGB")
    assert (np.asarray(image) == (214, 39, 40)).all(axis=2).sum() >= 8 * 9  # a red cross on each of the 8 modes
    _fails(capsys, ["train", "gan2d", "--data", "ring", "--seed", "0", "--out", str(tmp_path), "--steps", "0"],
           "--steps")


# --- the science script ----------------------------------------------------------------------------------------

def test_quality_vs_steps_quick(tmp_path):
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "run_digits_quality_vs_steps.py")
    spec = importlib.util.spec_from_file_location("run_digits_quality_vs_steps", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.load(open(tmp_path / "digits_quality_vs_steps_quick.json"))
    rows = {r["method"]: r for r in result["rows"]}
    assert "real: train split (all)" in rows and rows["DDIM 10"]["nfe"] == 10
    assert rows["Heun 10"]["nfe"] == 19  # NFE counted: Heun's second-order steps call the model twice but the last
    for r in result["rows"]:
        assert r["fd"] >= 0 and 0 <= r["kl_uniform"] <= np.log(10) + 1e-9
    assert os.path.isfile(tmp_path / "digits_quality_vs_steps_quick.csv")
