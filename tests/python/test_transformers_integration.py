"""mhsa as a Hugging Face transformers attention implementation (mhsa.integrations.transformers).

Tiny randomly initialised models (no downloads) run under attn_implementation="mhsa" and under
transformers' own eager attention, on the same weights and inputs; logits, loss and every
parameter's gradient must agree:

* float32: against "eager" with the suite's float32 tolerances (mhsa_testutils.TOLERANCES);
* float64: against eager's masks and formula with the softmax in float64 (eager's own softmax
  runs in float32, see transformers_testutils._exact_eager_attention), within the table's
  float64 "abs" bound;
* bfloat16: mhsa's error against the float64 reference may be at most a factor of eager's own
  bfloat16 error, plus one bfloat16 rounding (the table's "as_exact_as_eager").

Each mask structure is also shown to matter (the outputs differ from a run without it), so
that the agreement really tests the mask: left padding, BERT's padding and its encoder padding,
a sliding window shorter than the sequence, packed sequences, a caller's 4-D mask. The
bottom-right alignment under a KV cache is checked against one forward over the whole sequence.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from typing import Optional

import pytest
import torch
import transformers
from torch import Tensor
from transformers import (
    BertForMaskedLM,
    BertLMHeadModel,
    DynamicCache,
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaForCausalLM,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    masking_utils,
)

import mhsa.integrations.transformers as mhsa_hf
import transformers_testutils as tu
from mhsa_testutils import TOLERANCES
from mhsa_testutils import assert_close as assert_close_table

tu.register_references()

# A mask that is dropped changes these models' logits by order 1 (INIT_STD); a difference below
# this would mean the mask did not matter and the parity test proves nothing.
MASK_MATTERS = 1e-2

VOCAB = 61


def _ids(batch: int, length: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=g)


def _padding(batch: int, length: int, side: Optional[str]) -> Tensor:
    """1 = token, 0 = padding: row 0 padded on the given side (4 tokens), row 1 (if any) not."""
    mask = torch.ones(batch, length, dtype=torch.long)
    if side == "left":
        mask[0, :4] = 0
    elif side == "right":
        mask[0, -4:] = 0
    return mask


def _labels(ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The tokens as labels, -100 (ignored) at padding and at a row's first token: a causal
    model's loss predicts token t from position t - 1, which for the first token after left
    padding is a padding position. A padding position under a causal mask sees no key, and
    there eager averages over every key while mhsa (like SDPA) outputs zeros: padding outputs
    are not compared, so neither is what is predicted from them."""
    labels = ids.masked_fill(attention_mask == 0, -100)
    first = attention_mask.argmax(dim=1)
    labels[torch.arange(ids.shape[0]), first] = -100
    return labels


def assert_close(actual: Tensor, expected: Tensor, dtype: torch.dtype, kind: str, what: str):
    """The table's float64 "abs" bound (logits up to ~10, gradients up to ~1, against the exact
    eager); float32 the table's `kind`."""
    assert_close_table(actual, expected, dtype, "abs" if dtype == torch.float64 else kind, what)


def _assert_runs_agree(
    actual: tu.Run, expected: tu.Run, dtype: torch.dtype, valid: Optional[Tensor] = None
) -> None:
    """Logits (at the positions in ``valid``, all if None), loss and every gradient."""
    a_logits, e_logits = actual.logits, expected.logits
    if valid is not None:
        a_logits, e_logits = a_logits[valid.bool()], e_logits[valid.bool()]
    assert_close(a_logits, e_logits, dtype, "out", "logits")
    assert_close(actual.loss, expected.loss, dtype, "out", "loss")
    assert actual.grads.keys() == expected.grads.keys()
    for name, grad in expected.grads.items():
        assert_close(actual.grads[name], grad, dtype, "grad", f"gradient of {name}")


def _assert_differ(a: Tensor, b: Tensor, what: str) -> None:
    difference = (a.double() - b.double()).abs().max().item()
    assert difference > MASK_MATTERS, f"{what}: the mask changes nothing ({difference:.1e})"


# ----------------------------------------------------------------------------------------------
# Registration and imports


def test_import_mhsa_does_not_import_transformers():
    code = "import sys, mhsa; assert 'transformers' not in sys.modules, 'imported'; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_register_is_idempotent():
    mhsa_hf.register()
    mhsa_hf.register()
    assert transformers.AttentionInterface()["mhsa"] is mhsa_hf.attention_forward
    assert transformers.AttentionMaskInterface()["mhsa"] is mhsa_hf.attention_mask


# ----------------------------------------------------------------------------------------------
# The mask function: structure, not an L x S matrix


def _mask_for(config, length: int, *, attention_mask=None, position_ids=None, cache=None):
    config._attn_implementation = "mhsa"
    embeds = torch.zeros(1 if attention_mask is None else attention_mask.shape[0], length, 4)
    factory = masking_utils.create_causal_mask
    if getattr(config, "sliding_window", None) is not None:
        factory = masking_utils.create_sliding_window_causal_mask
    return factory(
        config=config,
        inputs_embeds=embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        **{tu.cache_argument(): cache},
    )


def test_mask_causal_padding_window_packed_are_structures():
    config = tu.tiny_llama_config()
    causal = _mask_for(config, 9)
    assert isinstance(causal, mhsa_hf.StructuredMask)
    assert causal.lower is None and causal.upper == 0  # key j visible from i: j <= i
    assert causal.key_padding is None and causal.segments is None

    padded = _mask_for(config, 9, attention_mask=_padding(2, 9, "left"))
    assert isinstance(padded, mhsa_hf.StructuredMask) and padded.upper == 0
    assert torch.equal(padded.key_padding, _padding(2, 9, "left").bool())

    window = _mask_for(tu.tiny_mistral_config(sliding_window=4), 9)
    assert isinstance(window, mhsa_hf.StructuredMask)
    assert (window.lower, window.upper) == (-3, 0)  # key j visible from i: i - 3 <= j <= i

    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    packed = _mask_for(config, 9, position_ids=positions)
    assert isinstance(packed, mhsa_hf.StructuredMask) and packed.upper == 0
    assert packed.segments.tolist() == [[0, 0, 0, 1, 1, 2, 2, 2, 2]]


def test_mask_with_a_cache_is_bottom_right_aligned():
    model = tu.build(LlamaForCausalLM, tu.tiny_llama_config(), torch.float32)
    cache = DynamicCache(config=model.config)
    model.set_attn_implementation("mhsa")
    with torch.no_grad():
        model(input_ids=_ids(1, 7, seed=0), use_cache=True, **{tu.cache_argument(): cache})
    mask = _mask_for(model.config, 3, cache=cache)
    # 3 new queries at positions 7, 8, 9 over 10 keys: query i sees keys j <= i + 7.
    assert (mask.q_length, mask.kv_length, mask.lower, mask.upper) == (3, 10, None, 7)


def test_unknown_mask_pattern_falls_back_to_the_dense_mask():
    config = tu.tiny_llama_config()
    config._attn_implementation = "mhsa"
    embeds = torch.zeros(2, 6, 4)
    attention_mask = _padding(2, 6, "right")

    def first_token_sees_all(batch_idx, head_idx, q_idx, kv_idx):
        return q_idx == 0

    with pytest.warns(UserWarning, match="dense"):
        mask = masking_utils.create_causal_mask(
            config=config,
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            or_mask_function=first_token_sees_all,
            **{tu.cache_argument(): None},
        )
    config._attn_implementation = "sdpa"
    expected = masking_utils.create_causal_mask(
        config=config,
        inputs_embeds=embeds,
        attention_mask=attention_mask,
        or_mask_function=first_token_sees_all,
        **{tu.cache_argument(): None},
    )
    assert mask.dtype == torch.bool and torch.equal(mask, expected)


@pytest.mark.parametrize(
    "L, S, lower, upper, padded",
    [
        (6, 6, None, 0, False),  # causal
        (6, 6, None, None, True),  # bidirectional with padding
        (6, 6, -2, 0, True),  # sliding window
        (6, 6, -8, 0, False),  # a window wider than the sequence: plain causal
        (3, 9, None, 6, False),  # cached keys: bottom-right causal
        (3, 9, 4, 6, True),  # cached keys, window: keys 0..3 sliced off
        (1, 9, None, 8, True),  # one new token: no band left
        (5, 5, -1, 1, False),  # bidirectional window
        (4, 6, None, -1, False),  # query 0 sees nothing: dense mask
        (4, 4, 5, None, False),  # no query sees anything: dense mask
    ],
)
def test_band_against_its_definition(L, S, lower, upper, padded):
    """attention_forward on a StructuredMask equals attention with the mask spelled out."""
    g = torch.Generator().manual_seed(L * 100 + S)
    q = torch.randn(2, 4, L, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 2, S, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 2, S, 8, generator=g, dtype=torch.float64, requires_grad=True)
    key_padding = None
    if padded:
        key_padding = torch.ones(2, S, dtype=torch.bool)
        key_padding[1, :2] = False
    mask = mhsa_hf.StructuredMask(2, L, S, lower, upper, key_padding)
    module = torch.nn.Module()
    out, weights = mhsa_hf.attention_forward(module, q, k, v, mask, scaling=0.3)
    assert weights is None

    offsets = torch.arange(S)[None, :] - torch.arange(L)[:, None]
    keep = torch.ones(2, 1, L, S, dtype=torch.bool)
    if lower is not None:
        keep &= offsets >= lower
    if upper is not None:
        keep &= offsets <= upper
    if key_padding is not None:
        keep &= key_padding[:, None, None, :]
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=keep, scale=0.3, enable_gqa=True
    ).transpose(1, 2)
    assert_close(out, expected, torch.float64, "out", "output")
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    expected_grads = torch.autograd.grad(expected.sum(), (q, k, v))
    for name, grad, expected_grad in zip("qkv", grads, expected_grads):
        assert_close(grad, expected_grad, torch.float64, "grad", f"gradient of {name}")


def test_without_a_mask_the_module_decides_causality():
    """A call without a mask (a model that builds none) is causal if the module is, with the
    queries as the last positions when there are more keys, and the model's window."""
    g = torch.Generator().manual_seed(14)
    q = torch.randn(1, 4, 3, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 9, 8, generator=g, dtype=torch.float64) for _ in range(2))
    module = torch.nn.Module()
    module.is_causal = True
    for window, lower in [(None, None), (4, 3)]:
        out, _ = mhsa_hf.attention_forward(module, q, k, v, None, sliding_window=window)
        band = mhsa_hf.StructuredMask(1, 3, 9, lower=lower, upper=6)
        expected, _ = mhsa_hf.attention_forward(module, q, k, v, band)
        assert torch.equal(out, expected)
    module.is_causal = False
    out, _ = mhsa_hf.attention_forward(module, q, k, v, None)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert_close(out, expected.transpose(1, 2), torch.float64, "out", "no mask, not causal")


def test_callers_4d_mask_is_used_as_it_is():
    """A 4-D additive mask given to the model goes to the op unchanged (as to eager)."""
    model = tu.build(LlamaForCausalLM, tu.tiny_llama_config(), torch.float64)
    ids = _ids(2, 8, seed=15)
    g = torch.Generator().manual_seed(16)
    keep = (torch.rand(2, 1, 8, 8, generator=g) < 0.6) | torch.eye(8, dtype=torch.bool)
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.float64).masked_fill(~keep, float("-inf"))
    ours = tu.logits(model, "mhsa", input_ids=ids, attention_mask=mask)
    reference = tu.logits(model, tu.EXACT_EAGER, input_ids=ids, attention_mask=mask)
    assert_close(ours, reference, torch.float64, "out", "logits")
    _assert_differ(ours, tu.logits(model, "mhsa", input_ids=ids), "4-D mask")


# ----------------------------------------------------------------------------------------------
# Models against eager


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("side", [None, "left", "right"])
def test_llama_gqa_with_padding(dtype, side):
    model = tu.build(LlamaForCausalLM, tu.tiny_llama_config(), dtype)
    ids, attention_mask = _ids(2, 13, seed=1), _padding(2, 13, side)
    inputs = dict(input_ids=ids, attention_mask=attention_mask, labels=_labels(ids, attention_mask))
    ours = tu.training_pass(model, "mhsa", **inputs)
    reference = tu.training_pass(model, tu.reference_implementation(dtype), **inputs)
    _assert_runs_agree(ours, reference, dtype, valid=attention_mask)
    if side == "left":  # (right padding cannot change a causal model's real tokens)
        unmasked = tu.logits(model, "mhsa", input_ids=ids)
        valid = attention_mask.bool()
        _assert_differ(ours.logits[valid], unmasked[valid], "left padding")


def _packed_inputs(lengths):
    ids = _ids(1, sum(lengths), seed=2)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    return ids, positions


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_llama_packed_sequences(dtype):
    """Batch of one row holding three sequences (position_ids restart at 0 for each)."""
    lengths = [5, 8, 4]
    model = tu.build(LlamaForCausalLM, tu.tiny_llama_config(), dtype)
    ids, positions = _packed_inputs(lengths)
    inputs = dict(input_ids=ids, position_ids=positions, labels=ids, use_cache=False)
    ours = tu.training_pass(model, "mhsa", **inputs)
    reference = tu.training_pass(model, tu.reference_implementation(dtype), **inputs)
    _assert_runs_agree(ours, reference, dtype)

    # Each sequence alone gives the same logits; the row attended as one sequence does not.
    alone = [
        tu.logits(model, "mhsa", input_ids=part, use_cache=False)
        for part in ids.split(lengths, dim=1)
    ]
    assert_close(ours.logits, torch.cat(alone, dim=1), dtype, "out", "packed vs alone")
    # A 2-D attention_mask turns transformers' detection of packing off.
    ones = torch.ones_like(ids)
    as_one = tu.logits(model, "mhsa", input_ids=ids, position_ids=positions, attention_mask=ones)
    _assert_differ(ours.logits, as_one, "packed sequences")


def test_llama_packed_sequences_from_cu_seq_lens():
    """FlashAttention's varlen keyword arguments pack the sequences even where transformers'
    own mask does not see the packing (here: a 2-D attention_mask turns its detection off)."""
    lengths = [5, 8, 4]
    model = tu.build(LlamaForCausalLM, tu.tiny_llama_config(), torch.float64)
    ids, positions = _packed_inputs(lengths)
    cu = torch.tensor([0, 5, 13, 17], dtype=torch.int32)
    packed = tu.logits(model, "mhsa", input_ids=ids, position_ids=positions, use_cache=False)
    from_cu = tu.logits(
        model,
        "mhsa",
        input_ids=ids,
        position_ids=positions,
        use_cache=False,
        attention_mask=torch.ones_like(ids),
        cu_seq_lens_q=cu,
        cu_seq_lens_k=cu,
        max_length_q=8,
        max_length_k=8,
    )
    assert_close(from_cu, packed, torch.float64, "out", "cu_seq_lens vs position_ids")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mistral_sliding_window_with_padding(dtype):
    """A 4-token window over 16 tokens, one row right-padded."""
    model = tu.build(MistralForCausalLM, tu.tiny_mistral_config(sliding_window=4), dtype)
    ids, attention_mask = _ids(2, 16, seed=3), _padding(2, 16, "right")
    inputs = dict(input_ids=ids, attention_mask=attention_mask, labels=_labels(ids, attention_mask))
    ours = tu.training_pass(model, "mhsa", **inputs)
    reference = tu.training_pass(model, tu.reference_implementation(dtype), **inputs)
    _assert_runs_agree(ours, reference, dtype, valid=attention_mask)

    unwindowed = tu.build(MistralForCausalLM, tu.tiny_mistral_config(sliding_window=None), dtype)
    unwindowed.load_state_dict(model.state_dict())
    full = tu.logits(unwindowed, "mhsa", input_ids=ids, attention_mask=attention_mask)
    valid = attention_mask.bool()
    _assert_differ(ours.logits[valid], full[valid], "sliding window")


def test_qwen2_sliding_and_full_layers():
    """Qwen2 with one sliding-window layer (window 3) and one full layer: one mask each."""
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=tu.INIT_STD,
        use_sliding_window=True,
        sliding_window=3,
        layer_types=["sliding_attention", "full_attention"],
    )
    model = tu.build(Qwen2ForCausalLM, config, torch.float64)
    ids, attention_mask = _ids(2, 12, seed=4), _padding(2, 12, "left")
    inputs = dict(input_ids=ids, attention_mask=attention_mask, labels=_labels(ids, attention_mask))
    ours = tu.training_pass(model, "mhsa", **inputs)
    reference = tu.training_pass(model, tu.EXACT_EAGER, **inputs)
    _assert_runs_agree(ours, reference, torch.float64, valid=attention_mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bert_bidirectional_with_padding(dtype):
    model = tu.build(BertForMaskedLM, tu.tiny_bert_config(), dtype)
    ids, attention_mask = _ids(2, 11, seed=5), _padding(2, 11, "right")
    inputs = dict(input_ids=ids, attention_mask=attention_mask, labels=_labels(ids, attention_mask))
    ours = tu.training_pass(model, "mhsa", **inputs)
    reference = tu.training_pass(model, tu.reference_implementation(dtype), **inputs)
    _assert_runs_agree(ours, reference, dtype, valid=attention_mask)

    unmasked = tu.logits(model, "mhsa", input_ids=ids)
    valid = attention_mask.bool()
    _assert_differ(ours.logits[valid], unmasked[valid], "BERT padding")


def test_bert_decoder_with_cross_attention():
    """BERT as a decoder: causal self-attention and cross-attention to encoder states (11 query
    positions over 7 encoder positions, one row of the encoder padded)."""
    config = tu.tiny_bert_config(is_decoder=True, add_cross_attention=True)
    model = tu.build(BertLMHeadModel, config, torch.float64)
    g = torch.Generator().manual_seed(12)
    encoder_states = torch.randn(2, 7, 32, generator=g, dtype=torch.float64)
    encoder_mask = torch.ones(2, 7, dtype=torch.long)
    encoder_mask[1, 5:] = 0
    ids = _ids(2, 11, seed=13)
    inputs = dict(
        input_ids=ids,
        encoder_hidden_states=encoder_states,
        encoder_attention_mask=encoder_mask,
        labels=ids,
    )
    ours = tu.training_pass(model, "mhsa", **inputs)
    reference = tu.training_pass(model, tu.EXACT_EAGER, **inputs)
    _assert_runs_agree(ours, reference, torch.float64)

    unmasked = dict(inputs, encoder_attention_mask=None, labels=None)
    _assert_differ(ours.logits, tu.logits(model, "mhsa", **unmasked), "encoder padding")


def _bf16_errors(model_class, config, inputs, valid):
    """For the logits, the loss and each gradient: (mhsa's largest error, eager's largest error,
    largest magnitude), the errors in bfloat16 against the float64 reference on the same
    (bfloat16-rounded) weights."""
    model = tu.build(model_class, config, torch.bfloat16)
    exact = tu.training_pass(model.to(torch.float64), tu.EXACT_EAGER, **inputs)
    model = model.to(torch.bfloat16)
    runs = {name: tu.training_pass(model, name, **inputs) for name in ("mhsa", "eager")}

    def quantities(run: tu.Run):
        yield "logits", run.logits[valid]
        yield "loss", run.loss
        yield from run.grads.items()

    reference = dict(quantities(exact))
    errors = {}
    for what, value in reference.items():
        errors[what] = (0.0, 0.0, value.abs().max().item())
    for index, name in enumerate(("mhsa", "eager")):
        for what, value in quantities(runs[name]):
            error = (value.double() - reference[what]).abs().max().item()
            entry = list(errors[what])
            entry[index] = error
            errors[what] = tuple(entry)
    return errors


@pytest.mark.parametrize("model_name", ["llama", "mistral"])
def test_bfloat16_as_exact_as_eager(model_name):
    if model_name == "llama":
        model_class, config, side = LlamaForCausalLM, tu.tiny_llama_config(), "left"
    else:
        model_class, config = MistralForCausalLM, tu.tiny_mistral_config(sliding_window=4)
        side = "right"
    ids, attention_mask = _ids(2, 16, seed=6), _padding(2, 16, side)
    inputs = dict(input_ids=ids, attention_mask=attention_mask, labels=_labels(ids, attention_mask))
    errors = _bf16_errors(model_class, config, inputs, attention_mask.bool())
    tol = TOLERANCES[torch.bfloat16]["as_exact_as_eager"]
    worse = {
        what: f"mhsa {ours:.2e}, eager {eager:.2e}, largest entry {largest:.2e}"
        for what, (ours, eager, largest) in errors.items()
        if ours > tol.atol * eager + tol.rtol * largest
    }
    assert not worse, f"mhsa's bfloat16 error beyond the bound: {worse}"


# ----------------------------------------------------------------------------------------------
# Generation with a KV cache


def _generate(model, implementation, ids, attention_mask, **kwargs):
    model.set_attn_implementation(implementation)
    return model.generate(
        ids,
        attention_mask=attention_mask,
        max_new_tokens=20,
        do_sample=False,
        pad_token_id=0,
        **kwargs,
    )


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_llama_greedy_generation_with_cache(cache_implementation):
    model = tu.build(LlamaForCausalLM, tu.tiny_llama_config(), torch.float32)
    ids, attention_mask = _ids(2, 9, seed=7), _padding(2, 9, "left")
    kwargs = dict(cache_implementation=cache_implementation)
    ours = _generate(model, "mhsa", ids, attention_mask, **kwargs)
    eager = _generate(model, "eager", ids, attention_mask, **kwargs)
    assert ours.shape == (2, 29)
    assert torch.equal(ours, eager), f"mhsa {ours[:, 9:].tolist()}\neager {eager[:, 9:].tolist()}"


def test_mistral_greedy_generation_past_the_window():
    """Window 4, 9 prompt tokens (one row left-padded) + 20 new ones: the cache outgrows the
    window, and the padding leaves it."""
    model = tu.build(MistralForCausalLM, tu.tiny_mistral_config(sliding_window=4), torch.float32)
    ids, attention_mask = _ids(2, 9, seed=8), _padding(2, 9, "left")
    ours = _generate(model, "mhsa", ids, attention_mask)
    eager = _generate(model, "eager", ids, attention_mask)
    assert torch.equal(ours, eager), f"mhsa {ours[:, 9:].tolist()}\neager {eager[:, 9:].tolist()}"


@pytest.mark.parametrize("model_name", ["llama", "mistral"])
def test_prefill_in_chunks_is_bottom_right_causal(model_name):
    """Several new tokens over a filled cache (q_len > 1, q_len < kv_len): top-left causal
    alignment would hide cached keys from them; the logits must equal one full forward."""
    if model_name == "llama":
        model = tu.build(LlamaForCausalLM, tu.tiny_llama_config(), torch.float64)
    else:
        config = tu.tiny_mistral_config(sliding_window=4)
        model = tu.build(MistralForCausalLM, config, torch.float64)
    ids = _ids(2, 14, seed=9)
    full = tu.logits(model, tu.EXACT_EAGER, input_ids=ids)
    model.set_attn_implementation("mhsa")
    cache = DynamicCache(config=model.config)
    chunks = []
    with torch.no_grad():
        for part in ids.split([6, 5, 3], dim=1):
            output = model(input_ids=part, use_cache=True, **{tu.cache_argument(): cache})
            chunks.append(output.logits)
    assert_close(torch.cat(chunks, dim=1), full, torch.float64, "out", "chunked prefill")


# ----------------------------------------------------------------------------------------------
# Refused features


def test_soft_capping_is_refused():
    config = Gemma2Config(
        **tu.TINY_DECODER, head_dim=8, sliding_window=4, attn_logit_softcapping=50.0
    )
    model = tu.build(Gemma2ForCausalLM, config, torch.float32)
    model.set_attn_implementation("mhsa")
    with pytest.raises(NotImplementedError, match="soft-capping"):
        model(input_ids=_ids(1, 5, seed=10))


def test_sinks_position_bias_and_attention_weights_are_refused():
    q = k = v = torch.randn(1, 2, 3, 4)
    module = torch.nn.Module()
    for kwargs, feature in [
        (dict(s_aux=torch.zeros(2)), "attention sinks"),
        (dict(sinks=torch.zeros(2)), "attention sinks"),
        (dict(position_bias=torch.zeros(1, 2, 3, 3)), "position bias"),
        (dict(output_attentions=True), "attention weights"),
    ]:
        with pytest.raises(NotImplementedError, match=feature):
            mhsa_hf.attention_forward(module, q, k, v, None, **kwargs)


def test_no_warning_on_the_structured_paths():
    """Padding, window and packing never fall back to a dense mask (which warns)."""
    ids = _ids(2, 10, seed=11)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="mhsa attention")
        llama = tu.build(LlamaForCausalLM, tu.tiny_llama_config(), torch.float32)
        tu.logits(llama, "mhsa", input_ids=ids, attention_mask=_padding(2, 10, "left"))
        positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2]])
        tu.logits(llama, "mhsa", input_ids=ids[:1], position_ids=positions, use_cache=False)
        mistral = tu.build(
            MistralForCausalLM, tu.tiny_mistral_config(sliding_window=3), torch.float32
        )
        tu.logits(mistral, "mhsa", input_ids=ids, attention_mask=_padding(2, 10, "right"))
