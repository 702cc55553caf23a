"""mhsa past one process: data parallel (DDP, FSDP2, DDP + torch.compile) and context-parallel
ring self-attention (mhsa.distributed), each against the same computation in one process.

Every test spawns its ranks (2 or 4 processes, gloo, a free port on 127.0.0.1, a process-group
timeout of a few seconds), waits for them with a deadline and turns a rank's exception, death or
hang into a test failure naming the rank. The ranks compute the one-process reference
themselves (same seeds, full sequence or concatenated batches) and assert against it; the
largest differences measured are written to ``errors-*.json`` in the test's tmp_path.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn

import mhsa
import mhsa_testutils

# Not in `scripts/test --quick`: spawns 2 and 4 gloo processes.
pytestmark = pytest.mark.slow

# Bounds for one spawned test: starting the processes (imports) plus the work.
LAUNCH_DEADLINE_S = 150.0
PG_TIMEOUT_S = 20.0
# The stalled-rank test: process-group timeout, and how long the stalled rank sleeps.
STALL_PG_TIMEOUT_S = 2.0
STALL_S = 6.0


# ---------------------------------------------------------------------------------------------
# Launching ranks.


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(
    rank: int, world: int, port: int, worker: str, outdir: str, pg_timeout_s: float
) -> None:
    """Entry point of a spawned rank: joins the process group and runs ``worker``; an exception
    is written to ``rank<r>.err`` and makes the process exit with code 1."""
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=pg_timeout_s),
        )
        try:
            globals()[worker](rank, world, Path(outdir))
        finally:
            dist.destroy_process_group()
    except BaseException:  # noqa: BLE001  (reported to the parent, whatever it is)
        Path(outdir, f"rank{rank}.err").write_text(traceback.format_exc())
        os._exit(1)
    # The rank's work is done and checked. Leave without Python's interpreter finalization: in
    # torch 2.13 a gloo worker thread can still be destroying a finished AsyncWork (FSDP2's
    # collectives) whose tensors own Python objects while the main thread finalizes; its GIL
    # acquire then ends the thread with a forced unwind through a noexcept destructor, and
    # std::terminate aborts the rank ("terminate called without an active exception"; a core
    # dump shows ProcessGroupGloo::AsyncWork::~AsyncWork -> decref_pyobject -> take_gil ->
    # pthread_exit). About 1 launch in 10 hit it; it is torch's teardown, not mhsa's.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _launch(
    worker: str, world: int, outdir: Path, *, pg_timeout_s: float = PG_TIMEOUT_S
) -> List[int]:
    """Runs ``worker`` on ``world`` spawned ranks; returns their exit codes.

    Fails the test if the ranks are not all done by LAUNCH_DEADLINE_S (the survivors are
    killed), so a hang can never stall the suite.
    """
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned ranks
    context = multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [
        context.Process(
            target=_rank_main, args=(r, world, port, worker, str(outdir), pg_timeout_s), daemon=True
        )
        for r in range(world)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + LAUNCH_DEADLINE_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for r in hung:
        procs[r].kill()
        procs[r].join()
    if hung:
        pytest.fail(
            f"{worker}: ranks {hung} still running after {LAUNCH_DEADLINE_S} s (hang):\n{_errors(outdir)}"
        )
    return [p.exitcode for p in procs]


def _errors(outdir: Path) -> str:
    return "\n".join(f"--- {f.name}\n{f.read_text()}" for f in sorted(outdir.glob("rank*.err")))


def _run(worker: str, world: int, outdir: Path) -> None:
    codes = _launch(worker, world, outdir)
    if any(code != 0 for code in codes):
        pytest.fail(f"{worker} on {world} ranks: exit codes {codes}\n{_errors(outdir)}")


def _record(outdir: Path, name: str, errors: Dict[str, float]) -> None:
    """Max-reduces the measured errors over the ranks; rank 0 writes them."""
    values = torch.tensor(list(errors.values()), dtype=torch.float64)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    if dist.get_rank() == 0:
        Path(outdir, f"errors-{name}.json").write_text(
            json.dumps(dict(zip(errors, values.tolist())), indent=1)
        )


def _max_diff(a: Tensor, b: Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


# ---------------------------------------------------------------------------------------------
# Context-parallel ring attention: workers.

# (dtype, is_causal, load_balance, dropout_p, batch_first)
RING_CASES: List[Tuple[torch.dtype, bool, bool, float, bool]] = [
    (dtype, causal, balance, p, bf)
    for dtype in (torch.float64, torch.float32)
    for causal in (False, True)
    for balance in (False, True)
    for p, bf in ((0.0, True), (0.3, False))
]


def _ring_case(
    world: int,
    dtype: torch.dtype,
    causal: bool,
    balance: bool,
    p: float,
    batch_first: bool,
    case_seed: int,
    length: Optional[int] = None,
    kv_heads: Optional[int] = None,
) -> Dict[str, float]:
    """One configuration: ContextParallelSelfAttention on the local slices against the module on
    the full sequence; asserts outputs and all gradients; returns the largest differences.
    ``length``: the global L (default 8P), divisible by 2P for the zigzag split. ``kv_heads``:
    a grouped-query module with 4 query heads and these key/value heads."""
    E, H, N = 16, 2, 2
    L = length or 8 * world
    seq_dim = 1 if batch_first else 0
    if kv_heads is None:
        _, attn = mhsa_testutils.make_pair(
            E, H, dtype=dtype, dropout=p, batch_first=batch_first, seed=case_seed
        )
    else:
        attn = mhsa.MultiheadSelfAttention(
            E, 4, dropout=p, batch_first=batch_first, dtype=dtype, num_kv_heads=kv_heads
        )
        mhsa_testutils.randomize_(attn, case_seed)
    attn.train()
    x = mhsa_testutils.make_input(L, N, E, batch_first=batch_first, dtype=dtype, seed=case_seed + 1)
    grad_out = mhsa_testutils.make_input(
        L, N, E, batch_first=batch_first, dtype=dtype, seed=case_seed + 2
    ).detach()
    params = [attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight, attn.out_proj.bias]

    torch.manual_seed(100 + case_seed)
    y_ref, _ = attn(x, need_weights=False, is_causal=causal)
    ref_grads = torch.autograd.grad(y_ref, [x, *params], grad_out)
    if p > 0:
        attn.eval()
        y_eval, _ = attn(x, need_weights=False, is_causal=causal)
        attn.train()
        assert not torch.allclose(y_eval, y_ref), (
            "dropout had no effect: the dropout case tests nothing"
        )

    cp = mhsa.distributed.ContextParallelSelfAttention(attn, load_balance=balance)

    def shard(t: Tensor) -> Tensor:
        return mhsa.distributed.shard_sequence(t.detach(), load_balance=balance, seq_dim=seq_dim)

    x_local = shard(x).requires_grad_()
    torch.manual_seed(100 + case_seed)  # the seed the one-process run drew its dropout key from
    y_local = cp(x_local, is_causal=causal)
    grads = list(torch.autograd.grad(y_local, [x_local, *params], shard(grad_out)))
    for g in grads[1:]:
        dist.all_reduce(g)  # parameter gradients: sum of the local contributions
    what = f"P={world} {dtype} causal={causal} load_balance={balance} dropout={p} batch_first={batch_first}"
    mhsa_testutils.assert_close(y_local, shard(y_ref), dtype, "out", f"{what}: output")
    full = mhsa.distributed.unshard_sequence(y_local, load_balance=balance, seq_dim=seq_dim)
    mhsa_testutils.assert_close(full, y_ref, dtype, "out", f"{what}: unshard_sequence(output)")
    names = ["x", *mhsa_testutils.PARAM_NAMES]
    mhsa_testutils.assert_close(grads[0], shard(ref_grads[0]), dtype, "grad", f"{what}: grad x")
    for name, g, ref in zip(names[1:], grads[1:], ref_grads[1:]):
        mhsa_testutils.assert_close(g, ref, dtype, "grad", f"{what}: grad {name}")
    return {
        "out": _max_diff(y_local, shard(y_ref)),
        "grad": max(
            [_max_diff(grads[0], shard(ref_grads[0]))]
            + [_max_diff(g, r) for g, r in zip(grads[1:], ref_grads[1:])]
        ),
    }


def ring_worker(rank: int, world: int, outdir: Path) -> None:
    """Every RING_CASES configuration, plus blocks that span many kernel tiles, grouped-query
    heads, the functional form (unbatched, no bias), and slices of mismatched shapes."""
    errors: Dict[str, float] = {}
    for index, (dtype, causal, balance, p, bf) in enumerate(RING_CASES):
        result = _ring_case(world, dtype, causal, balance, p, bf, case_seed=10 * index)
        tag = f"{str(dtype)[6:]} causal={int(causal)} lb={int(balance)} p={p}"
        errors[f"{tag} out"] = result["out"]
        errors[f"{tag} grad"] = result["grad"]

    # Kernel tiles of 3 and 5 rows (MHSA_TILES: forward queries, forward keys, backward
    # queries, backward keys/values), in the ring's blocks and in the one-process reference:
    # blocks of 30 (contiguous split) or 15 (zigzag) positions span several tiles, the causal
    # diagonal of a block at a global offset crosses its tiles at other places than in one
    # process, and the blocks' dropout-plane offsets are not multiples of Philox's 4-wide groups.
    os.environ["MHSA_TILES"] = "3,5,3,5"
    try:
        for balance in (False, True):
            result = _ring_case(
                world, torch.float64, True, balance, 0.3, True, case_seed=500, length=30 * world
            )
            errors[f"float64 tiles causal lb={int(balance)} p=0.3 out"] = result["out"]
            errors[f"float64 tiles causal lb={int(balance)} p=0.3 grad"] = result["grad"]
    finally:
        del os.environ["MHSA_TILES"]

    # Grouped-query attention: 4 query heads over 2 key/value heads.
    for index, (dtype, causal, p) in enumerate(
        [(torch.float64, True, 0.3), (torch.float32, False, 0.0)]
    ):
        result = _ring_case(world, dtype, causal, True, p, True, case_seed=600 + index, kv_heads=2)
        errors[f"{str(dtype)[6:]} gqa causal={int(causal)} lb=1 p={p} out"] = result["out"]
        errors[f"{str(dtype)[6:]} gqa causal={int(causal)} lb=1 p={p} grad"] = result["grad"]

    # The functional form on unbatched (L, E) input without biases.
    E, H, L = 12, 3, 4 * world
    g = torch.Generator().manual_seed(7)
    w_in = torch.randn(3 * E, E, generator=g, dtype=torch.float64, requires_grad=True)
    w_out = torch.randn(E, E, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(L, E, generator=g, dtype=torch.float64, requires_grad=True)
    y_ref, _ = mhsa.functional.multi_head_self_attention(
        x, w_in, None, w_out, None, H, need_weights=False, is_causal=True
    )
    grad_out = torch.randn(L, E, generator=g, dtype=torch.float64)
    ref_grads = torch.autograd.grad(y_ref, [x, w_in, w_out], grad_out)
    x_local = mhsa.distributed.shard_sequence(x.detach(), seq_dim=0).requires_grad_()
    y_local = mhsa.distributed.ring_self_attention(
        x_local, w_in, None, w_out, None, H, is_causal=True
    )
    grads = torch.autograd.grad(
        y_local, [x_local, w_in, w_out], mhsa.distributed.shard_sequence(grad_out, seq_dim=0)
    )
    mhsa_testutils.assert_close(
        y_local,
        mhsa.distributed.shard_sequence(y_ref, seq_dim=0),
        torch.float64,
        "out",
        "unbatched output",
    )
    mhsa_testutils.assert_close(
        grads[0],
        mhsa.distributed.shard_sequence(ref_grads[0], seq_dim=0),
        torch.float64,
        "grad",
        "unbatched grad x",
    )
    for name, g_local, ref in zip(("in_proj_weight", "out_proj.weight"), grads[1:], ref_grads[1:]):
        g_local = g_local.clone()
        dist.all_reduce(g_local)
        mhsa_testutils.assert_close(g_local, ref, torch.float64, "grad", f"unbatched grad {name}")
    _record(outdir, f"ring-P{world}", errors)
    _check_mismatched_shapes(rank)


def _check_mismatched_shapes(rank: int) -> None:
    """Ranks passing slices of different lengths all get the same ValueError, then the group
    still works (nothing was left half-sent)."""
    attn = mhsa.MultiheadSelfAttention(8, 2, batch_first=True)
    cp = mhsa.distributed.ContextParallelSelfAttention(attn)
    x_local = torch.randn(1, 4 + rank, 8)
    with pytest.raises(
        ValueError, match=r"same shape.*rank 0: shape \(1, 4, 8\).*rank 1: shape \(1, 5, 8\)"
    ):
        cp(x_local)
    y = cp(torch.randn(1, 4, 8))
    assert y.shape == (1, 4, 8)
    cp.load_balance = True  # the zigzag split needs 2P chunks: L = 3P is not divisible by 2P
    with pytest.raises(ValueError, match=f"divisible by {2 * dist.get_world_size()}"):
        cp(torch.randn(1, 3, 8))


def stalled_worker(rank: int, world: int, outdir: Path) -> None:
    """The last rank never joins the ring call; the others must time out, not hang."""
    attn = mhsa.MultiheadSelfAttention(8, 2, batch_first=True)
    cp = mhsa.distributed.ContextParallelSelfAttention(attn)
    dist.barrier()
    if rank == world - 1:
        time.sleep(STALL_S)
        os._exit(0)
    start = time.monotonic()
    try:
        cp(torch.randn(1, 4, 8))
    except Exception as error:  # noqa: BLE001  (the backend decides the exact type)
        Path(outdir, f"survivor{rank}.txt").write_text(
            f"{type(error).__name__} after {time.monotonic() - start:.1f} s: {error}"
        )
        os._exit(0)
    raise AssertionError(
        "ring_self_attention returned although a rank of the group never called it"
    )


def dying_worker(rank: int, world: int, outdir: Path) -> None:
    """The last rank dies before the ring starts; the others must get an error, not hang."""
    attn = mhsa.MultiheadSelfAttention(8, 2, batch_first=True)
    cp = mhsa.distributed.ContextParallelSelfAttention(attn)
    dist.barrier()
    if rank == world - 1:
        os._exit(3)
    start = time.monotonic()
    try:
        cp(torch.randn(1, 4, 8)).sum().backward()
    except Exception as error:  # noqa: BLE001  (the backend decides the exact type)
        Path(outdir, f"survivor{rank}.txt").write_text(
            f"{type(error).__name__} after {time.monotonic() - start:.1f} s: {error}"
        )
        os._exit(0)  # the group is broken: skip destroy_process_group
    raise AssertionError("ring_self_attention returned although a rank of the group had died")


# ---------------------------------------------------------------------------------------------
# Data parallel: workers.


class _DirectModel(nn.Module):
    """A small model built from mhsa.MultiheadSelfAttention directly."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.attn = mhsa.MultiheadSelfAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        a, _ = self.attn(h, need_weights=False, is_causal=True)
        return self.head(torch.relu(h + a))


class _EncoderModel(nn.Module):
    """nn.TransformerEncoder after mhsa.replace_attention, with a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        skipped: list = []
        mhsa.replace_attention(self.encoder, skipped=skipped)
        assert skipped == [] and isinstance(
            self.encoder.layers[0].self_attn, mhsa.MultiheadSelfAttention
        )
        self.head = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(self.embed(x)))


def _batches(world: int, steps: int) -> List[Tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(42)
    return [
        (torch.randn(2 * world, 6, 8, generator=g), torch.randn(2 * world, 6, 4, generator=g))
        for _ in range(steps)
    ]


def _train(model: nn.Module, batches: List[Tuple[Tensor, Tensor]], rank: Optional[int]) -> None:
    """SGD with momentum on the mean squared error; ``rank`` None: the whole batches (one
    process), else this rank's half of each."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, target in batches:
        if rank is not None:
            x, target = x[2 * rank : 2 * rank + 2], target[2 * rank : 2 * rank + 2]
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), target).backward()
        optimizer.step()


def _compare_params(
    trained: Dict[str, Tensor], reference: nn.Module, initial: nn.Module, what: str
) -> Dict[str, float]:
    """Asserts the trained parameters equal the one-process ones and that training moved them."""
    worst = 0.0
    ref = dict(reference.named_parameters())
    moved = 0.0
    for name, p0 in initial.named_parameters():
        p = trained[name]
        # The parameters differ by the gradients' rounding, scaled by the learning rate.
        mhsa_testutils.assert_close(p, ref[name].detach(), p.dtype, "grad", f"{what} {name}")
        worst = max(worst, _max_diff(p, ref[name]))
        moved = max(moved, _max_diff(p, p0))
    assert moved > 1e-3, f"{what}: training did not change the parameters"
    return {what: worst}


def _models() -> List[Tuple[str, Callable[[], nn.Module]]]:
    return [("encoder", _EncoderModel), ("direct", _DirectModel)]


def data_parallel_worker(rank: int, world: int, outdir: Path) -> None:
    """DistributedDataParallel, then FSDP2, against one process on the concatenated batches."""
    _ddp(rank, world, outdir)
    _fsdp2(rank, world, outdir)


def _ddp(rank: int, world: int, outdir: Path) -> None:
    from torch.nn.parallel import DistributedDataParallel

    errors: Dict[str, float] = {}
    batches = _batches(world, steps=3)
    for name, build in _models():
        torch.manual_seed(0)
        initial = build()
        reference = copy.deepcopy(initial)
        _train(reference, batches, None)
        model = DistributedDataParallel(copy.deepcopy(initial))
        _train(model, batches, rank)
        trained = {n: p.detach() for n, p in model.module.named_parameters()}
        errors.update(_compare_params(trained, reference, initial, f"ddp {name}"))
    _record(outdir, "ddp", errors)


def _fsdp2(rank: int, world: int, outdir: Path) -> None:
    """FSDP2 (fully_shard per layer and at the root) on CPU against one process."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    errors: Dict[str, float] = {}
    batches = _batches(world, steps=3)
    for name, build in _models():
        torch.manual_seed(0)
        initial = build()
        reference = copy.deepcopy(initial)
        _train(reference, batches, None)
        model = copy.deepcopy(initial)
        for module in (*getattr(getattr(model, "encoder", None), "layers", []), model):
            fully_shard(module)
        assert isinstance(next(model.parameters()), DTensor)
        _train(model, batches, rank)
        trained = {n: p.full_tensor().detach() for n, p in model.named_parameters()}
        errors.update(_compare_params(trained, reference, initial, f"fsdp2 {name}"))
    _record(outdir, "fsdp2", errors)


def ddp_compile_worker(rank: int, world: int, outdir: Path) -> None:
    """torch.compile of a DistributedDataParallel model against one process (eager)."""
    from torch.nn.parallel import DistributedDataParallel

    errors: Dict[str, float] = {}
    batches = _batches(world, steps=3)
    for name, build in _models():
        torch.manual_seed(0)
        initial = build()
        reference = copy.deepcopy(initial)
        _train(reference, batches, None)
        ddp = DistributedDataParallel(copy.deepcopy(initial))
        compiled = torch.compile(ddp)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
        for x, target in batches:
            x, target = x[2 * rank : 2 * rank + 2], target[2 * rank : 2 * rank + 2]
            optimizer.zero_grad()
            nn.functional.mse_loss(compiled(x), target).backward()
            optimizer.step()
        trained = {n: p.detach() for n, p in ddp.module.named_parameters()}
        errors.update(_compare_params(trained, reference, initial, f"ddp+compile {name}"))
    from torch._dynamo.utils import counters

    assert counters["stats"]["unique_graphs"] > 0, "torch.compile traced no graph"
    # DDP's own forward wrapper breaks the graph (its Logger and _inside_ddp_forward, in torch
    # 2.13); the wrapped model, mhsa included, must trace without a break.
    # Reasons quote file paths: the checkout's and the venv's may contain "mhsa" themselves.
    prefixes = sorted({sys.prefix, str(Path(__file__).resolve().parents[2])}, key=len, reverse=True)

    def without_prefixes(reason: str) -> str:
        for prefix in prefixes:
            reason = reason.replace(prefix, "<path>")
        return reason

    mhsa_breaks = [r for r in counters["graph_break"] if "mhsa" in without_prefixes(r)]
    assert not mhsa_breaks, f"graph breaks in mhsa: {mhsa_breaks}"
    _record(outdir, "ddp-compile", errors)


# ---------------------------------------------------------------------------------------------
# The tests.


@pytest.mark.parametrize("world", [2, 4])
def test_ring_attention_matches_one_process(world: int, tmp_path: Path) -> None:
    """Outputs and all gradients of ring attention on P ranks equal one-process mhsa on the full
    sequence: float64 and float32, causal or not, contiguous or zigzag split, with dropout.
    Then slices of different shapes on different ranks raise the same ValueError everywhere."""
    _run("ring_worker", world, tmp_path)
    assert (tmp_path / f"errors-ring-P{world}.json").exists()


def test_ring_attention_dead_rank_raises_not_hangs(tmp_path: Path) -> None:
    """A rank dies: the survivor's call ends with an error within the process-group timeout."""
    codes = _launch("dying_worker", 2, tmp_path, pg_timeout_s=5.0)
    assert codes == [0, 3], f"exit codes {codes}\n{_errors(tmp_path)}"
    # e.g. "RuntimeError after 0.0 s: [...gloo/transport/tcp/pair.cc:537] Read error
    # [127.0.0.1]:14210: Connection reset by peer. ..."
    message = (tmp_path / "survivor0.txt").read_text()
    kind, seconds = message.split(" after ")[0], float(message.split(" after ")[1].split(" s:")[0])
    assert kind in ("RuntimeError", "DistBackendError", "DistNetworkError"), message
    assert seconds < 5.0 + 5.0, f"the error took longer than the process-group timeout: {message}"


def test_ring_attention_stalled_rank_times_out(tmp_path: Path) -> None:
    """A rank never makes the call: the other's call fails when the process-group timeout
    expires, long before the stalled rank would have come."""
    codes = _launch("stalled_worker", 2, tmp_path, pg_timeout_s=STALL_PG_TIMEOUT_S)
    assert codes == [0, 0], f"exit codes {codes}\n{_errors(tmp_path)}"
    # e.g. "RuntimeError after 2.0 s: [...gloo/transport/tcp/unbound_buffer.cc:129] Timed out
    # waiting 2000ms for send operation to complete"
    message = (tmp_path / "survivor0.txt").read_text()
    seconds = float(message.split(" after ")[1].split(" s:")[0])
    assert STALL_PG_TIMEOUT_S - 0.5 <= seconds < STALL_S - 2.0, message
    assert "timed out" in message.lower() or "timeout" in message.lower(), message


def test_ddp_and_fsdp2_match_one_process(tmp_path: Path) -> None:
    """An encoder after replace_attention and a model built from MultiheadSelfAttention, trained
    3 steps with DDP and with FSDP2 on 2 ranks, end with the parameters of one-process training."""
    _run("data_parallel_worker", 2, tmp_path)
    assert (tmp_path / "errors-ddp.json").exists() and (tmp_path / "errors-fsdp2.json").exists()


def test_ddp_compile_matches_one_process(tmp_path: Path) -> None:
    """The same with torch.compile of the DDP model (inductor)."""
    _run("ddp_compile_worker", 2, tmp_path)


def _fake_ring(rank: int, world: int, global_len: int, load_balance: bool):
    import mhsa.distributed as md

    return md._Ring(None, rank, world, global_len, load_balance)


def _block_work(rank: int, world: int, global_len: int, load_balance: bool, causal: bool) -> int:
    """Query x key positions of the blocks rank ``rank`` hands to the fused kernels."""
    import mhsa.distributed as md

    ring = _fake_ring(rank, world, global_len, load_balance)
    return sum(
        qs.length * ks.length
        for k_rank in range(world)
        for qs, ks, _ in md._blocks(ring, rank, k_rank, is_causal=causal)
    )


@pytest.mark.parametrize("load_balance", [False, True])
def test_causal_skips_invisible_blocks(load_balance: bool) -> None:
    """Causal attention computes only the blocks a rank can see: in total a little over half of
    L^2 scores, and with the zigzag split the same number on every rank."""
    world, global_len = 4, 1024
    work = [_block_work(rank, world, global_len, load_balance, True) for rank in range(world)]
    block = global_len // world
    if load_balance:
        assert len(set(work)) == 1, work
    else:
        assert work == [block * block * (r + 1) for r in range(world)], work
    assert global_len**2 / 2 < sum(work) < 0.7 * global_len**2, work
    full = [_block_work(r, world, global_len, load_balance, False) for r in range(world)]
    assert full == [block * global_len] * world


def _segment(start: int, length: int):
    """Positions [start, start + length) of a one-rank ring (local rows are global)."""
    import mhsa.distributed as md

    return md._Segment(start, start, length)


@pytest.mark.parametrize("L, N, H", [(13, 2, 3), (32, 1, 2)])
def test_ring_blocks_drop_out_as_the_operator(L: int, N: int, H: int) -> None:
    """The dropout of every block the ring computes is the one-process operator's at the same
    seed: the ring's block call (its seed, drawn as the operator draws it, and its dropout plane)
    on any (query rows, key range), causal at a global offset or not, gives the output and
    log-sum-exp of that block's softmax with the operator's mask, read from the operator's
    dropped-out attention weights."""
    import mhsa.distributed as md

    E, p = 4 * H, 0.4
    attn = mhsa.MultiheadSelfAttention(E, H, dropout=p, batch_first=True, dtype=torch.float64)
    x = torch.randn(N, L, E, dtype=torch.float64)
    torch.manual_seed(11)
    _, weights = attn(x, need_weights=True, average_attn_weights=False)
    keep = weights != 0
    assert 0.45 < keep.double().mean().item() < 0.75
    torch.manual_seed(11)
    drop = md._Dropout(p, md._rng_state(md._local_seed()))

    with torch.no_grad():
        qkv = nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias)
        q, kv = md._split_heads(qkv, H, H)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    ring = _fake_ring(0, 1, L, False)
    blocks = [
        (_segment(0, L), _segment(0, L), False),
        (_segment(3, 6), _segment(5, L - 6), False),
        (_segment(1, L - 1), _segment(L - 7, 5), False),
        (_segment(6, L - 6), _segment(2, L - 4), True),  # causal diagonal at offset 4
    ]
    for qs, ks, causal in blocks:
        rows, cols = slice(qs.start, qs.start + qs.length), slice(ks.start, ks.start + ks.length)
        out, lse = md._block_forward(ring, q, kv, qs, ks, causal, drop)
        masks = []
        if causal:
            later = torch.arange(ks.start, ks.start + ks.length) > torch.arange(
                qs.start, qs.start + qs.length
            ).view(-1, 1)
            masks.append(later)
        expected, _, expected_lse = mhsa_testutils.attention_core(
            q[:, :, rows],
            k[:, :, cols],
            v[:, :, cols],
            masks=masks,
            keep=keep[:, :, rows, cols],
            dropout_p=p,
        )
        what = f"block rows {qs.start}+{qs.length} keys {ks.start}+{ks.length}"
        mhsa_testutils.assert_close(out, expected, torch.float64, "reordered", f"{what} output")
        mhsa_testutils.assert_close(lse, expected_lse, torch.float64, "reordered", f"{what} lse")
    kept = weights[keep]
    assert bool((kept > 0).all())


def test_torchrun_ring_attention_example() -> None:
    """examples/ring_attention.py (the README's torchrun example) runs on 2 ranks and matches
    one process."""
    example = Path(__file__).resolve().parents[2] / "examples" / "ring_attention.py"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(example),
    ]
    # The mhsa package this test imported, ahead of any other on the path.
    package_root = str(Path(mhsa.__file__).resolve().parents[1])
    python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=python_path)
    result = subprocess.run(
        command, check=False, capture_output=True, text=True, env=env, timeout=LAUNCH_DEADLINE_S
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "step 2: loss" in result.stdout and "vs one process: max difference" in result.stdout, (
        result.stdout
    )
