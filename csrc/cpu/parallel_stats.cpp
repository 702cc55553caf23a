#include "cpu/parallel_stats.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>
#include <vector>

namespace mhsa::cpu {
namespace {

std::mutex& stats_mutex() {
  static std::mutex mutex;
  return mutex;
}

// phase -> tasks per thread number
std::map<std::string, std::vector<int64_t>>& stats() {
  static std::map<std::string, std::vector<int64_t>> table;
  return table;
}

}  // namespace

bool parallel_stats_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("MHSA_PARALLEL_STATS");
    return env != nullptr && std::strcmp(env, "0") != 0 && env[0] != '\0';
  }();
  return enabled;
}

void record_parallel_tasks(const char* phase, int64_t thread, int64_t tasks) {
  if (!parallel_stats_enabled() || tasks <= 0 || thread < 0) return;
  std::lock_guard<std::mutex> lock(stats_mutex());
  auto& per_thread = stats()[phase];
  if (per_thread.size() <= static_cast<size_t>(thread)) per_thread.resize(thread + 1, 0);
  per_thread[thread] += tasks;
}

std::string take_parallel_stats() {
  std::lock_guard<std::mutex> lock(stats_mutex());
  std::ostringstream out;
  out << "{";
  bool first = true;
  for (const auto& [phase, per_thread] : stats()) {
    int64_t total = 0, busiest = 0, threads = 0;
    for (int64_t t : per_thread) {
      total += t;
      busiest = std::max(busiest, t);
      threads += t > 0 ? 1 : 0;
    }
    const double mean = threads > 0 ? static_cast<double>(total) / threads : 0.0;
    out << (first ? "" : ", ") << "\"" << phase << "\": {\"threads\": " << threads
        << ", \"tasks\": " << total << ", \"max_over_mean\": " << (mean > 0 ? busiest / mean : 0.0)
        << ", \"per_thread\": [";
    for (size_t k = 0; k < per_thread.size(); ++k) out << (k ? ", " : "") << per_thread[k];
    out << "]}";
    first = false;
  }
  out << "}";
  stats().clear();
  return out.str();
}

}  // namespace mhsa::cpu
