"""From a `{serve: NAME}` reference to answers: find the Ray cluster, get the deployment's handle,
retry a call whose replica died, and present the deployment through the interface its node already
uses, so a node swaps a loaded model for a deployment in `setup()` and changes nothing else:

- `ServedClip`: `embed_images`, `embed_texts`, `dim`, `identity` like a `ClipEmbedder`, plus
  `submit_images` for offline jobs that keep several requests in flight;
- `ServedVlm`: a `VlmAdapter`;
- `ServedPolicy`: the part of `ActionExpertPolicy` that `ActionExpertRuntime` uses (the runtime keeps
  the episode state — observation window, waypoint progress — on the caller's side).

A call is retried by sending the same request again. That is safe because every deployment method is
a pure function of its arguments (embeddings of these frames, actions for this observation and seed):
a retry can only produce the answer the lost attempt would have, and the caller stores each answer
once, in the place of the request that asked for it (frames are keyed by their position in the job).
Serve's controller replaces the dead replica meanwhile; requests wait in the handle's router until a
replica is up, so a retry needs no timing of its own beyond a short backoff and an overall deadline.

Ray is imported inside the functions: a graph that never calls a deployment never imports it.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from nodes.serving.config import (DEFAULT_ADDRESS_FILE, KIND_ACTION_EXPERT, KIND_CLIP, KIND_VLM, LOOPBACK,
                                  SERVE_COMMAND, ServeRef, is_loopback)
from nodes.vlm.adapter import VlmAdapter, VlmError, check_generate_args
from pipeline.ray_cluster import pin_loopback

log = logging.getLogger(__name__)

RAY_ADDRESS_ENV = "RAY_ADDRESS"
#: "0" keeps Ray on 127.0.0.1. Ray 2.60 turns `_node_ip_address="127.0.0.1"` into the host's outward
#: address and then listens on every interface; with this variable unset on Linux it never binds loopback
ADDRESS_KEY = "address"
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.05, 2.0
PROBE_TIMEOUT_S = 3.0  # ray.init keeps retrying a dead address for minutes: look first
SEED_HIGH = 2**31 - 1


class ServeUnavailableError(ConnectionError):
    """No Ray cluster or no Serve instance where the reference says to look."""


class MissingDeploymentError(LookupError):
    """The cluster runs Serve, but not the named deployment; the message lists the ones it runs."""

    def __init__(self, name: str, running: list[str]):
        self.name, self.running = name, running
        have = ", ".join(sorted(running)) if running else "none"
        super().__init__(f"no Serve deployment named {name!r} (running: {have}); add it to the models file and "
                         f"start it with `{SERVE_COMMAND}`")


class ServeCallError(RuntimeError):
    """A call that kept failing until its retry deadline (or that the deployment cannot take at all)."""


def retryable_errors() -> tuple[type[BaseException], ...]:
    """What a lost replica or a momentarily full deployment raises; a model's own error is not here."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError

    return RayActorError, ReplicaUnavailableError, BackPressureError


def read_address_file(path: str | Path = DEFAULT_ADDRESS_FILE) -> str | None:
    """The Ray address `groundloop serve` wrote, or None when it is not running here."""
    try:
        return json.loads(Path(path).read_text())[ADDRESS_KEY]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _host_port(address: str) -> tuple[str, int | None]:
    parts = urlsplit(address if "://" in address else f"//{address}")
    return parts.hostname or "", parts.port


def _answers(address: str) -> bool:
    """Whether something listens at a HOST:PORT address (ray.init itself would wait minutes to say no)."""
    host, port = _host_port(address)
    if port is None:
        return True  # not a plain address (e.g. ray://): let Ray judge it
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def use_local_token() -> None:
    """Authenticate with this machine's Ray token (when there is one and RAY_AUTH_MODE does not say
    otherwise): Ray does so by itself only for a cluster it found, never for an address it was given."""
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def connect(address: str | None = None) -> None:
    """Join a Ray cluster unless this process already is in one (a test session, the ray executor).

    Where to look, in order: `address`, RAY_ADDRESS, the address file of a running `groundloop serve`."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get(RAY_ADDRESS_ENV) or read_address_file()
    if address is None:
        raise ServeUnavailableError(f"no Ray cluster to call deployments on: start the models with `{SERVE_COMMAND}` "
                                    f"(it writes {DEFAULT_ADDRESS_FILE}), or give the address as model.address "
                                    f"or {RAY_ADDRESS_ENV}")
    if not _answers(address):
        raise ServeUnavailableError(f"nothing answers at the Ray address {address}: is `{SERVE_COMMAND}` still "
                                    f"running? (an address file it left behind may be stale)")
    local = is_loopback(_host_port(address)[0])
    if local:
        pin_loopback()  # our node address must be the cluster's 127.0.0.1 to find the local raylet
        use_local_token()
    try:
        ray.init(address=address, log_to_driver=False, **({"_node_ip_address": LOOPBACK} if local else {}))
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ServeUnavailableError(f"cannot join the Ray cluster at {address}: {exc}") from exc


def running_deployments() -> list[str]:
    """The applications Serve runs on the joined cluster (ours: one per deployment, named like it)."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        return list(serve.status().applications)
    except RayServeException as exc:
        raise ServeUnavailableError(f"Ray runs, but Serve does not ({exc}); start the models with "
                                    f"`{SERVE_COMMAND}`") from exc


def deployment_handle(ref: ServeRef) -> Any:
    """The DeploymentHandle of `ref.serve`; MissingDeploymentError naming it (and the running ones)."""
    from ray import serve

    connect(ref.address)
    running = running_deployments()
    if ref.serve not in running:
        raise MissingDeploymentError(ref.serve, running)
    return serve.get_app_handle(ref.serve)


def backoff_s(attempt: int) -> float:
    return min(BACKOFF_FIRST_S * 2 ** (attempt - 1), BACKOFF_MAX_S)


class PendingCall:
    """One request in flight; `result()` waits for it and, if its replica died, sends it again.

    `send` makes the request (a `DeploymentResponse`): calling it again is the retry."""

    def __init__(self, send: Callable[[], Any], *, name: str, what: str, retry_timeout_s: float,
                 on_retry: Callable[[], None] | None = None) -> None:
        self.send, self.name, self.what = send, name, what
        self.retry_timeout_s = retry_timeout_s
        self.on_retry = on_retry
        self.started = time.monotonic()
        self.response = send()
        self.done = False
        self.value: Any = None

    def result(self) -> Any:
        if not self.done:
            self.value, self.done = self._wait(), True
            self.response = None
        return self.value

    def _wait(self) -> Any:
        retryable = retryable_errors()
        deadline = self.started + self.retry_timeout_s
        attempt = 0
        while True:
            try:
                return self.response.result(timeout_s=max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                raise ServeCallError(f"deployment {self.name!r}: no answer to {self.what} within "
                                     f"{self.retry_timeout_s:g} s ({attempt} retries)") from None
            except retryable as exc:
                if time.monotonic() >= deadline:
                    raise ServeCallError(f"deployment {self.name!r}: {self.what} still failing after {attempt} "
                                         f"retries over {self.retry_timeout_s:g} s: {exc}") from exc
                attempt += 1
                log.warning("deployment %r: %s lost (%s); sending it again (retry %d)", self.name, self.what,
                            type(exc).__name__, attempt)
                if self.on_retry is not None:
                    self.on_retry()
                time.sleep(backoff_s(attempt))
                self.response = self.send()


class DeploymentClient:
    """A deployment's handle, the retry settings of the reference, and the facts the replica reports."""

    def __init__(self, ref: ServeRef, expected_kind: str, on_retry: Callable[[], None] | None = None) -> None:
        self.ref = ref
        self.name = ref.serve
        self.on_retry = on_retry
        self.handle = deployment_handle(ref)
        self.info: dict[str, Any] = self.call("info", "info")
        if self.info["kind"] != expected_kind:
            raise ServeCallError(f"deployment {self.name!r} serves a {self.info['kind']} model, "
                                 f"not the {expected_kind} this node needs")

    def submit(self, method: str, what: str, *args: Any) -> PendingCall:
        """Start `method(*args)` on a replica; the PendingCall retries it if that replica dies."""
        bound = getattr(self.handle, method)
        return PendingCall(lambda: bound.remote(*args), name=self.name, what=what,
                           retry_timeout_s=self.ref.retry_timeout_s, on_retry=self.on_retry)

    def call(self, method: str, what: str, *args: Any) -> Any:
        return self.submit(method, what, *args).result()


def frames_label(keys: Sequence[int] | None, count: int) -> str:
    """How a log line names a request: by its frame indices when the caller gave them."""
    if keys is None or len(keys) == 0:
        return f"{count} frames"
    return f"frames {keys[0]}..{keys[-1]}" if len(keys) > 1 else f"frame {keys[0]}"


class PendingEmbeddings:
    """The rows of one submitted batch of frames, sent as requests of at most the deployment's batch size."""

    def __init__(self, calls: list[PendingCall], dim: int) -> None:
        self.calls, self.dim = calls, dim

    def result(self) -> np.ndarray:
        """(b, D) float32 unit rows, in the order the frames were given."""
        if not self.calls:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate([call.result() for call in self.calls])


class ServedClip:
    """A CLIP deployment with a `ClipEmbedder`'s interface."""

    def __init__(self, ref: ServeRef, on_retry: Callable[[], None] | None = None) -> None:
        self.client = DeploymentClient(ref, KIND_CLIP, on_retry)
        info = self.client.info
        self.dim: int = info["dim"]
        self.identity: str = info["identity"]  # the served weights': a prescan's cache key is a local run's
        self.max_batch_size: int = info["max_batch_size"]
        self.in_flight: deque[PendingCall] = deque()

    def submit_images(self, images: np.ndarray, keys: Sequence[int] | None = None) -> PendingEmbeddings:
        """Start embedding (B, H, W, 3) uint8 frames; at most `max_in_flight` requests stay outstanding,
        so this waits for the oldest first when the job runs ahead of the replicas. `keys` (frame
        indices) name the requests in log lines."""
        images = np.asarray(images)
        calls = []
        for start in range(0, len(images), self.max_batch_size):
            limit = self.client.ref.max_in_flight
            while self.in_flight and (self.in_flight[0].done or len(self.in_flight) >= limit):
                self.in_flight.popleft().result()
            chunk = images[start:start + self.max_batch_size]
            label = frames_label(None if keys is None else keys[start:start + len(chunk)], len(chunk))
            call = self.client.submit("embed_images", label, chunk)
            self.in_flight.append(call)
            calls.append(call)
        return PendingEmbeddings(calls, self.dim)

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 → (B, D) float32 unit rows."""
        return self.submit_images(images).result()

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """N strings → (N, D) float32 unit rows."""
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a list of strings, got one string")
        return self.client.call("embed_texts", f"{len(texts)} texts", list(texts))


class ServedVlm(VlmAdapter):
    """A VLM deployment as a `VlmAdapter`; a call that fails for good is a VlmError, as the interface says."""

    def __init__(self, ref: ServeRef, on_retry: Callable[[], None] | None = None) -> None:
        self.client = DeploymentClient(ref, KIND_VLM, on_retry)

    def generate(self, images: list[np.ndarray], prompt: str, *, max_new_tokens: int, n_samples: int = 1,
                 temperature: float = 0.0, seed: int = 0) -> list[str]:
        check_generate_args(images, max_new_tokens, n_samples, temperature)
        options = {"max_new_tokens": max_new_tokens, "n_samples": n_samples, "temperature": temperature, "seed": seed}
        try:
            return self.client.call("generate", f"a prompt with {len(images)} images", list(images), prompt, options)
        except ServeCallError as exc:
            raise VlmError(str(exc)) from exc

    def score_answers(self, images: list[np.ndarray], prompt: str, answers: Sequence[str]) -> np.ndarray:
        check_generate_args(images, 1, 1, 0.0)
        try:
            return self.client.call("score_answers", f"{len(answers)} answers to a prompt with {len(images)} images",
                                    list(images), prompt, list(answers))
        except ServeCallError as exc:
            raise VlmError(str(exc)) from exc


class ServedPolicy:
    """What `ActionExpertRuntime` asks of its policy, answered by an action-expert deployment."""

    def __init__(self, ref: ServeRef, on_retry: Callable[[], None] | None = None) -> None:
        from nodes.action_expert.config import ActionExpertConfig

        self.client = DeploymentClient(ref, KIND_ACTION_EXPERT, on_retry)
        self.config = ActionExpertConfig.from_dict(self.client.info["config"])

    def eval(self) -> ServedPolicy:
        return self

    def parameters(self) -> Iterator[Any]:
        """The runtime puts its inputs on its policy's device; a served policy takes them on the CPU."""
        import torch

        yield torch.zeros(0)

    def predict_action(self, obs: dict[str, Any], generator: Any = None) -> Any:
        """(1, To, ...) tensors → (1, Na, Da) actions. The replica's noise seed is drawn from the
        runtime's generator, so an episode's chunks repeat for the same runtime seed."""
        import torch

        seed = int(torch.randint(0, SEED_HIGH, (1,), generator=generator))
        window = {key: value.cpu().numpy() for key, value in obs.items()}
        actions = self.client.call("predict", "an observation window", window, seed)
        return torch.from_numpy(np.asarray(actions))[None]
