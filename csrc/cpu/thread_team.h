#pragma once
// One team of threads that all run at once, for the backward attention tasks of mha_backward.cpp
// and mha_packed.cpp: a task may wait for another's dQ turn (attention_backward_kernel.cpp), so
// the tasks cannot go to a pool that might run them one after another out of order.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <exception>

#if AT_PARALLEL_OPENMP
#include <omp.h>
#endif

#include "cpu/parallel_stats.h"
#include "kernels/attention_args.h"

namespace mhsa::cpu {

// Calls run(thread, team) on every thread of an OpenMP team sized for `tasks` tasks of
// `task_flops` each (small problems stay on the calling thread, see parallel_grain). Without
// OpenMP (another ATen parallel backend gives no all-at-once guarantee) or inside a parallel
// region, run(0, 1) runs everything on the calling thread. A thread that throws sets *abort,
// which releases the tasks waiting for its turns; the first exception is rethrown here.
// `phase` names the work in the MHSA_PARALLEL_STATS counts (tasks dealt round-robin).
template <typename Run>
void run_on_team(const char* phase, int64_t tasks, double task_flops, int* abort, Run&& run) {
  int64_t threads = 1;
#if AT_PARALLEL_OPENMP
  if (!at::in_parallel_region()) {
    threads = std::min<int64_t>(at::get_num_threads(), tasks);
    threads = std::min<int64_t>(threads, std::max<int64_t>(1, tasks / parallel_grain(task_flops)));
  }
#endif
  if (threads <= 1) {
    record_parallel_tasks(phase, 0, tasks);
    run(int64_t{0}, int64_t{1});
    return;
  }
#if AT_PARALLEL_OPENMP
  std::exception_ptr error;
#pragma omp parallel num_threads(static_cast <int>(threads))
  {
    try {
      const int64_t thread = omp_get_thread_num(), team = omp_get_num_threads();
      record_parallel_tasks(phase, thread, (tasks - thread + team - 1) / team);
      run(thread, team);
    } catch (...) {
      __atomic_store_n(abort, 1, __ATOMIC_RELAXED);
#pragma omp critical(mhsa_team_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
#endif
}

}  // namespace mhsa::cpu
