#pragma once
// Whether this build has the oneDNN micro-kernels (MHSA_USE_BRGEMM): PyTorch exports them on
// x86-64 only, and MHSA_PORTABLE_GEMM leaves them out (the portable loops then run every tile).
// Which of them the CPU runs is decided at run time (micro_kernel_probe.cpp).
#if !defined(MHSA_PORTABLE_GEMM) && (defined(__x86_64__) || defined(_M_X64))
#define MHSA_USE_BRGEMM 1
#endif
