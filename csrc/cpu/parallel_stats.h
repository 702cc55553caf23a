#pragma once
// Optional bookkeeping of how the work of each parallel phase was spread over threads, so the
// scaling of mhsa can be checked on a machine with fewer cores than its users have (e.g. 64
// threads on 2 cores): MHSA_PARALLEL_STATS=1 turns it on (read once); each phase records how
// many tasks each thread ran; torch.ops.mhsa._parallel_stats() returns them as JSON and resets.
// Off, recording is one branch on a static bool.
#include <cstdint>
#include <string>

namespace mhsa::cpu {

bool parallel_stats_enabled();
// Adds `tasks` tasks of `phase` run by thread `thread` (at::get_thread_num() or the OpenMP
// thread number).
void record_parallel_tasks(const char* phase, int64_t thread, int64_t tasks);
// {"phase": {"threads": k, "tasks": n, "per_thread": [...], "max_over_mean": x}, ...}; resets.
std::string take_parallel_stats();

}  // namespace mhsa::cpu
