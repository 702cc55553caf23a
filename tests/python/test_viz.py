"""Tests of mhsa.viz.plot_heads: one panel per head, 3-D and 4-D input, tick labels, errors."""

import io
import subprocess
import sys

import numpy as np
import pytest
import torch

from mhsa.viz import plot_heads
from mhsa_testutils import assert_close

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _image(ax) -> torch.Tensor:
    """The values a panel shows."""
    return torch.as_tensor(np.asarray(ax.images[0].get_array()))


def random_weights(*shape: int) -> torch.Tensor:
    """Rows that sum to one, like attention weights."""
    return torch.randn(*shape).softmax(dim=-1)


def test_three_dimensional_input_gives_one_panel_per_head() -> None:
    weights = random_weights(3, 5, 5)
    figure = plot_heads(weights)
    assert len(figure.axes) == 3
    for head, ax in enumerate(figure.axes):
        assert ax.get_title() == f"head {head}"
        assert_close(_image(ax), weights[head], torch.float32, "bitwise", f"head {head}")
        assert [label.get_text() for label in ax.get_xticklabels()] == [str(i) for i in range(5)]


def test_four_dimensional_input_draws_the_first_batch_element() -> None:
    weights = random_weights(2, 4, 6, 6)
    tokens = ["a", "b", "c", "d", "e", "f"]
    figure = plot_heads(weights, tokens)
    assert len(figure.axes) == 4
    for head, ax in enumerate(figure.axes):
        assert_close(_image(ax), weights[0, head], torch.float32, "bitwise", f"head {head}")
        assert [label.get_text() for label in ax.get_xticklabels()] == tokens
        assert [label.get_text() for label in ax.get_yticklabels()] == tokens


def test_accepts_numpy_integer_tokens_and_a_title() -> None:
    weights = random_weights(1, 2, 4, 4).numpy()
    figure = plot_heads(weights, tokens=[7, 0, 3, 9], title="my title")
    assert len(figure.axes) == 2
    assert "my title" in figure.get_suptitle()
    assert [label.get_text() for label in figure.axes[1].get_xticklabels()] == ["7", "0", "3", "9"]


def test_requires_grad_and_double_tensors_are_fine() -> None:
    weights = random_weights(2, 3, 3).double().requires_grad_()
    assert len(plot_heads(weights).axes) == 2


def test_saves_a_png_without_a_display() -> None:
    buffer = io.BytesIO()
    plot_heads(random_weights(2, 4, 4)).savefig(buffer, format="png")
    assert buffer.getvalue().startswith(PNG_SIGNATURE)


@pytest.mark.parametrize("shape", [(4, 4), (2, 1, 3, 4, 4), (2, 3, 4)])
def test_rejects_bad_shapes(shape: tuple) -> None:
    with pytest.raises(ValueError):
        plot_heads(torch.rand(*shape))


def test_rejects_wrong_number_of_tokens() -> None:
    with pytest.raises(ValueError, match="3 tokens given for 4 positions"):
        plot_heads(random_weights(2, 4, 4), tokens=["a", "b", "c"])


def test_importing_mhsa_does_not_load_matplotlib() -> None:
    code = (
        "import sys, mhsa; assert 'matplotlib' not in sys.modules and 'mhsa.viz' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
