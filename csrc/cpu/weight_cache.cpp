#include "cpu/weight_cache.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/util/intrusive_ptr.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

namespace mhsa::cpu {
namespace {

struct Entry {
  // Weak: the cache must not keep a weight alive, and a freed weight's address may be reused.
  c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> source;
  uint32_t version;
  const void* data;
  std::vector<int64_t> sizes, strides;
  at::Tensor transposed;
};

struct Cache {
  std::mutex mutex;
  std::vector<Entry> entries;
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: calls may come during exit
  return *c;
}

bool same_tensor(const Entry& e, const at::Tensor& w) {
  const auto alive = e.source.lock();
  return alive.get() == w.unsafeGetTensorImpl() && e.version == w._version() &&
         e.data == w.const_data_ptr() && e.sizes == w.sizes().vec() &&
         e.strides == w.strides().vec();
}

thread_local bool inference_call = false;

}  // namespace

InferenceCallGuard::InferenceCallGuard(bool inference) : previous_(inference_call) {
  inference_call = inference;
}
InferenceCallGuard::~InferenceCallGuard() { inference_call = previous_; }

bool records_no_graph(std::initializer_list<const at::Tensor*> inputs) {
  if (!c10::GradMode::is_enabled()) return true;
  for (const at::Tensor* t : inputs)
    if (t != nullptr && t->defined() && t->requires_grad()) return false;
  return true;
}

bool weight_cache_applies(const at::Tensor& weight) {
  // MHSA_WEIGHT_CACHE=0 turns the cache off (memory before speed).
  static const bool enabled = [] {
    const char* env = std::getenv("MHSA_WEIGHT_CACHE");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }();
  return enabled && inference_call && weight.defined() && weight.dim() == 2 &&
         weight.scalar_type() == at::kFloat && !weight.is_inference() && weight.numel() > 0;
}

at::Tensor cached_weight_transpose(const at::Tensor& weight,
                                   at::Tensor (*transpose)(const at::Tensor&)) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  for (size_t i = 0; i < c.entries.size();) {
    Entry& e = c.entries[i];
    if (same_tensor(e, weight)) return e.transposed;
    const auto alive = e.source.lock();
    if (!alive || alive.get() == weight.unsafeGetTensorImpl()) {
      // Freed, or this weight at another version: its copy is stale.
      c.entries.erase(c.entries.begin() + static_cast<std::ptrdiff_t>(i));
    } else {
      ++i;
    }
  }
  Entry e{
      c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(weight.getIntrusivePtr()),
      static_cast<uint32_t>(weight._version()),
      weight.const_data_ptr(),
      weight.sizes().vec(),
      weight.strides().vec(),
      transpose(weight)};
  c.entries.push_back(e);
  return c.entries.back().transposed;
}

int64_t weight_cache_entries() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return static_cast<int64_t>(c.entries.size());
}

void clear_weight_cache() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.entries.clear();
}

}  // namespace mhsa::cpu
