#!/usr/bin/env bash
# Builds libmhsa.so and the GoogleTest suite with AddressSanitizer and UndefinedBehaviorSanitizer
# in build-asan/ and runs:
#   1. the whole GoogleTest suite (tests/cpp) but Leaks.*, with LeakSanitizer on at exit, twice:
#      tile GEMMs on oneDNN's brgemm micro-kernels, then on the portable loops;
#   2. the leak check, Leaks.RepeatedCalls: rounds of forward + backward through every path of
#      the library (tests/cpp/leak_workload.h) under LeakSanitizer, with full stacks;
#   3. a self-test that LeakSanitizer does see a tensor leaked through torch's allocator (so
#      that clean runs of 1-2 mean something): Leaks.LeakOnPurpose must be reported.
#
# Called by `scripts/test --sanitize` with REPO, PY, BUILD_DIR and MHSA_TEST_ARTIFACTS exported
# (the TorchScript tests load the model scripts/test saves there). Run alone it sets the
# machine up first, like scripts/test.
set -uo pipefail

if [ -z "${REPO:-}" ] || [ -z "${PY:-}" ]; then
  source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
  set +e
  mhsa_setup || exit 1
fi
JOBS="${MHSA_JOBS:-$(nproc)}"
ASAN_DIR="${MHSA_ASAN_BUILD_DIR:-$REPO/build-asan}"
say() { printf '\033[1m[mhsa sanitize]\033[0m %s\n' "$*" >&2; }

if [ -z "${MHSA_TEST_ARTIFACTS:-}" ]; then
  MHSA_TEST_ARTIFACTS="$ASAN_DIR/test-artifacts"
  mkdir -p "$MHSA_TEST_ARTIFACTS"
  "$PY" "$REPO/tests/python/make_scripted_model.py" "$MHSA_TEST_ARTIFACTS" >/dev/null || exit 1
fi
export MHSA_TEST_ARTIFACTS

# --- build -----------------------------------------------------------------------------------
# MHSA_SANITIZE=ON adds -fsanitize=address,undefined -fno-sanitize-recover=undefined
# -fno-omit-frame-pointer to every target. Besides:
#   * RelWithDebInfo with -O1 -g1: the optimization ASan recommends (fast enough, exact stack
#     traces), line tables only (file:line in every report, a fraction of full -g's compile
#     time); NDEBUG as in release builds, since release behaviour is what is checked.
#   * The tile GEMMs (csrc/engine/) are built as usual, and the GoogleTest suite runs
#     twice: with oneDNN's brgemm micro-kernels (their JIT code is not instrumented, but mhsa's
#     scratch copies, transposes and VNNI packing of the operands are), and with
#     MHSA_PORTABLE_GEMM=1, the portable loops, which take exactly the same pointers, sizes and
#     strides, so that every tile operand access (a wrong leading dimension or tile edge in our
#     kernels) is checked; the suite also checks the results against the ATen reference.
#   * MHSA_COPY_TO_PYTHON=OFF: python/mhsa keeps the release library.
prefix="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')" || exit 1
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
mkdir -p "$ASAN_DIR"
# Configured every time (quick when nothing changed), so that an older build-asan/ configured
# with -DMHSA_PORTABLE_GEMM=ON gets the micro-kernel path back.
say "configuring $ASAN_DIR"
cmake -S "$REPO" -B "$ASAN_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" \
  -DMHSA_SANITIZE=ON -DMHSA_COPY_TO_PYTHON=OFF -DMHSA_PORTABLE_GEMM=OFF \
  -DCMAKE_PREFIX_PATH="$prefix" "${launcher[@]}" >"$ASAN_DIR/configure.log" 2>&1 || {
    cat "$ASAN_DIR/configure.log" >&2; exit 1; }
say "building (cmake --build $ASAN_DIR -j$JOBS)"
if ! cmake --build "$ASAN_DIR" -j"$JOBS" --target mhsa_tests >"$ASAN_DIR/build.log" 2>&1; then
  grep -E 'error|Error' "$ASAN_DIR/build.log" | head -40 >&2
  tail -20 "$ASAN_DIR/build.log" >&2
  say "build failed; full log in $ASAN_DIR/build.log"
  exit 1
fi

# --- run -------------------------------------------------------------------------------------
# ASAN_OPTIONS, each on purpose:
#   detect_leaks=1              LeakSanitizer at exit (the default on x86-64 Linux; explicit).
#   allocator_may_return_null=1 an impossible allocation (BadInputs.AllocationTooLargeIsAnError
#                               asks for 4 TiB) returns NULL, as the system allocator does, so
#                               torch throws c10::Error; by default ASan would abort the
#                               process (its limit is 1 TiB). No memory access goes unchecked.
#   detect_stack_use_after_return=1, check_initialization_order=1, strict_init_order=1
#                               stricter than the defaults: stack frames used after return,
#                               static initializers (the op registrations) that depend on
#                               other translation units' statics.
# Everything else keeps ASan's defaults; in particular new_delete_type_mismatch and
# alloc_dealloc_mismatch stay on: libtorch, although not instrumented, trips neither.
# For the leak check also fast_unwind_on_malloc=0: libtorch is built without frame
# pointers, so the fast unwinder stops at its first frame and a leaked tensor's report would
# not reach our code; the slow (DWARF) unwinder gives the full stack, at 1.5x the run time.
# UBSAN_OPTIONS: the build already stops at the first undefined behaviour
# (-fno-sanitize-recover); print its stack. LeakSanitizer needs no suppressions: nothing of
# torch's one-time allocations is reported (they stay reachable from globals).
export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:report_error_type=1"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

tests="$ASAN_DIR/tests/cpp/mhsa_tests"
failed=0
say "GoogleTest suite under ASan + UBSan + LSan (tile GEMMs: oneDNN brgemm where available)"
"$tests" --gtest_brief=1 --gtest_filter='-Leaks.*' || { say "FAILED: GoogleTest under sanitizers"; failed=1; }
say "GoogleTest suite under ASan + UBSan + LSan (tile GEMMs: portable loops, MHSA_PORTABLE_GEMM=1)"
MHSA_PORTABLE_GEMM=1 "$tests" --gtest_brief=1 --gtest_filter='-Leaks.*' ||
  { say "FAILED: GoogleTest under sanitizers (portable GEMM loops)"; failed=1; }

leak_options="$ASAN_OPTIONS:fast_unwind_on_malloc=0"
say "leak check: Leaks.RepeatedCalls under LeakSanitizer"
ASAN_OPTIONS="$leak_options" "$tests" --gtest_brief=1 --gtest_filter='Leaks.RepeatedCalls' ||
  { say "FAILED: leak check"; failed=1; }

say "leak check self-test: a tensor leaked on purpose must be reported"
out="$(MHSA_LEAK_ON_PURPOSE=1 ASAN_OPTIONS="$leak_options" "$tests" --gtest_filter='Leaks.LeakOnPurpose' 2>&1)"
if [ $? -ne 0 ] && grep -q "LeakSanitizer: detected memory leaks" <<<"$out" &&
   grep -q "test_leaks.cpp" <<<"$out"; then
  say "self-test: the deliberate leak was reported"
else
  printf '%s\n' "$out" | tail -30 >&2
  say "FAILED: LeakSanitizer did not report the deliberate leak"
  failed=1
fi

[ "$failed" = 0 ] && say "sanitizers: all clean"
exit "$failed"
