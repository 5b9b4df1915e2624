#!/usr/bin/env bash
# The GPU session in a few calls: build, the whole test suite on CUDA, every benchmark, results
# written where they can be committed. Written for a lent H100 / H200 (fastgen has never run on a
# GPU; see benchmarks/results/README.md "Still to be measured on a GPU"), usable on any CUDA box.
#
#   bash benchmarks/gpu_session.sh STAGE [STAGE ...]      stages run in the order given
#
#   build    pip install -e . without build isolation: builds fastgen._C (csrc/*.cu) for this GPU;
#            installs carried wheels first (.whl/*.whl: diffusers and importlib_metadata, which the
#            tests and the U-Net benchmark compare with; see below). Every other stage needs it,
#            and on a machine that starts bare each call must begin with it.
#   tests    the README's test command on CUDA (Triton compiled, not interpreted), log kept
#   kernels  the per-op comparisons: fastgen bench diffusion (main shape and >= 16M elements),
#            GroupNorm, attention vs SDPA backends, sampler overhead, the GAN D step and penalty ops
#   models   bias_act, upfirdn2d, vq_nearest, the StyleGAN2 training step, fastgen bench generate
#   unet     the DDPM CIFAR-10 U-Net vs diffusers, batch 256, eager and compiled, fp32 and bf16
#   tune     every tile candidate of kernels/tuning.py timed at the shapes that matter
#            (benchmarks/tune_tiles.py: elementwise + GroupNorm, then attention + vq_nearest, float32
#            and bfloat16); results/tiles_<device>_*.{json,csv} and results/tiles.json, the committed
#            table with this GPU's winners merged in: review it, then copy it over kernels/tiles.json
#
# Each stage is sized to finish well inside one 10-minute device call (unet the longest); call
# e.g. `build tests`, then `build kernels`, then `build models`, then `build unet`, then `build tune`. Output: $OUT (the device tool's
# folder) or ./gpu_out — result CSV/JSON with provenance, logs — to copy into benchmarks/results/.
#
# Wheels for a machine that cannot reach a package index (run here, in the repo root):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1 importlib_metadata
# and carry `.whl` with the call.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
LABEL="${FASTGEN_GPU_LABEL:-$(python3 -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")' 2>/dev/null)}"
status=0

run() {  # run NAME CMD...: log to $OUT_DIR/NAME.log, keep going on failure, remember it
  local name="$1"; shift
  echo "=== $name: $*"
  local start=$SECONDS
  "$@" 2>&1 | tee "$OUT_DIR/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: rc=$rc in $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] || status=1
}

stage_build() {
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  run build env MAX_JOBS="${MAX_JOBS:-16}" python3 -m pip install -q --no-build-isolation --no-deps -e .
  if [ "$status" -ne 0 ]; then
    # On the lent H200 (2026-11-29) setuptools' develop re-runs pip with build isolation, which
    # needs the network: build the extensions in place and run from the source tree instead.
    status=0
    ln -sfn ../kernels fastgen/kernels  # package_dir maps fastgen.kernels to kernels/
    run build_inplace env MAX_JOBS="${MAX_JOBS:-16}" python3 setup.py build_ext --inplace
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
  python3 -c "import fastgen, torch; from fastgen import _native; print('torch', torch.__version__, 'cuda ext:', _native.cuda_load_error() or 'loaded', 'cpu kernels:', _native.cpu_library_info())"
}

stage_tests() {
  run tests python3 -m pytest tests -q -p no:cacheprovider -rs --durations=15
}

stage_kernels() {
  local results="$OUT_DIR/results"
  run bench_diffusion python3 -m fastgen.cli bench diffusion --repeats 3 --out "$results" --label "$LABEL"
  run bench_diffusion_16M python3 -m fastgen.cli bench diffusion --shape 64,4,256,256 --no-compile --repeats 3 --out "$results/16M" --label "$LABEL, 16.8M elements"
  run bench_sampler_overhead python3 benchmarks/bench_sampler_overhead.py --out "$results" --label "$LABEL"
  run bench_group_norm python3 -m pytest benchmarks/bench_group_norm.py --benchmark-only -q \
      --benchmark-json "$results/pytest_group_norm.json"
  run bench_attention python3 -m pytest benchmarks/bench_attention.py --benchmark-only -q \
      --benchmark-json "$results/pytest_attention.json"
  run gan_d_step python3 benchmarks/run_gan_d_step.py --device cuda --out "$results" --label "$LABEL"
}

# The ops and models added after the first GPU run: StyleGAN2's bias_act / upfirdn2d (targets: >= 85%
# of copy bandwidth; >= 2x the reference), vq_nearest (>= 2x cdist + argmin, >= 60% of the GEMM),
# the StyleGAN2 G+D step (>= 1.3x the references) and fastgen generate (>= 2x the diffusers loop).
stage_models() {
  local results="$OUT_DIR/results"
  local bench
  for bench in bias_act upfirdn2d vq_nearest stylegan2; do
    run "bench_$bench" python3 -m pytest "benchmarks/bench_$bench.py" --benchmark-only -q \
        --benchmark-json "$results/pytest_$bench.json"
  done
  run bench_generate python3 -m fastgen.cli bench generate --device cuda --repeats 3 --out "$results" --label "$LABEL"
}

# Compiling the candidates (some hundreds of kernels on a bare machine) may take most of this stage.
stage_tune() {
  local results="$OUT_DIR/results"
  mkdir -p "$results"
  cp kernels/tiles.json "$results/tiles.json"
  run tune_elementwise_group_norm python3 benchmarks/tune_tiles.py --families elementwise group_norm \
      --out "$results" --label "$LABEL" --write-table "$results/tiles.json"
  run tune_attention_vq python3 benchmarks/tune_tiles.py --families attention vq_nearest \
      --out "$results" --label "$LABEL" --write-table "$results/tiles.json"
}

stage_unet() {
  run unet python3 benchmarks/run_unet.py --device cuda --out "$OUT_DIR/results" --label "$LABEL"
}

[ "$#" -gt 0 ] || { sed -n 2,29p "$0"; exit 2; }
for stage in "$@"; do
  case "$stage" in
    build|tests|kernels|models|unet|tune) "stage_$stage" ;;
    *) echo "unknown stage '$stage' (build, tests, kernels, models, unet, tune)"; exit 2 ;;
  esac
done
exit $status
