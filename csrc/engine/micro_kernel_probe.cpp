#include "engine/micro_kernel_probe.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

#include "engine/cpu_capability.h"

#ifdef MHSA_USE_BRGEMM
#include <ATen/Context.h>
#include <cpuid.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "engine/brgemm.h"
#include "engine/packing16.h"
#endif

namespace mhsa::cpu {

#ifdef MHSA_USE_BRGEMM
namespace {

// How far a oneDNN ISA cap (ONEDNN_MAX_CPU_ISA, or its older name DNNL_MAX_CPU_ISA) leaves the
// micro-kernels. PyTorch's brgemm runs float32 on oneDNN from avx2 up and bfloat16 from
// avx512_core up; below that float32 quietly falls back to cpublas::gemm (a BLAS that may split
// a tile over threads), so a cap under avx2, or one this code cannot read, means the loops.
enum class IsaCap { Loops, Avx2, Avx512Core };

IsaCap onednn_isa_cap(std::string* text) {
  const char* env = std::getenv("ONEDNN_MAX_CPU_ISA");
  if (env == nullptr) env = std::getenv("DNNL_MAX_CPU_ISA");
  if (env == nullptr) return IsaCap::Avx512Core;
  std::string cap(env);
  *text = cap;
  for (char& c : cap) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (cap == "all" || cap == "default") return IsaCap::Avx512Core;
  if (cap.rfind("avx512_core", 0) == 0 || cap.rfind("avx10", 0) == 0) return IsaCap::Avx512Core;
  if (cap.rfind("avx2", 0) == 0) return IsaCap::Avx2;
  return IsaCap::Loops;
}

std::string shape_text(int64_t M, int64_t N, int64_t K, const char* operands) {
  return "M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) + " (" +
         operands + ")";
}

// Small-integer operands of an M x K by K x N product, plain and transposed, and its exact
// result (small integers: exact in any summation order).
template <typename T>
struct ProbeCase {
  std::vector<T> a, at, b, bt;
  std::vector<float> want;
  ProbeCase(int64_t M, int64_t N, int64_t K)
      : a(M * K), at(K * M), b(K * N), bt(N * K), want(M * N) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t k = 0; k < K; ++k) {
        a[i * K + k] = T(static_cast<float>((i * K + k) % 5) - 2.0f);
        at[k * M + i] = a[i * K + k];
      }
    for (int64_t k = 0; k < K; ++k)
      for (int64_t n = 0; n < N; ++n) {
        b[k * N + n] = T(static_cast<float>((k * 3 + n) % 7) - 3.0f);
        bt[n * K + k] = b[k * N + n];
      }
    for (int64_t i = 0; i < M; ++i)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k)
          want[i * N + n] += static_cast<float>(a[i * K + k]) * static_cast<float>(b[k * N + n]);
  }
};

struct ProbeShape {
  int64_t M, N, K;
};
// Odd shapes, tails around 16 and the 64-wide blocks, K odd and even.
constexpr ProbeShape kProbeShapes[] = {
    {2, 16, 4}, {5, 17, 38}, {3, 64, 64}, {64, 130, 33}, {7, 2, 6}};

// gemm(ta, tb, case, C) over the probe shapes with plain and transposed operands, compared with
// the exact results: "" when all are right, else what went wrong first (shape, operands, and
// the exception text where the micro-kernel threw).
template <typename T, typename Gemm>
std::string probe_products(const char* what, Gemm gemm) {
  std::string where;
  try {
    for (const ProbeShape& sh : kProbeShapes) {
      const ProbeCase<T> pc(sh.M, sh.N, sh.K);
      std::vector<float> c(sh.M * sh.N);
      for (const char* operands : {"A, B", "A, B transposed", "A transposed, B"}) {
        where = shape_text(sh.M, sh.N, sh.K, operands);
        std::fill(c.begin(), c.end(), 1.0f);
        gemm(operands, sh, pc, c);
        if (c != pc.want) return std::string(what) + " probe gave wrong products at " + where;
      }
    }
  } catch (const std::exception& e) {
    return std::string(what) + " probe failed at " + where + ": " + e.what();
  }
  return "";
}

// MHSA_TEST_FAIL_PROBE=float32,bfloat16-vnni,... makes those probes throw, so that tests see
// what a CPU whose probe fails gets: the fallback, the warning, the report.
void injected_probe_failure(const std::string& probe) {
  const char* env = std::getenv("MHSA_TEST_FAIL_PROBE");
  if (env == nullptr) return;
  const std::string list = std::string(",") + env + ",";
  if (list.find("," + probe + ",") != std::string::npos)
    throw std::runtime_error("failure injected by MHSA_TEST_FAIL_PROBE");
}

std::string probe_f32() {
  return probe_products<float>("float32", [](const std::string& ops, const ProbeShape& sh,
                                             const ProbeCase<float>& pc, std::vector<float>& c) {
    injected_probe_failure("float32");
    if (ops == "A, B")
      brgemm_f32(Trans::No, Trans::No, sh.M, sh.N, sh.K, 1.0f, pc.a.data(), sh.K, pc.b.data(), sh.N,
                 0.0f, c.data(), sh.N);
    else if (ops == "A, B transposed")
      brgemm_f32(Trans::No, Trans::Yes, sh.M, sh.N, sh.K, 1.0f, pc.a.data(), sh.K, pc.bt.data(),
                 sh.K, 0.0f, c.data(), sh.N);
    else
      brgemm_f32(Trans::Yes, Trans::No, sh.M, sh.N, sh.K, 1.0f, pc.at.data(), sh.M, pc.b.data(),
                 sh.N, 0.0f, c.data(), sh.N);
  });
}

// Whether the float32 micro-kernel sums each element as one fused multiply-add chain over k
// from zero, whatever the tile shape: random values at the attention's tile shapes, bitwise
// against that chain. Scores and dP may then run on it (their bits must not depend on the tile
// shape: score_tile.h); "" when so, else where it differed.
std::string probe_f32_chain() {
  constexpr ProbeShape kShapes[] = {
      {64, 64, 64}, {13, 80, 64}, {30, 96, 128}, {7, 33, 80}, {3, 17, 5}};
  uint32_t state = 2463534242u;
  auto next = [&state] {
    state ^= state << 13, state ^= state >> 17, state ^= state << 5;
    return static_cast<float>(state >> 8) / 8388608.0f - 1.0f;  // in [-1, 1)
  };
  std::string where;
  try {
    for (const ProbeShape& sh : kShapes) {
      where = shape_text(sh.M, sh.N, sh.K, "A, B");
      std::vector<float> a(sh.M * sh.K), b(sh.K * sh.N), c(sh.M * sh.N, 1.0f);
      for (float& v : a) v = next();
      for (float& v : b) v = next();
      injected_probe_failure("float32-chain");
      brgemm_f32(Trans::No, Trans::No, sh.M, sh.N, sh.K, 1.0f, a.data(), sh.K, b.data(), sh.N, 0.0f,
                 c.data(), sh.N);
      for (int64_t i = 0; i < sh.M; ++i)
        for (int64_t j = 0; j < sh.N; ++j) {
          float chain = 0.0f;
          for (int64_t k = 0; k < sh.K; ++k)
            chain = __builtin_fmaf(a[i * sh.K + k], b[k * sh.N + j], chain);
          if (std::memcmp(&chain, &c[i * sh.N + j], sizeof(float)) != 0)
            return "float32 products are not one fused chain in k order at " + where;
        }
    }
  } catch (const std::exception& e) {
    return "float32 chain probe failed at " + where + ": " + e.what();
  }
  return "";
}

// The 16-bit products through this file's micro-kernel path in one B layout, and the
// score-block packing (B given as rows, even K, one block of columns).
template <typename half_t>
std::string probe16(Layout16 layout) {
  std::string failure = probe_products<half_t>(
      layout16_name(layout), [layout](const std::string& ops, const ProbeShape& sh,
                                      const ProbeCase<half_t>& pc, std::vector<float>& c) {
        injected_probe_failure((std::is_same_v<half_t, c10::BFloat16> ? "bfloat16-" : "float16-") +
                               std::string(layout16_name(layout)));
        if (ops == "A, B")
          brgemm16(Trans::No, Trans::No, sh.M, sh.N, sh.K, 1.0f, pc.a.data(), sh.K, pc.b.data(),
                   sh.N, 0.0f, c.data(), sh.N, layout);
        else if (ops == "A, B transposed")
          brgemm16(Trans::No, Trans::Yes, sh.M, sh.N, sh.K, 1.0f, pc.a.data(), sh.K, pc.bt.data(),
                   sh.K, 0.0f, c.data(), sh.N, layout);
        else
          brgemm16(Trans::Yes, Trans::No, sh.M, sh.N, sh.K, 1.0f, pc.at.data(), sh.M, pc.b.data(),
                   sh.N, 0.0f, c.data(), sh.N, layout);
      });
  if (failure.empty()) {
    failure = probe_products<half_t>(
        layout16_name(layout), [layout](const std::string& ops, const ProbeShape& sh,
                                        const ProbeCase<half_t>& pc, std::vector<float>& c) {
          if (ops != "A, B" || sh.K % 2 != 0 || sh.N > kBlockN) {
            c = pc.want;  // not a score-block shape
            return;
          }
          const PackedBlockShape shape = packed_block_shape(layout, sh.K, sh.N);
          std::vector<half_t> packed(shape.elements);
          pack_rows_as_columns(pc.bt.data(), sh.K, sh.N, sh.K, layout, packed.data(), scratch());
          cpublas::brgemm(sh.M, sh.N, sh.K, sh.K, shape.ld, sh.N, false, pc.a.data(), packed.data(),
                          c.data(), true);
        });
  }
  try {
    cpublas::brgemm_release(true);
  } catch (const std::exception&) {
  }
  return failure;
}

// The first layout of `order` whose probe passes; the failures of the others go to `tried`.
template <typename half_t>
bool first_working_layout(std::initializer_list<Layout16> order, Layout16* found,
                          std::string* tried) {
  for (Layout16 layout : order) {
    const std::string failure = probe16<half_t>(layout);
    if (failure.empty()) {
      *found = layout;
      return true;
    }
    *tried += (tried->empty() ? "" : "; ") + failure;
  }
  return false;
}

// __builtin_cpu_supports takes only string literals, hence a macro.
#define MHSA_CPU_HAS(feature) (__builtin_cpu_init(), __builtin_cpu_supports(feature) != 0)

// The matrix-unit flags, which __builtin_cpu_supports of older compilers does not know: CPUID
// leaf 7, EDX bit 22 (AMX-BF16) and leaf 7 subleaf 1, EAX bit 21 (AMX-FP16).
bool cpu_has_amx(bool fp16) {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  // __get_cpuid_count checks that leaf 7 exists; EAX of subleaf 0 is the last subleaf.
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0) return false;
  if (!fp16) return (edx >> 22) & 1u;
  if (eax < 1 || __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) == 0) return false;
  return (eax >> 21) & 1u;
}

bool could_pack(at::ScalarType dtype) {
  try {
    return cpublas::could_pack(dtype);
  } catch (const std::exception&) {
    return false;
  }
}

void add_failure(std::string& to, const char* dtype, const std::string& failure,
                 const char* fallback) {
  to += std::string(to.empty() ? "" : " | ") + dtype + ": " + failure + " (its tiles run on " +
        fallback + ")";
}

Support detect_support() {
  Support s;
  std::string cap_text;
  const IsaCap cap = onednn_isa_cap(&cap_text);
  if (cap == IsaCap::Loops) {
    s.loops_reason = "oneDNN ISA cap " + cap_text + " is below avx2";
    return s;
  }
  if (!MHSA_CPU_HAS("avx2") || !MHSA_CPU_HAS("fma")) {
    s.loops_reason = "this CPU has no AVX2+FMA";
    return s;
  }
  const std::string f32_failure = probe_f32();
  s.f32 = f32_failure.empty();
  if (!s.f32) {
    s.loops_reason = "the float32 probe failed";
    add_failure(s.failures, "float32", f32_failure, "the portable loops");
  }
  // oneDNN's avx512_core: what its 16-bit micro-kernels need (AVX512-BF16, AVX512-FP16 and
  // AMX are used on top where present).
  const bool avx512_core = MHSA_CPU_HAS("avx512f") && MHSA_CPU_HAS("avx512bw") &&
                           MHSA_CPU_HAS("avx512vl") && MHSA_CPU_HAS("avx512dq") &&
                           cap == IsaCap::Avx512Core;
  if (s.f32) {
    const std::string chain_failure = probe_f32_chain();
    s.f32_chain = chain_failure.empty();
    if (!s.f32_chain) add_failure(s.failures, "float32 scores", chain_failure, "the dot chain");
  }
  s.f32_avx512 = s.f32 && avx512_core;
  if (!avx512_core) return s;
  const char* fallback = s.f32 ? "the float32 micro-kernel" : "the portable loops";
  std::string tried;
  if (could_pack(at::kBFloat16)) {
    s.bf16 = first_working_layout<c10::BFloat16>({Layout16::Pack, Layout16::Vnni, Layout16::Plain},
                                                 &s.bf16_layout, &tried);
  } else {
    s.bf16 = first_working_layout<c10::BFloat16>({Layout16::Vnni, Layout16::Plain}, &s.bf16_layout,
                                                 &tried);
  }
  s.amx = cpu_has_amx(false) || cpu_has_amx(true);
  if (!s.bf16 && tried.find("oneDNN ukernel is enabled") != std::string::npos) {
    // A torch built without oneDNN's micro-kernels: its brgemm would run float32 tiles on
    // cpublas::gemm, a BLAS that may split them over threads (the float32 probe cannot tell,
    // its products are exact either way), so float32 goes to the loops too.
    s.f32 = s.f32_avx512 = false;
    s.loops_reason = "this torch has no oneDNN micro-kernels";
    return s;
  }
  if (!s.bf16 && (MHSA_CPU_HAS("avx512bf16") || cpu_has_amx(false)))
    add_failure(s.failures, "bfloat16", tried, fallback);
  // float16: without AVX512-FP16 (which AMX-FP16 CPUs have too) there is no float16 kernel to
  // probe: brgemm would throw after setting up state whose memory would stay. With AMX-FP16
  // the kernel is promised; on AVX512-FP16 alone oneDNN documents no B layout for this API,
  // so a failure there is reported, not warned about.
  if (MHSA_CPU_HAS("avx512fp16")) {
    tried.clear();
    if (could_pack(at::kHalf)) {
      s.f16 = first_working_layout<c10::Half>({Layout16::Pack, Layout16::Plain, Layout16::Vnni},
                                              &s.f16_layout, &tried);
    } else {
      s.f16 =
          first_working_layout<c10::Half>({Layout16::Plain, Layout16::Vnni}, &s.f16_layout, &tried);
    }
    if (!s.f16) add_failure(cpu_has_amx(true) ? s.failures : s.notes, "float16", tried, fallback);
  }
  return s;
}

// MHSA_PORTABLE_GEMM=1 asks for the portable loops (scripts/sanitize.sh runs the GoogleTest
// suite both ways: the loops let ASan see every tile operand access).
bool portable_requested() {
  static const bool requested = [] {
    const char* env = std::getenv("MHSA_PORTABLE_GEMM");
    return env != nullptr && env[0] != '\0' && env[0] != '0';
  }();
  return requested;
}

const Support& detected_support() {
  static const Support detected = detect_support();
  return detected;
}

// A probe report of the detection, none while the micro-kernels are switched off.
std::string probe_report(std::string Support::*field) {
  if (portable_requested() || !at::globalContext().userEnabledMkldnn()) return "";
  return detected_support().*field;
}

}  // namespace

const Support& support() {
  static const Support none;
  if (portable_requested() || !at::globalContext().userEnabledMkldnn()) return none;
  return detected_support();
}
#endif  // MHSA_USE_BRGEMM

const char* tile_gemm_backend() {
#ifdef MHSA_USE_BRGEMM
  const Support& s = support();
  if (s.f32) {
    thread_local std::string text;
    text = "onednn-brgemm(float32";
    text += s.bf16 ? std::string(",bfloat16-") + layout16_name(s.bf16_layout)
                   : std::string(";bfloat16-as-float32");
    text += s.f16 ? std::string(",float16-") + layout16_name(s.f16_layout)
                  : std::string(";float16-as-float32");
    text += ")";
    return text.c_str();
  }
#endif
  // The loops' instruction-set copy: vectorized with FMA from avx2 up (and on aarch64's NEON).
  thread_local std::string loops;
  loops = std::string("portable-loops-") + cpu_capability_name(cpu_capability());
  return loops.c_str();
}

std::string tile_gemm_loops_reason() {
#if defined(MHSA_USE_BRGEMM)
  if (portable_requested()) return "MHSA_PORTABLE_GEMM=1";
  if (!at::globalContext().userEnabledMkldnn()) return "torch.backends.mkldnn is disabled";
  return detected_support().loops_reason;
#elif defined(MHSA_PORTABLE_GEMM)
  return "built with MHSA_PORTABLE_GEMM";
#else
  return "PyTorch has the oneDNN micro-kernels on x86-64 only";
#endif
}

std::string tile_gemm_probe_failures() {
#ifdef MHSA_USE_BRGEMM
  return probe_report(&Support::failures);
#else
  return "";
#endif
}

std::string tile_gemm_probe_notes() {
#ifdef MHSA_USE_BRGEMM
  return probe_report(&Support::notes);
#else
  return "";
#endif
}

void warn_if_tile_engine_degraded() {
  static const bool warned = [] {
    const std::string failures = tile_gemm_probe_failures();
    if (!failures.empty())
      TORCH_WARN(
          "mhsa: a micro-kernel this CPU's flags promise failed its start-up probe and "
          "is not used, so mhsa runs slower than it should here: ",
          failures,
          ". torch.ops.mhsa._backend_info() reports it; please report it with that text.");
    return true;
  }();
  (void)warned;
}

std::string probe_micro_kernel_f32() {
#ifdef MHSA_USE_BRGEMM
  return probe_f32();
#else
  return "this build has no micro-kernels";
#endif
}

std::string probe_micro_kernel_f32_chain() {
#ifdef MHSA_USE_BRGEMM
  return probe_f32_chain();
#else
  return "this build has no micro-kernels";
#endif
}

std::string probe_micro_kernel16(c10::ScalarType dtype, Layout16 layout, PackFunction pack) {
  TORCH_CHECK(dtype == c10::ScalarType::BFloat16 || dtype == c10::ScalarType::Half,
              "probe_micro_kernel16: dtype must be bfloat16 or float16, got ", dtype);
#ifdef MHSA_USE_BRGEMM
  struct StandIn {
    explicit StandIn(PackFunction p) { set_pack_stand_in(p); }
    ~StandIn() { set_pack_stand_in(nullptr); }
  } stand_in(pack);
  return dtype == c10::ScalarType::BFloat16 ? probe16<c10::BFloat16>(layout)
                                            : probe16<c10::Half>(layout);
#else
  (void)layout, (void)pack;
  return "this build has no micro-kernels";
#endif
}

}  // namespace mhsa::cpu
