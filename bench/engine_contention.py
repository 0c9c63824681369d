"""The engine beside Python work: in the same process, or in a process of its own.

Python lets one thread run Python at a time (the GIL), and the engine's scheduler gives it up at
every torch operation of a decoding step, then waits for it again: a thread busy with Python (a
web request being rendered) holds it until it blocks or for up to the switch interval (5 ms), so
each of the step's hundreds of small operations can wait that long. This measures how much: the
engine's time to first token (one request at a time) and decoding rate (8 streams together)
alone; with ``--threads`` threads of Python work in its process; with the same work in another
process (which competes for the cores only); and as the web app runs it
(``model_runtime.engine.process.EngineProcess``: the scheduler in a child process, with its torch
threads leaving one core to the host) beside the threads. The work alternates ``--busy-ms`` of
Python with ``--idle-ms`` of sleep, as a request alternates Python with database round trips
(``--idle-ms 0``: always busy). The last line printed is one JSON object with every figure.

    python bench/engine_contention.py                         # a ~10M random policy
    python bench/engine_contention.py --policy models/base    # a real checkpoint
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from chat import build_policy, prompt_ids, web_app_engine_config  # noqa: E402 (bench/ is the script's folder)

from model_runtime.engine.passing_thread import run_in_passing_thread  # noqa: E402


def python_work(stop: Any, busy_s: float, idle_s: float) -> None:
    """Pure Python (dicts, strings, JSON: what rendering a request costs) for ``busy_s``, then
    ``idle_s`` asleep, until ``stop`` is set."""
    record = {"id": 1, "role": "assistant", "content": "rivers shape the land " * 8}
    while not stop.is_set():
        until = time.perf_counter() + busy_s
        while time.perf_counter() < until:
            json.loads(json.dumps(record))
            "".join(f"<p>{word}</p>" for word in record["content"].split())
        if idle_s:
            time.sleep(idle_s)


@contextmanager
def load(where: str, threads: int, busy_s: float, idle_s: float) -> Iterator[None]:
    """``threads`` workers of :func:`python_work` in this process ("threads"), in another
    process ("process"), or none ("none") while the block runs."""
    if where == "none":
        yield
        return
    if where == "threads":
        stop: Any = threading.Event()
        workers: list[Any] = [
            threading.Thread(target=python_work, args=(stop, busy_s, idle_s), daemon=True)
            for _ in range(threads)
        ]
    else:
        context = multiprocessing.get_context("spawn")
        stop = context.Event()
        workers = [
            context.Process(target=python_work, args=(stop, busy_s, idle_s), daemon=True)
            for _ in range(threads)
        ]
    for worker in workers:
        worker.start()
    time.sleep(0.3)  # a spawned process is up and working
    try:
        yield
    finally:
        stop.set()
        for worker in workers:
            worker.join()


def measure(engine: Any, prompt: list[int], requests: int, streams: int, tokens: int) -> dict:
    """TTFT p50 (ms) of ``requests`` requests sent one at a time, and the aggregate tokens/s of
    ``streams`` requests of ``tokens`` tokens decoded together."""
    from model_runtime.sampling import SamplingParams

    first_only = SamplingParams(temperature=0.0, max_new_tokens=1)
    ttfts = []
    for _ in range(requests):
        started = time.perf_counter()
        handle = engine.submit(prompt, first_only)
        next(iter(handle.stream()))
        ttfts.append((time.perf_counter() - started) * 1000)
        handle.result()
    # No end token: each stream writes exactly ``tokens`` tokens.
    params = SamplingParams(temperature=0.0, max_new_tokens=tokens)
    started = time.perf_counter()
    handles = [engine.submit(prompt, params) for _ in range(streams)]
    written = sum(handle.result().completion_tokens for handle in handles)
    return {
        "ttft_p50_ms": round(statistics.median(ttfts), 1),
        "tokens_per_s": round(written / (time.perf_counter() - started), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, help="checkpoint directory (default: build one)")
    parser.add_argument("--threads", type=int, default=1, help="workers of Python work (1)")
    parser.add_argument("--busy-ms", type=float, default=5.0)
    parser.add_argument("--idle-ms", type=float, default=0.5)
    parser.add_argument("--requests", type=int, default=20, help="one at a time, for TTFT")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument(
        "--switch-interval",
        type=float,
        help="sys.setswitchinterval for this process, in seconds (default: Python's, 0.005)",
    )
    args = parser.parse_args()

    from model_runtime.engine import Engine
    from model_runtime.engine.process import EngineProcess

    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    work = Path(tempfile.mkdtemp(prefix="palmloop-bench-contention-"))
    policy = args.policy or run_in_passing_thread(
        lambda: build_policy(work / "policy", dim=256, depth=8), name="build"
    )
    engine = Engine.from_checkpoint(policy, web_app_engine_config())
    prompt = prompt_ids(engine.tokenizer)

    def run(served: Any = engine) -> dict:
        return measure(served, prompt, args.requests, args.streams, args.tokens)

    run()  # warm-up: every shape the runs below meet
    figures = {}
    for where in ("none", "threads", "process"):
        with load(where, args.threads, args.busy_ms / 1000, args.idle_ms / 1000):
            figures[where] = run()
    engine.close()
    own = EngineProcess(policy, web_app_engine_config())
    run(own)  # warm-up
    with load("threads", args.threads, args.busy_ms / 1000, args.idle_ms / 1000):
        figures["own_process"] = run(own)
    own.close()

    alone = figures["none"]
    print(
        f"{args.threads} worker(s) of {args.busy_ms:g} ms Python / {args.idle_ms:g} ms asleep; "
        f"switch interval {sys.getswitchinterval() * 1000:g} ms"
    )
    print(f"{'load':28}{'TTFT p50':>10}{'tok/s':>9}")
    names = {
        "none": "none",
        "threads": "threads in this process",
        "process": "another process",
        "own_process": "threads; engine in a child",
    }
    for where, name in names.items():
        f = figures[where]
        print(f"{name:28}{f['ttft_p50_ms']:>8.1f}ms{f['tokens_per_s']:>9.0f}")
    ratios = {
        f"{where}_ttft_over_alone": round(figures[where]["ttft_p50_ms"] / alone["ttft_p50_ms"], 2)
        for where in ("threads", "process", "own_process")
    } | {
        f"alone_tok_s_over_{where}": round(
            alone["tokens_per_s"] / figures[where]["tokens_per_s"], 2
        )
        for where in ("threads", "process", "own_process")
    }
    print(
        f"TTFT: {ratios['threads_ttft_over_alone']}x alone's with the work in the engine's "
        f"process, {ratios['process_ttft_over_alone']}x with it in another, "
        f"{ratios['own_process_ttft_over_alone']}x with the engine in a child process"
    )
    print(
        json.dumps(
            {
                "bench": "engine_contention",
                "policy": str(policy),
                "threads": args.threads,
                "busy_ms": args.busy_ms,
                "idle_ms": args.idle_ms,
                "switch_interval_ms": sys.getswitchinterval() * 1000,
                "figures": figures,
                **ratios,
            }
        )
    )


if __name__ == "__main__":
    main()
