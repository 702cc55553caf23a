#pragma once
// Contiguous (and for float masks, accumulation-dtype) copies of the masks of one call, behind
// the raw-pointer MaskView the attention kernels read.
#include <ATen/ATen.h>

#include <limits>
#include <optional>

#include <mhsa/internal_ops.h>

#include "engine/attention_geometry.h"

namespace mhsa::cpu {

// Owns the contiguous (and, for float masks, acc_t-converted) copies behind a MaskView.
template <typename acc_t>
class MaskStorage {
 public:
  // The self-attention ops' masks: attn_mask (L, L) or (N*H, L, L), key_padding_mask (N, L).
  // window_size: {left, right} (see MaskView), or empty for none.
  MaskStorage(const std::optional<at::Tensor>& attn_mask,
              const std::optional<at::Tensor>& key_padding_mask, bool is_causal,
              c10::IntArrayRef window_size, int64_t num_heads) {
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    view_.causal = is_causal;
    if (window_size.size() == 2) {
      view_.window_left = window_size[0];
      view_.window_right = window_size[1];
    }
    if (attn_mask.has_value() && attn_mask->defined()) {
      const int64_t L = attn_mask->size(-2), S = attn_mask->size(-1);
      view_.attn_layout = attn_mask->dim() == 3 ? OperandLayout{num_heads * L * S, S, L * S}
                                                : OperandLayout{0, S, 0};
      if (attn_mask->scalar_type() == at::kBool) {
        attn_ = attn_mask->contiguous();
        view_.attn_bool = attn_.const_data_ptr<bool>();
      } else {
        attn_ = attn_mask->to(acc_type).contiguous();
        view_.attn_add = attn_.const_data_ptr<acc_t>();
      }
    }
    if (key_padding_mask.has_value() && key_padding_mask->defined()) {
      set_key_padding(*key_padding_mask);
    }
  }

  // The attention block ops' mask, SDPA's convention (bool: true = may attend; float: added),
  // broadcastable to (N, H, L, S), read in place through strides. A mask of keys only (its head
  // and query dims 1, padding) becomes a key padding mask, whose padded tail is skipped.
  static MaskStorage for_block(const std::optional<at::Tensor>& attn_mask, int64_t N, int64_t H,
                               int64_t L, int64_t S, const internal::BlockOptions& options) {
    MaskStorage m;
    m.view_.causal = options.is_causal;
    m.view_.window_left = options.window_size[0];
    m.view_.window_right = options.window_size[1];
    m.view_.diagonal = options.diagonal;
    const bool has_padding =
        options.key_padding_mask.has_value() && options.key_padding_mask->defined();
    if (has_padding) m.set_key_padding(*options.key_padding_mask);
    if (!attn_mask.has_value() || !attn_mask->defined()) return m;
    at::Tensor mask = *attn_mask;
    while (mask.dim() < 4) mask = mask.unsqueeze(0);
    const bool is_bool = mask.scalar_type() == at::kBool;
    // The kernels' bool masks say "may not attend"; a copy of the mask's own size.
    mask = is_bool ? mask.logical_not() : mask.to(c10::CppTypeToScalarType<acc_t>::value);
    if (mask.size(1) == 1 && mask.size(2) == 1 && !has_padding) {
      m.set_key_padding(mask.expand({N, 1, 1, S}).reshape({N, S}));
      return m;
    }
    // Keys contiguous (a mask broadcast over the keys is widened to S along them only).
    if (mask.size(3) != S) mask = mask.expand({mask.size(0), mask.size(1), mask.size(2), S});
    if (mask.stride(3) != 1) mask = mask.contiguous();
    m.attn_ = mask;
    const at::Tensor full = mask.expand({N, H, L, S});
    m.view_.attn_layout = OperandLayout{full.stride(0), full.stride(2), full.stride(1)};
    if (is_bool) {
      m.view_.attn_bool = m.attn_.template const_data_ptr<bool>();
    } else {
      m.view_.attn_add = m.attn_.template const_data_ptr<acc_t>();
    }
    return m;
  }

  const MaskView<acc_t>& view() const { return view_; }

 private:
  MaskStorage() = default;

  // key_padding_mask (N, S): bool (true = may not attend) or float (added).
  void set_key_padding(const at::Tensor& key_padding_mask) {
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    {
      if (key_padding_mask.scalar_type() == at::kBool) {
        kpm_ = key_padding_mask.contiguous();
        view_.kpm_bool = kpm_.const_data_ptr<bool>();
      } else {
        kpm_ = key_padding_mask.to(acc_type).contiguous();
        view_.kpm_add = kpm_.const_data_ptr<acc_t>();
      }
      // key_end[n] = 1 + the last key of batch n that is not masked out (0 if none): the keys
      // after it (the padding of a right-padded batch) are masked anyway, so their tiles are
      // skipped. Exact for any mask, not only right padding.
      const at::Tensor visible = kpm_.scalar_type() == at::kBool
                                     ? kpm_.logical_not()
                                     : kpm_.ne(-std::numeric_limits<double>::infinity());
      const int64_t L = kpm_.size(-1);
      if (L == 0) return;  // nothing to skip (and no reduction over an empty dimension)
      key_end_ = (visible.to(at::kLong) * at::arange(1, L + 1, kpm_.options().dtype(at::kLong)))
                     .amax(-1)
                     .contiguous();
      view_.key_end = key_end_.const_data_ptr<int64_t>();
    }
  }

  at::Tensor attn_, kpm_, key_end_;
  MaskView<acc_t> view_;
};

}  // namespace mhsa::cpu
