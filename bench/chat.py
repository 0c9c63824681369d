"""Chat through the whole stack vs the engine alone: time to first token and tokens/s.

8 concurrent clients each send a message through the web app (uvicorn, Django, htmx POST, then
the SSE stream) and read the answer as it streams; the same 8 requests then go straight to an
in-process engine on the same checkpoint. Target: p50 TTFT through the stack <= 1.5x the
engine's. The last line printed is one JSON object with every figure.

    python bench/chat.py                      # a ~10M random policy built for the run
    python bench/chat.py --policy models/base # a real checkpoint
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from model_runtime.engine.engine import fastest_dtype  # noqa: E402
from model_runtime.engine.passing_thread import run_in_passing_thread  # noqa: E402

PROMPT = "Tell me about rivers and how they shape the land around them."


@dataclass
class StreamTiming:
    ttft_s: float
    total_s: float
    pieces: int
    tokens: int
    send_s: float = 0.0  # the stack: the send POST's answer arrived
    open_s: float = 0.0  # the stack: the SSE stream's headers arrived


def build_policy(directory: Path, *, dim: int, depth: int) -> Path:
    """A random PaLM with a BPE tokenizer trained on the standard library's sources."""
    import torch

    from model_runtime.checkpoints import save_checkpoint
    from model_runtime.config import PaLMConfig
    from model_runtime.palm import PaLM
    from model_runtime.tokenizer import train_tokenizer

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))[:200]
    tokenizer = train_tokenizer(files, 8192)
    torch.manual_seed(0)
    config = PaLMConfig(
        vocab_size=tokenizer.vocab_size, dim=dim, depth=depth, heads=dim // 64, dim_head=64
    )
    model = PaLM(config)
    save_checkpoint(model, directory, tokenizer_json=tokenizer.to_str())
    print(f"built a {model.num_parameters() / 1e6:.1f}M-parameter random policy in {directory}")
    return directory


def web_app_engine_config() -> Any:
    """The EngineConfig the web app serves with (feedback.inference.local)."""
    from model_runtime.engine import EngineConfig

    return EngineConfig(max_batch_size=16, max_queued=64, dtype="auto")


def prompt_ids(tokenizer: Any) -> list[int]:
    """PROMPT as one user turn, ready for the answer."""
    from model_runtime.tokenizer import ChatMessage

    ids: list[int] = tokenizer.encode_chat(
        [ChatMessage("user", PROMPT)], add_generation_prompt=True
    ).ids
    return ids


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) process ``pid`` has used so far; None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(timings: list[StreamTiming], rounds: int = 1) -> dict[str, float]:
    """Percentiles over every request; tokens/s per round (its requests ran together), then
    the median round's."""
    ttfts = [t.ttft_s * 1000 for t in timings]
    size = len(timings) // rounds
    per_round = [timings[i * size : (i + 1) * size] for i in range(rounds)]
    rates = [sum(t.tokens for t in r) / max(t.total_s for t in r) for r in per_round]
    figures = {
        "ttft_p50_ms": round(statistics.median(ttfts), 1),
        "ttft_p90_ms": round(percentile(ttfts, 0.9), 1),
        "tokens": sum(t.tokens for t in timings),
        "aggregate_tokens_per_s": round(statistics.median(rates), 1),
    }
    if any(t.send_s for t in timings):  # where the stack's first-token time goes
        figures["send_p50_ms"] = round(statistics.median(t.send_s * 1000 for t in timings), 1)
        figures["stream_open_p50_ms"] = round(
            statistics.median(t.open_s * 1000 for t in timings), 1
        )
    return figures


# --- the engine alone -------------------------------------------------------------------------


async def engine_alone(
    policy: Path, clients: int, max_tokens: int, rounds: int
) -> list[StreamTiming]:
    from model_runtime.engine import Engine
    from model_runtime.sampling import SamplingParams

    engine = Engine.from_checkpoint(policy, web_app_engine_config())
    prompt = prompt_ids(engine.tokenizer)
    # No end token: every request writes exactly max_tokens, as through the stack.
    params = SamplingParams(temperature=0.0, max_new_tokens=max_tokens)

    async def one() -> StreamTiming:
        started = time.perf_counter()
        first = None
        pieces = 0
        handle = engine.submit(prompt, params)
        async for _ in handle.astream():
            pieces += 1
            first = first or time.perf_counter() - started
        result = await handle.aresult()
        return StreamTiming(
            first or 0.0, time.perf_counter() - started, pieces, result.completion_tokens
        )

    await asyncio.gather(*(one() for _ in range(2)))  # warm-up
    timings: list[StreamTiming] = []
    for _ in range(rounds):
        timings += await asyncio.gather(*(one() for _ in range(clients)))
    engine.close()
    return timings


# --- the whole stack --------------------------------------------------------------------------


UVICORN = ["-m", "uvicorn", "webapp.asgi:application", "--host", "127.0.0.1"]


def start_server(
    env: dict[str, str], port: int, log: Path, command: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``python COMMAND --port PORT`` (the web app by default); wait for /healthz."""
    proc = subprocess.Popen(
        [sys.executable, *(command or UVICORN), "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(log.read_text())


async def through_stack(
    base: str, sessions: list[tuple[str, int]], max_tokens: int, cookie_name: str
) -> list[StreamTiming]:
    import httpx

    # Every page is loaded before anyone sends: the 8 sends then leave together, as the 8
    # requests reach the engine together in the engine-alone run.
    pages_loaded = asyncio.Barrier(len(sessions))

    async def one(session_key: str, conversation_id: int) -> StreamTiming:
        cookies = {cookie_name: session_key}
        async with httpx.AsyncClient(base_url=base, cookies=cookies, timeout=300) as http:
            page = await http.get(f"/chat/{conversation_id}/")
            token = re.search(r'"X-CSRFToken": "([^"]+)"', page.text)
            assert token, "no CSRF token on the chat page"
            await pages_loaded.wait()
            started = time.perf_counter()
            sent = await http.post(
                f"/chat/{conversation_id}/send/",
                data={"text": PROMPT},
                headers={"HX-Request": "true", "X-CSRFToken": token.group(1)},
            )
            sent.raise_for_status()
            send_s = time.perf_counter() - started
            # The answer's first words may ride on the send's response (the page shows them).
            body = re.search(r'class="body streaming" id="msg-\d+-body">([^<]*)<', sent.text)
            first = send_s if body and body.group(1) else None
            stream_url = re.search(r'sse-connect="([^"]+)"', sent.text)
            assert stream_url, sent.text[:500]
            pieces = tokens = 0
            event = ""
            async with http.stream("GET", stream_url.group(1)) as response:
                open_s = time.perf_counter() - started
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        event = line[len("event: ") :]
                        pieces += event == "token"
                    elif event in ("reset", "token") and line.startswith("data: ") and line[6:]:
                        # The first text on screen, if the send's response had none: written
                        # before the stream opened (in the opening "reset"), or the first "token".
                        first = first or time.perf_counter() - started
                    elif event == "done" and (count := re.search(r"(\d+) tokens", line)):
                        tokens = int(count.group(1))  # from the finished message's footer
            total = time.perf_counter() - started
        return StreamTiming(first or 0.0, total, pieces, tokens, send_s, open_s)

    return list(await asyncio.gather(*(one(key, cid) for key, cid in sessions)))


def prepare_database(env: dict[str, str], clients: int, max_tokens: int) -> list[tuple[str, int]]:
    """Users with a session each and a conversation set to write ``max_tokens`` tokens."""
    script = f"""
import json, django
django.setup()
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.auth import SESSION_KEY, BACKEND_SESSION_KEY, HASH_SESSION_KEY
from feedback.models import ChatLimits
from feedback.roles import Role
from feedback.services.accounts import do_set_roles
from feedback.services.chat import do_start_conversation, do_update_sampling
limits = ChatLimits.current(); limits.messages_per_minute = 1000; limits.save()
out = []
for i in range({clients}):
    user, _ = User.objects.get_or_create(username=f"bench{{i}}")
    do_set_roles(user=user, roles={{Role.USER}})
    conversation = do_start_conversation(owner=user)
    do_update_sampling(conversation=conversation, temperature=0.0, max_new_tokens={max_tokens})
    s = SessionStore()
    s[SESSION_KEY] = str(user.pk)
    s[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    s[HASH_SESSION_KEY] = user.get_session_auth_hash()
    s.create()
    out.append((s.session_key, conversation.pk))
print(json.dumps(out))
"""
    for command in (["migrate"], ["collectstatic", "--noinput"]):
        subprocess.run(
            [sys.executable, "manage.py", *command, "-v0"], cwd=ROOT, env=env, check=True
        )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return [tuple(x) for x in json.loads(done.stdout.strip().splitlines()[-1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, help="checkpoint directory (default: build one)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds of CLIENTS requests sent together (5)"
    )
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--remote-engine",
        action="store_true",
        help="the web app streams from the OpenAI-compatible server in its own process "
        "(INFERENCE_URL) instead of an engine inside the web process",
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="palmloop-bench-chat-"))
    # Built in a thread that ends: torch work in the main thread would leave an OpenMP pool
    # behind that slows the engine's scheduler thread (model_runtime/engine/passing_thread.py),
    # which the web process, whose main thread does no torch work, does not suffer either.
    policy = args.policy or run_in_passing_thread(
        lambda: build_policy(work / "policy", dim=args.dim, depth=args.depth), name="build"
    )

    engine = asyncio.run(engine_alone(policy, args.clients, args.max_tokens, args.rounds))

    env = {
        **os.environ,
        "VAR_DIR": str(work / "var"),
        "POLICY_DIR": str(policy),
        # As deployed (DEBUG off: no query log, cached templates), over plain HTTP on loopback.
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "0",
        "SESSION_COOKIE_SECURE": "0",
        "CSRF_COOKIE_SECURE": "0",
        "BEHIND_TLS_PROXY": "0",
        "ENGINE_MAX_BATCH": "16",
        "OMP_NUM_THREADS": "2",
        "STREAM_FLUSH_S": "0.5",
        "DJANGO_SETTINGS_MODULE": "webapp.settings",
    }
    sessions = prepare_database(env, args.clients * args.rounds + 2, args.max_tokens)
    engine_server = None
    if args.remote_engine:
        serve = ["-m", "model_runtime", "serve", "--model", str(policy), "--dtype", "auto"]
        serve += ["--max-batch-size", "16", "--host", "127.0.0.1"]
        engine_server = start_server(env, args.port + 1, work / "engine.log", serve)
        env["INFERENCE_URL"] = f"http://127.0.0.1:{args.port + 1}"
    server = start_server(env, args.port, work / "uvicorn.log")
    try:
        base = f"http://127.0.0.1:{args.port}"
        asyncio.run(through_stack(base, sessions[:2], args.max_tokens, "sessionid"))  # warm-up
        stack: list[StreamTiming] = []
        cpu_before = process_cpu_s(server.pid)
        for round_ in range(args.rounds):  # each round: new conversations, sent together
            mine = sessions[2 + round_ * args.clients : 2 + (round_ + 1) * args.clients]
            stack += asyncio.run(through_stack(base, mine, args.max_tokens, "sessionid"))
        cpu_after = process_cpu_s(server.pid)
    finally:
        for process in (server, engine_server):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)

    if not all(t.tokens for t in stack):
        raise SystemExit("an answer failed; the web log:\n" + (work / "uvicorn.log").read_text())
    engine_figures = summarise(engine, args.rounds)
    stack_figures = summarise(stack, args.rounds)
    if cpu_before is not None and cpu_after is not None:
        # the web process's own work (not its engine's: a child process, or the server's)
        stack_figures["web_cpu_ms_per_answer"] = round(
            (cpu_after - cpu_before) * 1000 / len(stack), 1
        )
    ratio = stack_figures["ttft_p50_ms"] / max(engine_figures["ttft_p50_ms"], 1e-9)
    print(
        f"{args.clients} concurrent clients, {args.max_tokens} tokens each, "
        f"{args.rounds} rounds (percentiles over all {args.clients * args.rounds} requests)"
    )
    print(f"{'':14}{'TTFT p50':>10}{'TTFT p90':>10}{'tok/s':>10}")
    for name, f in (("engine alone", engine_figures), ("whole stack", stack_figures)):
        print(
            f"{name:14}{f['ttft_p50_ms']:>8.0f}ms{f['ttft_p90_ms']:>8.0f}ms"
            f"{f['aggregate_tokens_per_s']:>10.0f}"
        )
    print(
        f"stack p50: send answered at {stack_figures['send_p50_ms']:.0f}ms, stream open at "
        f"{stack_figures['stream_open_p50_ms']:.0f}ms, first token at "
        f"{stack_figures['ttft_p50_ms']:.0f}ms"
    )
    if "web_cpu_ms_per_answer" in stack_figures:
        print(
            f"web process CPU per answer (page, send, stream): "
            f"{stack_figures['web_cpu_ms_per_answer']:.1f} ms"
        )
    print(f"TTFT ratio stack/engine: {ratio:.2f} (target <= 1.5)")
    print(
        json.dumps(
            {
                "bench": "chat",
                "clients": args.clients,
                "rounds": args.rounds,
                "max_tokens": args.max_tokens,
                "policy": str(policy),
                "database": "postgres" if "DATABASE_URL" in os.environ else "sqlite",
                # the web app's own engine runs in its child process unless ENGINE_PROCESS=0
                "engine_process": "serve"
                if args.remote_engine
                else (
                    "web"
                    if os.environ.get("ENGINE_PROCESS", "1").lower() in ("0", "false", "no", "off")
                    else "child"
                ),
                "engine_dtype": str(fastest_dtype("cpu")).removeprefix("torch."),
                "engine": engine_figures,
                "stack": stack_figures,
                "ttft_ratio_stack_over_engine": round(ratio, 2),
                "target_met": ratio <= 1.5,
            }
        )
    )


if __name__ == "__main__":
    main()
