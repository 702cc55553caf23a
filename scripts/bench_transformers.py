"""Benchmark mhsa as the attention of Hugging Face transformers models, against "sdpa" and "eager".

For each model, dtype (float32, bfloat16: the whole model in that dtype, AdamW on its
parameters) and attention implementation, a fresh process (so that peak memory is its own):

* builds the model from a config with random weights (no downloads) and an AdamW optimizer;
* times a training step (forward with labels, backward, ``optimizer.step()``) on one batch of
  random tokens: the median of ``--repeats`` steps after ``--warmup`` steps;
* measures the peak memory of those steps, in a second process run with
  MALLOC_MMAP_THRESHOLD_=65536 so that freed large tensors leave the RSS (the times come from
  the first, with the default allocator users run): the growth of the process's peak RSS
  (VmHWM, reset just before the steps through /proc/self/clear_refs) over the RSS of the model
  and optimizer (torch's CPU allocator has no peak counter; tracemalloc does not see it);
* times greedy generation with a KV cache (``generate``, ``do_sample=False``): tokens per second
  over ``--new-tokens`` new tokens after a ``--prompt``-token prompt.

Models (the full sizes; ``--quick`` shrinks every size so that the whole run takes seconds):

* llama: 4 layers, hidden 512, 8 heads, 2 key/value heads (grouped-query attention),
  intermediate 1376, vocabulary 8192, sequence 2048, batch 1;
* mistral: the same with ``sliding_window=512`` at sequence 8192. "eager" is skipped there
  (its float32 scores alone are 8 heads x 8192^2 x 4 bytes = 2 GiB per layer, and minutes per
  step on a few cores); ``--eager-long`` runs it anyway.

Prints a markdown table with the CPU (lscpu's "Model name" and its avx2 / avx512f / amx flags)
and the thread count, set explicitly (``--threads``, default 2). Speed is never asserted in
tests.

    .venv/bin/python scripts/bench_transformers.py --threads 2
    .venv/bin/python scripts/bench_transformers.py --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

IMPLEMENTATIONS = ["mhsa", "sdpa", "eager"]
DTYPES = ["float32", "bfloat16"]


@dataclasses.dataclass(frozen=True)
class Case:
    """One measurement: a model at one size, dtype and attention implementation."""

    model: str  # "llama" or "mistral"
    dtype: str
    implementation: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    seq_len: int
    sliding_window: Optional[int]
    warmup: int
    repeats: int
    prompt: int
    new_tokens: int
    threads: int
    # True: only the peak memory of the training steps, under MALLOC_MMAP_THRESHOLD_ (see measure)
    memory_only: bool = False


@dataclasses.dataclass
class Result:
    """What a worker measured (NaN where it did not run)."""

    step_ms: float = float("nan")
    peak_mib: float = float("nan")
    model_mib: float = float("nan")
    tokens_per_s: float = float("nan")
    error: str = ""


def model_sizes(model: str, quick: bool) -> Dict[str, object]:
    """The config sizes of ``model`` ("llama" or "mistral"), full or ``--quick``."""
    if quick:
        sizes = dict(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=256)
        sizes.update(seq_len=128 if model == "llama" else 256)
        sizes.update(sliding_window=None if model == "llama" else 32)
        return sizes
    sizes = dict(layers=4, hidden=512, heads=8, kv_heads=2, intermediate=1376, vocab=8192)
    sizes.update(seq_len=2048 if model == "llama" else 8192)
    sizes.update(sliding_window=None if model == "llama" else 512)
    return sizes


# ----------------------------------------------------------------------------------------------
# The worker: one case in a process of its own


def _rss_mib(field: str) -> float:
    """A /proc/self/status field (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_case(case: Case) -> Result:
    """Builds the model and measures one case in this process."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    import mhsa.integrations.transformers

    mhsa.integrations.transformers.register()
    torch.set_num_threads(case.threads)
    torch.manual_seed(0)
    common = dict(
        vocab_size=case.vocab,
        hidden_size=case.hidden,
        intermediate_size=case.intermediate,
        num_hidden_layers=case.layers,
        num_attention_heads=case.heads,
        num_key_value_heads=case.kv_heads,
        max_position_embeddings=max(case.seq_len, case.prompt + case.new_tokens),
        tie_word_embeddings=False,
        attn_implementation=case.implementation,
    )
    if case.model == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        config = MistralConfig(sliding_window=case.sliding_window, **common)
        model = MistralForCausalLM(config)
    model = model.to(getattr(torch, case.dtype)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, case.vocab, (1, case.seq_len))

    def step() -> None:
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    result = Result()
    for _ in range(case.warmup):  # (also creates AdamW's state)
        step()
    gc.collect()
    result.model_mib = _rss_mib("VmRSS:")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets the peak (VmHWM) to the current RSS
    samples = []
    for _ in range(case.repeats):
        start = time.perf_counter()
        step()
        samples.append(time.perf_counter() - start)
    if case.memory_only:
        result.peak_mib = _rss_mib("VmHWM:") - result.model_mib
        return result
    result.step_ms = 1e3 * statistics.median(samples)

    model.eval()
    prompt = torch.randint(0, case.vocab, (1, case.prompt))
    with torch.no_grad():

        def generate(new_tokens: int) -> None:
            model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
            )

        generate(2)  # warm-up
        start = time.perf_counter()
        generate(case.new_tokens)
        result.tokens_per_s = case.new_tokens / (time.perf_counter() - start)
    return result


def worker_main(case_json: str) -> None:
    case = Case(**json.loads(case_json))
    result = run_case(case)
    print("RESULT " + json.dumps(dataclasses.asdict(result)), flush=True)


# ----------------------------------------------------------------------------------------------
# The driver


def _run_worker(case: Case, timeout: float, env: Dict[str, str]) -> Result:
    """Runs ``case`` in a fresh process with ``env`` and reads back its Result."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        json.dumps(dataclasses.asdict(case)),
    ]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Result(error=f"timed out after {timeout:.0f} s")
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return Result(**json.loads(line[len("RESULT ") :]))
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return Result(error=f"exit {done.returncode}: {tail[:200]}")


def measure(case: Case, timeout: float) -> Result:
    """Measures ``case`` in two fresh processes: times with the allocator users run, peak memory
    with large tensors returned to the OS when freed.

    glibc's default keeps freed large blocks for reuse (its mmap threshold grows with them), so
    the peak RSS of a process would count memory that is free. MALLOC_MMAP_THRESHOLD_=65536
    makes RSS follow the live tensors, but then every large tensor is a fresh mmap, page-faulted
    in: about 240 ms more per float32 Llama step for every implementation, which users do not
    pay. So the times come from a process with the default allocator and the peak from another.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(case.threads))
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    result = _run_worker(case, timeout, env)
    if result.error:
        return result
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"  # large tensors go back to the OS when freed
    memory = _run_worker(dataclasses.replace(case, memory_only=True), timeout, env)
    if memory.error:
        return Result(error="peak memory run: " + memory.error)
    result.peak_mib, result.model_mib = memory.peak_mib, memory.model_mib
    return result


def cpu_line() -> str:
    """lscpu's model name and which of avx2, avx512f and the amx flags the CPU has."""
    model, flags = "unknown CPU", set()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        lscpu = ""
    for line in lscpu.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            model = value.strip()
        elif key.strip() == "Flags":
            flags = set(value.split())
    amx = sorted(flag for flag in flags if flag.startswith("amx"))
    shown = [f"avx2: {'yes' if 'avx2' in flags else 'no'}"]
    shown.append(f"avx512f: {'yes' if 'avx512f' in flags else 'no'}")
    shown.append(f"amx: {', '.join(amx) if amx else 'no'}")
    return f"{model} ({'; '.join(shown)})"


def _number(value: float, digits: int = 0) -> str:
    return "-" if value != value else f"{value:,.{digits}f}"


def table(rows: List[tuple]) -> str:
    """The markdown table of (case, result) rows, with each step time relative to sdpa's."""
    sdpa = {(c.model, c.dtype): r.step_ms for c, r in rows if c.implementation == "sdpa"}
    lines = [
        "| model | seq | dtype | attention | train step ms (median) | vs sdpa | peak MiB over model | generate tokens/s |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for case, result in rows:
        name = case.model + (f" (window {case.sliding_window})" if case.sliding_window else "")
        if result.error:
            lines.append(
                f"| {name} | {case.seq_len} | {case.dtype} | {case.implementation} | {result.error} | | | |"
            )
            continue
        reference = sdpa.get((case.model, case.dtype), float("nan"))
        ratio = reference / result.step_ms if reference == reference else float("nan")
        lines.append(
            f"| {name} | {case.seq_len} | {case.dtype} | {case.implementation} "
            f"| {_number(result.step_ms)} | {_number(ratio, 2)}x | {_number(result.peak_mib)} "
            f"| {_number(result.tokens_per_s, 1)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (default 3)")
    parser.add_argument("--prompt", type=int, default=None, help="generation prompt (256)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens generated (64)")
    parser.add_argument("--models", default="llama,mistral", help="comma-separated: llama, mistral")
    parser.add_argument(
        "--implementations", default=",".join(IMPLEMENTATIONS), help="comma-separated"
    )
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated")
    parser.add_argument(
        "--eager-long", action="store_true", help="run eager at mistral's 8192 tokens too"
    )
    parser.add_argument(
        "--timeout", type=float, default=1800, help="seconds per case before giving up"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker)
        return

    repeats = args.repeats or (2 if args.quick else 3)
    prompt = args.prompt or (16 if args.quick else 256)
    new_tokens = args.new_tokens or (8 if args.quick else 64)
    rows = []
    skipped = []
    print(f"CPU: {cpu_line()}; torch threads: {args.threads}", flush=True)
    for model in args.models.split(","):
        sizes = model_sizes(model, args.quick)
        for dtype in args.dtypes.split(","):
            for implementation in args.implementations.split(","):
                case = Case(
                    model=model,
                    dtype=dtype,
                    implementation=implementation,
                    warmup=args.warmup,
                    repeats=repeats,
                    prompt=prompt,
                    new_tokens=new_tokens,
                    threads=args.threads,
                    **sizes,
                )
                if (
                    model == "mistral"
                    and implementation == "eager"
                    and not (args.quick or args.eager_long)
                ):
                    skipped.append(f"{model} {dtype} eager")
                    continue
                result = measure(case, args.timeout)
                print(
                    f"{model} {dtype} {implementation}: "
                    + (
                        result.error
                        or f"{result.step_ms:.0f} ms/step, {result.tokens_per_s:.1f} tokens/s"
                    ),
                    flush=True,
                )
                rows.append((case, result))

    print()
    print(f"CPU: {cpu_line()}; torch threads: {args.threads}")
    print()
    print(table(rows))
    print()
    print(
        f"Training step: forward with labels, backward, AdamW step; median of {repeats} after "
        f"{args.warmup} warm-up. Peak MiB: growth of peak RSS over the model and optimizer "
        f"during the timed steps, in a second process with MALLOC_MMAP_THRESHOLD_=65536 (the "
        f"times come from one with the default allocator). Generation: greedy, KV cache, "
        f"{new_tokens} tokens after a {prompt}-token prompt, batch 1."
    )
    if skipped:
        print(
            f"Skipped (eager's L x L scores at {model_sizes('mistral', args.quick)['seq_len']} "
            f"tokens; --eager-long runs them): {', '.join(skipped)}."
        )


if __name__ == "__main__":
    main()
