#pragma once
// The seed of one call's dropout stream (the kernels derive every element's keep bit from it
// with Philox, so backward replays the forward's mask from the seed alone).
#include <cstdint>

namespace mhsa::cpu {

// Drawn from torch's default CPU generator, so torch.manual_seed reproduces a run.
uint64_t draw_dropout_seed();

}  // namespace mhsa::cpu
