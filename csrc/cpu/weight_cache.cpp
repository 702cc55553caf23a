#include "cpu/weight_cache.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/util/intrusive_ptr.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

namespace mhsa::cpu {
namespace {

// Elements compared on every call, spread evenly over the weight: writes that bypass the
// version counter (through .data, numpy or from_blob aliases) rewrite whole tensors in
// practice (initializers, EMA updates, broadcasts), and change these.
constexpr int64_t kSampleCount = 256;

struct Entry {
  Entry(const at::Tensor& w, std::vector<float> values)
      : source(w.getIntrusivePtr()),
        storage(w.storage().getWeakStorageImpl()),
        version(static_cast<uint32_t>(w._version())),
        data(w.const_data_ptr()),
        sizes(w.sizes().vec()),
        strides(w.strides().vec()),
        sample(std::move(values)) {}
  // Weak: the cache must not keep a weight alive, and a freed weight's address may be reused.
  c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> source;
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  uint32_t version;
  const void* data;
  std::vector<int64_t> sizes, strides;
  std::vector<float> sample;
  int64_t hits = 0;
  // Changed before its copy was ever reused (a training step inside a traced or checkpointed
  // forward, where grad mode is off): not copied again.
  bool changes_every_call = false;
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

std::vector<float> sample_of(const at::Tensor& w) {
  const at::Tensor flat = w.reshape({-1});  // a view: the weight is contiguous-checked below
  const float* p = flat.const_data_ptr<float>();
  const int64_t n = flat.numel();
  std::vector<float> s;
  s.reserve(kSampleCount + 1);
  for (int64_t i = 0; i < kSampleCount && i < n; ++i) s.push_back(p[i * n / kSampleCount]);
  s.push_back(p[n - 1]);
  return s;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

bool same_tensor(const Entry& e, const at::Tensor& w, c10::TensorImpl* alive) {
  return alive == w.unsafeGetTensorImpl() && e.version == w._version() &&
         e.storage.lock().get() == w.storage().unsafeGetStorageImpl() &&
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
  // A weight that only this call holds is a temporary (a conversion made by the caller): a
  // copy of it could never be reused.
  return enabled && inference_call && weight.defined() && weight.dim() == 2 &&
         weight.scalar_type() == at::kFloat && !weight.is_inference() && weight.numel() > 0 &&
         weight.is_contiguous() && weight.use_count() > 1;
}

at::Tensor cached_weight_transpose(const at::Tensor& weight,
                                   at::Tensor (*transpose)(const at::Tensor&)) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  const std::vector<float> sample = sample_of(weight);
  bool changed_before_reuse = false;
  at::Tensor hit;
  for (size_t i = 0; i < c.entries.size();) {
    Entry& e = c.entries[i];
    const auto alive = e.source.lock();
    if (alive && same_tensor(e, weight, alive.get()) && same_bits(e.sample, sample)) {
      if (e.changes_every_call) {  // unchanged since the last call after all: keep a copy now
        e.changes_every_call = false;
        e.transposed = transpose(weight);
      }
      ++e.hits;
      hit = e.transposed;
      ++i;
      continue;
    }
    // Freed, or this weight changed: its copy is stale.
    if (alive && alive.get() == weight.unsafeGetTensorImpl())
      changed_before_reuse = e.changes_every_call || e.hits == 0;
    if (!alive || alive.get() == weight.unsafeGetTensorImpl()) {
      c.entries.erase(c.entries.begin() + static_cast<std::ptrdiff_t>(i));
    } else {
      ++i;
    }
  }
  if (hit.defined()) return hit;
  Entry e(weight, sample);
  e.changes_every_call = changed_before_reuse;
  at::Tensor made = transpose(weight);
  if (!changed_before_reuse) e.transposed = made;
  c.entries.push_back(std::move(e));
  return made;
}

int64_t weight_cache_entries() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  int64_t copies = 0;
  for (const Entry& e : c.entries) copies += e.transposed.defined() ? 1 : 0;
  return copies;
}

void clear_weight_cache() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.entries.clear();
}

}  // namespace mhsa::cpu
