#include "cpu/dropout_seed.h"

#include <ATen/CPUGeneratorImpl.h>

#include <mutex>

namespace mhsa::cpu {

uint64_t draw_dropout_seed() {
  auto* gen = at::check_generator<at::CPUGeneratorImpl>(at::detail::getDefaultCPUGenerator());
  // The generator is shared with every other torch op; its mutex guards the draw.
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->random64();
}

}  // namespace mhsa::cpu
