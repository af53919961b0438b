"""The OpenAI-compatible client against a stub chat-completions server on 127.0.0.1: what it sends, and
clear errors (URL, status) for server errors, timeouts and malformed answers, without retrying."""
from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from nodes.vlm import VlmError, load_vlm
from nodes.vlm.openai_http import PNG_DATA_URL_PREFIX, encode_png

MODEL = "qwen2.5-vl-3b"
PROMPT = "Where is the red cube?"
SLOW_ANSWER_S = 0.5
SHORT_TIMEOUT_S = 0.1


def completion(texts: list[str]) -> dict:
    return {"object": "chat.completion", "choices": [{"index": i, "message": {"role": "assistant", "content": t}}
                                                     for i, t in enumerate(texts)]}


@dataclass
class StubServer:
    """Answers each POST with `answer(body) -> (status, payload bytes)`, recording bodies and headers."""

    url: str = ""
    answer: Callable[[dict], tuple[int, bytes]] = lambda body: (200, json.dumps(completion(["ok"] * body["n"])).encode())
    bodies: list[dict] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[StubServer]:
    stub = StubServer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 — the http.server API
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            stub.bodies.append(body)
            stub.headers.append({"path": self.path, **dict(self.headers)})
            status, payload = stub.answer(body)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:  # the client gave up (timeout test)
                pass

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    stub.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield stub
    httpd.shutdown()
    httpd.server_close()


def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)


def test_the_request_carries_model_base64_png_images_and_n(server, monkeypatch):
    monkeypatch.setenv("STUB_KEY", "secret")
    vlm = load_vlm({"openai": server.url, "model": MODEL, "api_key_env": "STUB_KEY"})
    answers = vlm.generate([image()], PROMPT, max_new_tokens=32, n_samples=3, temperature=0.8, seed=5)
    assert answers == ["ok", "ok", "ok"]
    (body,), (headers,) = server.bodies, server.headers
    assert headers["path"] == "/v1/chat/completions" and headers["Authorization"] == "Bearer secret"
    assert (body["model"], body["n"], body["max_tokens"], body["temperature"], body["seed"]) == (MODEL, 3, 32, 0.8, 5)
    picture, text = body["messages"][0]["content"]
    assert text == {"type": "text", "text": PROMPT}
    url = picture["image_url"]["url"]
    assert picture["type"] == "image_url" and url.startswith(PNG_DATA_URL_PREFIX)
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(url[len(PNG_DATA_URL_PREFIX):]))).convert("RGB"))
    np.testing.assert_array_equal(decoded, image())  # lossless


def test_a_server_that_ignores_n_is_asked_for_the_rest_a_bounded_number_of_times(server):
    server.answer = lambda body: (200, json.dumps(completion([f"seed {body['seed']}"])).encode())  # llama.cpp: one choice
    vlm = load_vlm({"openai": server.url, "model": MODEL})
    answers = vlm.generate([image()], PROMPT, max_new_tokens=8, n_samples=3, temperature=1.0, seed=10)
    assert answers == ["seed 10", "seed 11", "seed 12"]
    assert [b["n"] for b in server.bodies] == [3, 2, 1]


def test_an_http_error_names_the_url_and_status_and_is_not_retried(server):
    server.answer = lambda body: (500, b'{"error": "CUDA out of memory"}')
    vlm = load_vlm({"openai": server.url, "model": MODEL})
    with pytest.raises(VlmError, match=rf"{server.url}/chat/completions: HTTP 500.*CUDA out of memory"):
        vlm.generate([image()], PROMPT, max_new_tokens=8)
    assert len(server.bodies) == 1


def test_a_slow_server_times_out_with_a_clear_error(server):
    def slow(body: dict) -> tuple[int, bytes]:
        time.sleep(SLOW_ANSWER_S)
        return 200, json.dumps(completion(["late"])).encode()

    server.answer = slow
    vlm = load_vlm({"openai": server.url, "model": MODEL, "timeout_s": SHORT_TIMEOUT_S})
    with pytest.raises(VlmError, match=rf"{server.url}/chat/completions: no answer within 0.1 s \(timeout\)"):
        vlm.generate([image()], PROMPT, max_new_tokens=8)
    assert len(server.bodies) == 1


@pytest.mark.parametrize("payload, problem", [(b"<html>oops</html>", "not JSON"), (b'{"choices": []}', "no text answers"),
                                              (b'{"data": 1}', "not a chat-completions response")])
def test_a_malformed_answer_is_a_clear_error(server, payload, problem):
    server.answer = lambda body: (200, payload)
    with pytest.raises(VlmError, match=problem):
        load_vlm({"openai": server.url, "model": MODEL}).generate([image()], PROMPT, max_new_tokens=8)


def test_no_server_is_a_clear_error():
    vlm = load_vlm({"openai": "http://127.0.0.1:9/v1", "model": MODEL, "timeout_s": 2})  # the discard port: refused
    with pytest.raises(VlmError, match=r"http://127.0.0.1:9/v1/chat/completions: cannot connect"):
        vlm.generate([image()], PROMPT, max_new_tokens=8)


def test_an_unset_api_key_variable_is_named(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ValueError, match="NO_SUCH_KEY_VAR"):
        load_vlm({"openai": "http://127.0.0.1:8000/v1", "model": MODEL, "api_key_env": "NO_SUCH_KEY_VAR"})


def test_png_of_one_pixel_decodes():
    pixel = np.array([[[10, 200, 30]]], np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(pixel)))), pixel)
