"""torch.compile: a model using mhsa compiles with fullgraph=True (no graph break), with static
and dynamic shapes, with the aot_eager and inductor backends; outputs and gradients match eager.

Inductor generates and compiles C++ here, so shapes are small and each test compiles once or
twice (the dynamic tests run a second shape to prove no recompilation is needed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mhsa
from mhsa_testutils import assert_close

# Not in `scripts/test --quick`: inductor compiles.
pytestmark = pytest.mark.slow


class Block(nn.Module):
    """Self-attention between two linear layers, with masks and both outputs used."""

    def __init__(self, E: int = 16, H: int = 4) -> None:
        super().__init__()
        self.attn = mhsa.MultiheadSelfAttention(E, H, batch_first=True)
        self.proj = nn.Linear(E, E)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
        out, weights = self.attn(x, key_padding_mask=key_padding_mask, is_causal=True)
        return self.proj(torch.relu(out)).sum() + (weights * weights).sum()


def _inputs(N: int, L: int, E: int = 16):
    g = torch.Generator().manual_seed(N * 100 + L)
    x = torch.randn(N, L, E, generator=g, requires_grad=True)
    kpm = torch.zeros(N, L, dtype=torch.bool)
    kpm[0, L - 1] = True  # one padded key; no row is fully masked (causal keeps the diagonal)
    return x, kpm


def _loss_and_grads(model: nn.Module, fn, x: torch.Tensor, kpm: torch.Tensor):
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x, kpm)
    loss.backward()
    return loss.detach(), [x.grad] + [p.grad for p in model.parameters()]


def _assert_matches_eager(model: nn.Module, compiled, shapes) -> None:
    for N, L in shapes:
        x, kpm = _inputs(N, L)
        loss_ref, grads_ref = _loss_and_grads(model, model, x, kpm)
        loss, grads = _loss_and_grads(model, compiled, x, kpm)
        assert_close(loss, loss_ref, torch.float32, "reordered", f"loss N={N} L={L}")
        for i, (g, g_ref) in enumerate(zip(grads, grads_ref)):
            assert_close(g, g_ref, torch.float32, "reordered_grad", f"gradient {i} N={N} L={L}")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_compile_fullgraph_matches_eager(backend, dynamic):
    model = Block()
    compiled = torch.compile(model, backend=backend, fullgraph=True, dynamic=dynamic)
    # Static: one shape (one compile). Dynamic: two shapes through the same compiled graph.
    shapes = [(2, 5), (3, 7)] if dynamic else [(2, 5)]
    with torch._dynamo.config.patch(error_on_recompile=dynamic):
        _assert_matches_eager(model, compiled, shapes)


def test_compile_graph_has_the_op_and_no_break():
    """explain(): one graph, no break; the traced graph calls the mhsa op as one node."""
    model = Block()
    x, kpm = _inputs(2, 5)
    explanation = torch._dynamo.explain(model)(x, kpm)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    code = explanation.graphs[0].code
    assert "mhsa.multi_head_self_attention" in code


def test_compile_aot_graph_calls_forward_and_backward_ops():
    """AOTAutograd keeps mha_forward / mha_backward as graph nodes (not decomposed)."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    seen = []

    def record(gm, example_inputs):
        seen.append(gm.code)
        return make_boxed_func(gm.forward)

    backend = aot_autograd(fw_compiler=record, bw_compiler=record)
    model = Block()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x, kpm = _inputs(2, 5)
    compiled(x, kpm).backward()
    assert len(seen) == 2
    assert "torch.ops.mhsa._mha_forward.default" in seen[0]
    assert "torch.ops.mhsa._mha_backward.default" in seen[1]


def test_compile_inference_no_grad_functional():
    """The functional form under no_grad and eval, unbatched input, inductor."""
    from mhsa.functional import multi_head_self_attention

    attn = mhsa.MultiheadSelfAttention(8, 2).eval()

    def fn(x):
        out, _ = multi_head_self_attention(
            x,
            attn.in_proj_weight,
            attn.in_proj_bias,
            attn.out_proj.weight,
            attn.out_proj.bias,
            num_heads=2,
            training=False,
            need_weights=False,
        )
        return out

    x = torch.randn(6, 8)
    with torch.no_grad():
        expected = fn(x)
        actual = torch.compile(fn, fullgraph=True)(x)
    assert_close(actual, expected, torch.float32, "reordered", "compiled functional")


# ---------------------------------------------------------------------------------------------
# mhsa.scaled_dot_product_attention


class GqaBlock(nn.Module):
    """Projections to 4 query heads over 2 key/value heads (the (N, L, H, D) layout viewed as
    heads first), mhsa.scaled_dot_product_attention with a key padding mask, is_causal and a
    window, and an output projection; returns a scalar loss."""

    def __init__(self, E: int = 16, H: int = 4, H_kv: int = 2) -> None:
        super().__init__()
        self.H, self.H_kv, self.D = H, H_kv, E // H
        self.q = nn.Linear(E, E)
        self.kv = nn.Linear(E, 2 * H_kv * self.D)
        self.out = nn.Linear(E, E)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
        N, L, E = x.shape
        q = self.q(x).view(N, L, self.H, self.D).transpose(1, 2)
        k, v = self.kv(x).view(N, L, 2, self.H_kv, self.D).permute(2, 0, 3, 1, 4).unbind(0)
        attend = ~key_padding_mask.view(N, 1, 1, L)  # SDPA's bool mask: True = may attend
        context = mhsa.scaled_dot_product_attention(
            q, k, v, attn_mask=attend, is_causal=True, enable_gqa=True, window_size=(3, 0)
        )
        return self.out(context.transpose(1, 2).reshape(N, L, E)).square().sum()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_compile_sdpa_fullgraph_matches_eager(backend, dynamic):
    model = GqaBlock()
    compiled = torch.compile(model, backend=backend, fullgraph=True, dynamic=dynamic)
    shapes = [(2, 5), (3, 7)] if dynamic else [(2, 5)]
    with torch._dynamo.config.patch(error_on_recompile=dynamic):
        _assert_matches_eager(model, compiled, shapes)


def test_compile_sdpa_graph_has_the_op_and_the_block_ops():
    """One graph, no break, the public op as one node; AOTAutograd keeps the block ops it calls
    (forward and backward) as graph nodes."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    model = GqaBlock()
    x, kpm = _inputs(2, 5)
    explanation = torch._dynamo.explain(model)(x, kpm)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    assert "mhsa.scaled_dot_product_attention" in explanation.graphs[0].code

    seen = []

    def record(gm, example_inputs):
        seen.append(gm.code)
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    backend = aot_autograd(fw_compiler=record, bw_compiler=record)
    torch.compile(model, backend=backend, fullgraph=True)(x, kpm).backward()
    assert len(seen) == 2
    assert "torch.ops.mhsa._attention_block_forward.default" in seen[0]
    assert "torch.ops.mhsa._attention_block_backward.default" in seen[1]


def test_compile_sdpa_dropout_reproduces_eager_at_a_seed():
    """Dropout draws its seed from torch's generator inside the op, compiled or not."""
    q, k, v = (torch.randn(2, 4, 9, 8, requires_grad=True) for _ in range(3))

    def fn(q, k, v):
        return mhsa.scaled_dot_product_attention(q, k, v, dropout_p=0.3, is_causal=True)

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    results = []
    for f in (fn, compiled):
        torch.manual_seed(5)
        out = f(q, k, v)
        results.append([out, *torch.autograd.grad(out.square().sum(), (q, k, v))])
    for a, e in zip(*results):
        assert torch.equal(a, e)
