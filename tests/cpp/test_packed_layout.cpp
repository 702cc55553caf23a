// The packed 16-bit B layouts as pure arithmetic, checked on every CPU against the rules of the
// CPUs that have them (AMX packing accepts only some leading dimensions), and the start-up
// probes: exact small-integer products through every layout this machine can run, and through
// the AMX layout's arithmetic with a stand-in packer that enforces AMX's rule on a machine
// without AMX.
#include <gtest/gtest.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "engine/micro_kernel_probe.h"
#include "engine/packed_layout.h"

namespace mhsa_test {
namespace {

using mhsa::cpu::amx_pack_accepts;
using mhsa::cpu::kBlockN;
using mhsa::cpu::Layout16;
using mhsa::cpu::packed_block_shape;

// The rule itself, against what was measured on a Sapphire Rapids Xeon (issue "Never silently
// slow"): ld_out = N threw for N = 2, 17 and 66 and worked for 16, 32, 48 and 64; N rounded up
// to 16 worked for N = 1, 2, 17 and 63; nothing over 64 worked.
TEST(PackedLayout, AmxRuleMatchesTheMeasurements) {
  for (int64_t n : {2, 17, 66}) EXPECT_FALSE(amx_pack_accepts(38, n, n)) << n;
  for (int64_t n : {16, 32, 48, 64}) EXPECT_TRUE(amx_pack_accepts(38, n, n)) << n;
  for (int64_t n : {1, 2, 17, 63}) EXPECT_TRUE(amx_pack_accepts(38, n, (n + 15) / 16 * 16)) << n;
  EXPECT_FALSE(amx_pack_accepts(38, 66, 80));
}

// Every block width the tile GEMMs can ask for (1..kBlockN) and odd and even K: the AMX
// layout's leading dimension is one AMX packing accepts, no layout loses a column or a row, and
// the storage covers every row and column the packer and the micro-kernel touch.
TEST(PackedLayout, EveryWidthAndDepthFitsItsLayout) {
  for (int64_t nb = 1; nb <= kBlockN; ++nb) {
    for (int64_t kc : {1, 2, 3, 4, 31, 32, 33, 63, 64, 65, 511, 512}) {
      SCOPED_TRACE("nb=" + std::to_string(nb) + " kc=" + std::to_string(kc));
      for (Layout16 layout : {Layout16::Vnni, Layout16::Pack, Layout16::Plain}) {
        const auto shape = packed_block_shape(layout, kc, nb);
        EXPECT_EQ(shape.k_rows % 2, 0);
        EXPECT_TRUE(shape.k_rows == kc || shape.k_rows == kc + 1);
        EXPECT_GE(shape.ld, nb);
        EXPECT_GE(shape.elements, shape.k_rows * shape.ld);
        if (layout == Layout16::Pack) {
          EXPECT_TRUE(amx_pack_accepts(shape.k_rows, nb, shape.ld)) << shape.ld;
          EXPECT_LT(shape.ld - nb, 16);  // padded to 16, no further
          EXPECT_GE(shape.elements, (shape.k_rows + 31) / 32 * 32 * shape.ld);  // 32-deep K tiles
        } else {
          EXPECT_EQ(shape.ld, nb);  // VNNI pairs and plain rows are dense
        }
      }
    }
  }
}

// A cpublas::pack stand-in with AMX's rule: it refuses what oneDNN's AMX packing refuses, with
// the same message, and otherwise writes VNNI pairs with the leading dimension it was given
// (B_vnni[k / 2][n][k % 2] at row stride 2 * ld_out, the padding columns zero), which the
// AVX-512 bfloat16 micro-kernel reads with ld_b = ld_out.
void amx_rule_pack(int64_t K, int64_t N, int64_t ld_in, int64_t ld_out, c10::ScalarType dtype,
                   const void* in, void* out) {
  if (!amx_pack_accepts(K, N, ld_out) || K % 2 != 0)
    throw std::runtime_error("could not create a BRGeMM ukernel packing B object");
  const auto* src = static_cast<const uint16_t*>(in);
  auto* dst = static_cast<uint16_t*>(out);
  std::memset(dst, 0, static_cast<size_t>(K * ld_out) * sizeof(uint16_t));
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = 0; n < N; ++n) dst[(k / 2) * 2 * ld_out + 2 * n + k % 2] = src[k * ld_in + n];
  (void)dtype;
}

// The probes must pass in every layout this machine runs: the engine it chose (reported by
// tile_gemm_backend) is one of them.
TEST(Probe, EveryLayoutThisMachineRunsGivesExactProducts) {
  const std::string backend = mhsa::cpu::tile_gemm_backend();
  if (backend.rfind("onednn-brgemm", 0) != 0) {
    // No micro-kernel here (portable build, MHSA_PORTABLE_GEMM=1, no AVX2): say why.
    EXPECT_FALSE(mhsa::cpu::tile_gemm_loops_reason().empty()) << backend;
    return;
  }
  EXPECT_EQ(mhsa::cpu::probe_micro_kernel_f32(), "");
  for (auto [dtype, name] : {std::pair{c10::ScalarType::BFloat16, "bfloat16-"},
                             std::pair{c10::ScalarType::Half, "float16-"}}) {
    for (Layout16 layout : {Layout16::Vnni, Layout16::Pack, Layout16::Plain}) {
      const std::string used = std::string(name) + mhsa::cpu::layout16_name(layout);
      if (backend.find("," + used) == std::string::npos) continue;
      EXPECT_EQ(mhsa::cpu::probe_micro_kernel16(dtype, layout), "") << used;
    }
  }
  EXPECT_EQ(mhsa::cpu::tile_gemm_probe_failures(), "");
}

// The AMX layout's arithmetic (padded leading dimension in packing and in the micro-kernel
// call) run through the whole probe with a packer that enforces AMX's rule: this is what failed
// on every AMX Xeon when the packed leading dimension was the block width.
TEST(Probe, AmxLayoutArithmeticPassesAmxPackingRule) {
  if (mhsa::cpu::probe_micro_kernel16(c10::ScalarType::BFloat16, Layout16::Vnni) != "") {
    // The stand-in's VNNI output needs the bfloat16 micro-kernel to multiply it; the rule itself
    // is checked by the PackedLayout tests above on every CPU.
    GTEST_SKIP() << "no bfloat16 micro-kernel on this CPU (" << mhsa::cpu::tile_gemm_backend()
                 << ")";
  }
  EXPECT_EQ(
      mhsa::cpu::probe_micro_kernel16(c10::ScalarType::BFloat16, Layout16::Pack, &amx_rule_pack),
      "");
}

// A packer that refuses everything: the probe says which layout, shape and message failed
// instead of throwing or passing.
void refusing_pack(int64_t, int64_t, int64_t, int64_t, c10::ScalarType, const void*, void*) {
  throw std::runtime_error("could not create a BRGeMM ukernel packing B object");
}

TEST(Probe, AFailedPackIsReportedWithShapeAndMessage) {
  const std::string failure =
      mhsa::cpu::probe_micro_kernel16(c10::ScalarType::BFloat16, Layout16::Pack, &refusing_pack);
  if (std::string(mhsa::cpu::tile_gemm_backend()).rfind("onednn-brgemm", 0) != 0) {
    EXPECT_FALSE(failure.empty());
    return;
  }
  EXPECT_NE(failure.find("amx probe failed at M="), std::string::npos) << failure;
  EXPECT_NE(failure.find("could not create a BRGeMM ukernel packing B object"), std::string::npos)
      << failure;
}

}  // namespace
}  // namespace mhsa_test
