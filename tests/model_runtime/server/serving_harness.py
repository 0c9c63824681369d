"""Helpers of the HTTP tests: a real uvicorn server on a free loopback port (in a thread), tiny
random models, keys. Requests go over real sockets, so the tests see what a client sees."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import torch
import uvicorn
from fastapi import FastAPI

from model_runtime.config import PaLMConfig
from model_runtime.engine import Engine
from model_runtime.palm import PaLM
from model_runtime.tokenizer import ChatTokenizer

API_KEY = "test-api-key"
ADMIN_KEY = "test-admin-key"
CORPUS = (
    "The following is a conversation with an AI assistant.\n"
    "Human: Hello, who are you?\nAI: I am an AI. How can I help you today?\n"
    "Café, naïve, thanks for asking.\n"
) * 20


@dataclass
class RunningServer:
    base_url: str
    app: FastAPI
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def engine(self) -> Engine:
        return self.app.state.slot.get()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def start_server(app: FastAPI, *, wait_ready: bool = True) -> RunningServer:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    running = RunningServer(f"http://127.0.0.1:{port}", app, server, thread)
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    while wait_ready and get_json(f"{running.base_url}/healthz")[0] != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("the test server's model did not load")
        time.sleep(0.01)
    return running


ServeFactory = Callable[..., RunningServer]


def tiny_model(tokenizer: ChatTokenizer, seed: int, max_seq_len: int = 256) -> PaLM:
    torch.manual_seed(seed)
    config = PaLMConfig(
        vocab_size=tokenizer.vocab_size,
        dim=32,
        depth=2,
        heads=4,
        dim_head=8,
        max_seq_len=max_seq_len,
        xpos_scale_base=64,
    )
    return PaLM(config).eval()
