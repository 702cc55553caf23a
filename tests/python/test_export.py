"""torch.export and AOTInductor: a model using mhsa exports with a dynamic batch and sequence
length, the ExportedProgram runs, survives torch.export.save/load, and compiles with
AOTInductor into a package that runs in Python and in C++ (tests/aoti/run_package.cpp).

The AOTInductor package is compiled once for the module (about half a minute here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.export import Dim

import mhsa
from mhsa_testutils import assert_close

# Not in `scripts/test --quick`: AOTInductor compiles a package.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
E, H = 16, 4


class Model(nn.Module):
    """Attention with a key padding mask and a causal mask, both outputs used."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = mhsa.MultiheadSelfAttention(E, H, batch_first=True)
        self.head = nn.Linear(E, 3)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor):
        out, weights = self.attn(x, key_padding_mask=key_padding_mask, is_causal=True)
        return self.head(out), weights


def _inputs(N: int, L: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, L, E, generator=g)
    kpm = torch.zeros(N, L, dtype=torch.bool)
    kpm[-1, L // 2 + 1 :] = True  # the last sequence is padded
    return x, kpm


BATCH = Dim("batch", min=1, max=64)
SEQ = Dim("seq", min=2, max=1024)
DYNAMIC_SHAPES = {"x": {0: BATCH, 1: SEQ}, "key_padding_mask": {0: BATCH, 1: SEQ}}
# Shapes other than the one traced with: the program must not be specialized to it.
CHECK_SHAPES = [(1, 2), (3, 7), (2, 33)]


@pytest.fixture(scope="module")
def model() -> Model:
    torch.manual_seed(0)
    return Model().eval()


@pytest.fixture(scope="module")
def exported(model) -> torch.export.ExportedProgram:
    return torch.export.export(model, _inputs(2, 5), dynamic_shapes=DYNAMIC_SHAPES)


def _assert_matches(fn, model, shapes=CHECK_SHAPES, kind: str = "bitwise") -> None:
    """fn against the eager model: the same kernels (bitwise) for an exported program, or
    compiled code around them ("reordered") for AOTInductor."""
    for N, L in shapes:
        args = _inputs(N, L, seed=N * 10 + L)
        expected = model(*args)
        actual = fn(*args)
        assert len(actual) == len(expected)
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, e.dtype, kind, f"output {i} at N={N} L={L}")


def test_export_dynamic_batch_and_seq(model, exported):
    code = exported.graph_module.code
    assert "torch.ops.mhsa.multi_head_self_attention.default" in code
    # Both dimensions stayed symbolic.
    x_meta = next(n for n in exported.graph.nodes if n.name == "x").meta["val"]
    assert all(isinstance(d, torch.SymInt) for d in x_meta.shape[:2])
    with torch.no_grad():
        _assert_matches(exported.module(), model)


def test_export_run_decompositions_keeps_mha_forward(model, exported):
    decomposed = exported.run_decompositions()
    assert "torch.ops.mhsa._mha_forward.default" in decomposed.graph_module.code
    with torch.no_grad():
        _assert_matches(decomposed.module(), model)


def test_export_save_load_roundtrip(model, exported, tmp_path):
    path = tmp_path / "model.pt2"
    torch.export.save(exported, path)
    loaded = torch.export.load(path)
    with torch.no_grad():
        _assert_matches(loaded.module(), model)


def test_export_refuses_shapes_outside_the_dims(exported):
    x, kpm = _inputs(2, 5)
    # The shape relation the Meta kernel established while tracing is a guard of the program.
    with pytest.raises(AssertionError, match=r"key_padding_mask.size\(\)\[1\] == x.size\(\)\[1\]"):
        exported.module()(x, kpm[:, :4])


@pytest.fixture(scope="module")
def aoti_package(exported, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("aoti") / "model.pt2"
    return Path(torch._inductor.aoti_compile_and_package(exported, package_path=str(path)))


def test_aoti_package_runs_in_python(model, aoti_package):
    runner = torch._inductor.aoti_load_package(str(aoti_package))
    with torch.no_grad():
        _assert_matches(lambda *a: runner(*a), model, kind="reordered")


def _torch_prefix() -> str:
    return torch.utils.cmake_prefix_path


def _link_dir_for(library: Path, directory: Path) -> Path:
    """A directory where the loader finds ``library`` under its SONAME (libmhsa.so.0), which is
    what an executable linked against it asks for; python/mhsa/ holds it as libmhsa.so only."""
    dynamic = subprocess.run(
        ["readelf", "-d", str(library)], capture_output=True, text=True, check=True
    ).stdout
    soname = next(
        line.split("[")[1].split("]")[0] for line in dynamic.splitlines() if "(SONAME)" in line
    )
    directory.mkdir()
    for name in {soname, "libmhsa.so"}:
        (directory / name).symlink_to(library)
    return directory / "libmhsa.so"


@pytest.mark.skipif(
    shutil.which("cmake") is None or shutil.which("readelf") is None,
    reason="needs cmake, binutils and a C++ compiler",
)
def test_aoti_package_runs_in_cpp(model, aoti_package, tmp_path):
    """tests/aoti/run_package.cpp (LibTorch's AOTIModelPackageLoader, linked with libmhsa.so)
    runs the package on inputs saved here and writes its outputs back."""
    build = tmp_path / "build"
    library = _link_dir_for(Path(mhsa.LIBRARY_PATH).resolve(), tmp_path / "lib")
    configure = [
        "cmake",
        "-S",
        str(REPO / "tests" / "aoti"),
        "-B",
        str(build),
        f"-DCMAKE_PREFIX_PATH={_torch_prefix()}",
        f"-DMHSA_LIBRARY={library}",
    ]
    if shutil.which("ccache"):
        configure.append("-DCMAKE_CXX_COMPILER_LAUNCHER=ccache")
    for cmd in (configure, ["cmake", "--build", str(build), "-j2"]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    for N, L in [(3, 7), (1, 12)]:
        x, kpm = _inputs(N, L, seed=N + L)
        torch.save(x, tmp_path / "x.pt")
        torch.save(kpm, tmp_path / "kpm.pt")
        out_path = tmp_path / "out.pt"
        done = subprocess.run(
            [
                str(build / "run_package"),
                str(aoti_package),
                str(out_path),
                str(tmp_path / "x.pt"),
                str(tmp_path / "kpm.pt"),
            ],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        outputs = torch.load(out_path)
        with torch.no_grad():
            expected = model(x, kpm)
        assert len(outputs) == len(expected)
        for a, e in zip(outputs, expected):
            assert_close(a, e, e.dtype, "reordered", "the C++ runner's output")


class SdpaModel(nn.Module):
    """Projections to 4 query heads over 2 key/value heads, mhsa.scaled_dot_product_attention
    with the key padding mask (as SDPA's bool mask, True = may attend) and is_causal, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(E, E)
        self.kv = nn.Linear(E, E)  # 2 key/value heads of dim E // H for each of k and v
        self.head = nn.Linear(E, 3)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
        N, L, _ = x.shape
        D = E // H
        q = self.q(x).view(N, L, H, D).transpose(1, 2)
        k, v = self.kv(x).view(N, L, 2, 2, D).permute(2, 0, 3, 1, 4).unbind(0)
        out = mhsa.scaled_dot_product_attention(
            q, k, v, attn_mask=~key_padding_mask.view(N, 1, 1, L), is_causal=True, enable_gqa=True
        )
        return self.head(out.transpose(1, 2).reshape(N, L, E))


def test_export_sdpa_dynamic_decompositions_and_save_load(tmp_path):
    """A module calling mhsa.scaled_dot_product_attention exports with a dynamic batch and
    sequence length; the program keeps the op (and _attention_block_forward after
    run_decompositions), runs at other shapes and survives torch.export.save/load."""
    torch.manual_seed(0)
    model = SdpaModel().eval()
    program = torch.export.export(model, _inputs(2, 5), dynamic_shapes=DYNAMIC_SHAPES)
    assert "torch.ops.mhsa.scaled_dot_product_attention.default" in program.graph_module.code
    decomposed = program.run_decompositions()
    assert "torch.ops.mhsa._attention_block_forward.default" in decomposed.graph_module.code
    path = tmp_path / "sdpa.pt2"
    torch.export.save(program, path)
    loaded = torch.export.load(path)
    with torch.no_grad():
        for module in (program.module(), decomposed.module(), loaded.module()):
            _assert_matches(lambda *a, m=module: (m(*a),), lambda *a: (model(*a),))
