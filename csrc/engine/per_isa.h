#pragma once
// Included first by every header of code compiled once per instruction set (CMake's
// MHSA_ISA_SOURCES: each copy in namespace mhsa::cpu::MHSA_ISA, built with that ISA's flags).
// Such code avoids inline library templates (std::vector, std::fill, c10's inline conversions):
// the linker could merge their copies compiled with different flags and run AVX-512 code on a
// CPU without it (tests/python/test_isa_copies.py reads the objects' symbols).
#ifndef MHSA_ISA
#error "a per-instruction-set header: for the translation units of MHSA_ISA_SOURCES only"
#endif
