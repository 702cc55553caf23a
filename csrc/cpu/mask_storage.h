#pragma once
// Contiguous (and for float masks, accumulation-dtype) copies of the masks of one call, behind
// the raw-pointer MaskView the attention kernels read.
#include <ATen/ATen.h>

#include <optional>

#include "cpu/attention_args.h"

namespace mhsa::cpu {

// Owns the contiguous (and, for float masks, acc_t-converted) copies behind a MaskView.
template <typename acc_t>
class MaskStorage {
 public:
  MaskStorage(const std::optional<at::Tensor>& attn_mask,
              const std::optional<at::Tensor>& key_padding_mask, bool is_causal) {
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    view_.causal = is_causal;
    if (attn_mask.has_value() && attn_mask->defined()) {
      view_.attn_per_head = attn_mask->dim() == 3;
      if (attn_mask->scalar_type() == at::kBool) {
        attn_ = attn_mask->contiguous();
        view_.attn_bool = attn_.const_data_ptr<bool>();
      } else {
        attn_ = attn_mask->to(acc_type).contiguous();
        view_.attn_add = attn_.const_data_ptr<acc_t>();
      }
    }
    if (key_padding_mask.has_value() && key_padding_mask->defined()) {
      if (key_padding_mask->scalar_type() == at::kBool) {
        kpm_ = key_padding_mask->contiguous();
        view_.kpm_bool = kpm_.const_data_ptr<bool>();
      } else {
        kpm_ = key_padding_mask->to(acc_type).contiguous();
        view_.kpm_add = kpm_.const_data_ptr<acc_t>();
      }
    }
  }
  const MaskView<acc_t>& view() const { return view_; }

 private:
  at::Tensor attn_, kpm_;
  MaskView<acc_t> view_;
};

}  // namespace mhsa::cpu
