"""An OpenAI-compatible chat-completions server (vLLM, llama.cpp, SGLang, a hosted API) as a VlmAdapter.

Standard library only (urllib, zlib): a served model needs no torch in the node's process. Images go as
base64 PNG data URLs in one user turn, images first, then the prompt. `n` asks for several samples in
one request; a server that answers with fewer (llama.cpp ignores `n`) is asked again for the rest, one
request per missing sample at most, so a call makes at most n_samples requests and never loops. A
timeout, a connection failure, an HTTP error status or a malformed body is a VlmError naming the URL
(and the status and the start of the server's message), with no retry: the caller decides when to ask
again.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import struct
import urllib.error
import urllib.request
import zlib
from typing import Any

import numpy as np

from nodes.vlm.adapter import DEFAULT_TIMEOUT_S, VlmAdapter, VlmError, check_generate_args

CHAT_COMPLETIONS_PATH = "/chat/completions"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_BIT_DEPTH, PNG_COLOR_RGB = 8, 2
PNG_FILTER_NONE = 0
PNG_COMPRESSION_LEVEL = 6
PNG_DATA_URL_PREFIX = "data:image/png;base64,"
ERROR_BODY_CHARS = 300  # how much of a server's error body goes into the exception


def encode_png(image: np.ndarray) -> bytes:
    """A lossless PNG of an H×W×3 uint8 RGB image (8-bit truecolour, no filtering)."""
    height, width, _ = image.shape
    rows = np.ascontiguousarray(image, dtype=np.uint8).reshape(height, width * 3)
    scanlines = np.concatenate([np.full((height, 1), PNG_FILTER_NONE, np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, PNG_BIT_DEPTH, PNG_COLOR_RGB, 0, 0, 0)
    return (PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(scanlines, PNG_COMPRESSION_LEVEL))
            + chunk(b"IEND", b""))


def image_data_url(image: np.ndarray) -> str:
    return PNG_DATA_URL_PREFIX + base64.b64encode(encode_png(image)).decode("ascii")


def chat_request(model: str, images: list[np.ndarray], prompt: str, *, max_new_tokens: int, n_samples: int,
                 temperature: float, seed: int) -> dict[str, Any]:
    """The JSON body of one chat-completions request."""
    content = [{"type": "image_url", "image_url": {"url": image_data_url(image)}} for image in images]
    content.append({"type": "text", "text": prompt})
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_new_tokens,
            "n": n_samples, "temperature": temperature, "seed": seed}


def choice_texts(url: str, payload: Any) -> list[str]:
    """The answer texts of a chat-completions response; VlmError if it is not one."""
    try:
        texts = [choice["message"]["content"] for choice in payload["choices"]]
    except (KeyError, TypeError) as exc:
        excerpt = str(payload)[:ERROR_BODY_CHARS]
        raise VlmError(f"POST {url}: not a chat-completions response (missing {exc}): {excerpt}") from None
    if not texts or not all(isinstance(text, str) for text in texts):
        raise VlmError(f"POST {url}: the response has no text answers: {str(payload)[:ERROR_BODY_CHARS]}")
    return texts


class OpenAiVlmAdapter(VlmAdapter):
    """Talks to `{base_url}/chat/completions`; holds no connection between calls."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.url = base_url.rstrip("/") + CHAT_COMPLETIONS_PATH
        self.model = model
        self.timeout_s = timeout_s
        self.headers = {"Content-Type": "application/json"}
        if api_key_env is not None:
            key = os.environ.get(api_key_env)
            if not key:
                raise ValueError(f"vlm.api_key_env: the environment variable {api_key_env} is not set")
            self.headers["Authorization"] = f"Bearer {key}"

    def _post(self, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:ERROR_BODY_CHARS]
            raise VlmError(f"POST {self.url}: HTTP {exc.code} {exc.reason}: {detail}") from None
        except (TimeoutError, socket.timeout):
            raise VlmError(f"POST {self.url}: no answer within {self.timeout_s:g} s (timeout)") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                raise VlmError(f"POST {self.url}: no answer within {self.timeout_s:g} s (timeout)") from None
            raise VlmError(f"POST {self.url}: cannot connect: {exc.reason}") from None
        except (OSError, http.client.HTTPException) as exc:  # the connection broke mid-answer
            raise VlmError(f"POST {self.url}: connection failed: {type(exc).__name__}: {exc}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise VlmError(f"POST {self.url}: the answer is not JSON: {raw[:ERROR_BODY_CHARS]!r}") from None

    def generate(self, images: list[np.ndarray], prompt: str, *, max_new_tokens: int, n_samples: int = 1,
                 temperature: float = 0.0, seed: int = 0) -> list[str]:
        check_generate_args(images, max_new_tokens, n_samples, temperature)
        texts: list[str] = []
        while len(texts) < n_samples:  # each round adds at least one answer or raises: at most n_samples rounds
            body = chat_request(self.model, images, prompt, max_new_tokens=max_new_tokens, n_samples=n_samples - len(texts),
                                temperature=temperature, seed=seed + len(texts))
            texts += choice_texts(self.url, self._post(body))
        return texts[:n_samples]
