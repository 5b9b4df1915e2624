// Stand-in for the header that a CUDA build of torch generates at build time and the CPU wheel
// lacks; only tests/test_csrc_compiles.py uses it, to syntax-check csrc/bindings.cpp without a
// CUDA torch. Its one setting, as in torch's shared-library builds:
#pragma once
#define C10_CUDA_BUILD_SHARED_LIBS
