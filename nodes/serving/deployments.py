"""The Serve deployment classes: each replica loads one model from its spec and answers handle calls.

- `ClipDeployment.embed_images`: `@serve.batch` over requests of frames; the batch is counted in
  frames (`batch_size_fn`), so callers that send 1, 8 or 32 frames share one model pass of at most
  `max_batch_size` frames, and each caller gets its own rows back.
- `ActionExpertDeployment.predict`: `@serve.batch` over observation windows (one per robot step).
- `VlmDeployment.generate`: one prompt at a time (the adapters have no batched generate).

Model calls run in a worker thread, so the replica's event loop keeps taking requests (and health
checks) while a batch computes. `check_health` fails after `MAX_CONSECUTIVE_FAILURES` model calls in
a row raised something other than a caller's mistake (a poisoned CUDA context, a wedged runtime), and
Serve then replaces the replica. Importing this module imports Ray Serve: only the serving side does.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from ray import serve

from nodes.serving.config import KIND_ACTION_EXPERT, KIND_CLIP, KIND_VLM, DeploymentSpec

MAX_CONSECUTIVE_FAILURES = 3
CALLER_ERRORS = (ValueError, TypeError)  # bad arguments: the request's fault, not the replica's
#: the batch sizes of `serve.batch` are set per deployment in the constructor; these are placeholders
PLACEHOLDER_BATCH, PLACEHOLDER_WAIT_S = 1, 0.0


def frames_in(chunks: list[np.ndarray]) -> int:
    """A CLIP batch's size in frames, not requests: a request carries (b, H, W, 3)."""
    return sum(len(chunk) for chunk in chunks)


class ModelReplica:
    """What every deployment shares: its spec, guarded model calls, and the health check they feed."""

    kind: str

    def __init__(self, spec: DeploymentSpec, batched: Callable | None = None) -> None:
        self.spec = spec
        self.failures = 0
        self.last_error = ""
        if batched is not None:
            batched.set_max_batch_size(spec.max_batch_size)
            batched.set_batch_wait_timeout_s(spec.batch_wait_timeout_s)

    async def run_model(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in a worker thread, counting the failures that are the replica's own."""
        try:
            result = await asyncio.to_thread(fn, *args)
        except CALLER_ERRORS:
            raise
        except Exception as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise
        self.failures = 0
        return result

    def check_health(self) -> None:
        """Called by the Serve controller every `health_check_period_s`; raising gets the replica replaced."""
        if self.failures >= MAX_CONSECUTIVE_FAILURES:
            raise RuntimeError(f"{self.spec.name}: {self.failures} model calls in a row failed; last: {self.last_error}")

    def describe(self) -> dict[str, Any]:
        """What a client needs to know before its first call."""
        return {"name": self.spec.name, "kind": self.kind, "checkpoint": self.spec.checkpoint,
                "max_batch_size": self.spec.max_batch_size, "pid": os.getpid()}


@serve.deployment
class ClipDeployment(ModelReplica):
    """A CLIP embedder (torch or ONNX Runtime) behind `embed_images` (batched) and `embed_texts`."""

    kind = KIND_CLIP

    def __init__(self, spec: DeploymentSpec) -> None:
        from nodes.clip.embedder import load_embedder

        self.embedder = load_embedder(spec.checkpoint, spec.backend, spec.device, spec.num_threads)
        super().__init__(spec, self.embed_images)

    def info(self) -> dict[str, Any]:
        return {**self.describe(), "dim": self.embedder.dim, "identity": self.embedder.identity}

    @serve.batch(max_batch_size=PLACEHOLDER_BATCH, batch_wait_timeout_s=PLACEHOLDER_WAIT_S, batch_size_fn=frames_in)
    async def embed_images(self, chunks: list[np.ndarray]) -> list[np.ndarray]:
        """Each request's (b, H, W, 3) uint8 frames → its (b, D) unit rows, one model pass per frame size."""
        return await self.run_model(self._embed_chunks, chunks)

    def _embed_chunks(self, chunks: list[np.ndarray]) -> list[np.ndarray]:
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, chunk in enumerate(chunks):
            by_shape.setdefault(np.shape(chunk)[1:], []).append(i)
        out: list[np.ndarray | None] = [None] * len(chunks)
        for members in by_shape.values():
            rows = self.embedder.embed_images(np.concatenate([chunks[i] for i in members]))
            bounds = np.cumsum([0] + [len(chunks[i]) for i in members])
            for i, start, stop in zip(members, bounds[:-1], bounds[1:]):
                out[i] = rows[start:stop]
        return out

    async def embed_texts(self, texts: list[str]) -> np.ndarray:
        """N strings → (N, D) unit rows (a question per prescan: not worth batching)."""
        return await self.run_model(self.embedder.embed_texts, texts)


@serve.deployment
class VlmDeployment(ModelReplica):
    """A local Hugging Face VLM behind `generate` and `score_answers`; one prompt at a time per replica."""

    kind = KIND_VLM

    def __init__(self, spec: DeploymentSpec) -> None:
        from nodes.vlm.adapter import load_vlm

        self.vlm = load_vlm({"hf": spec.checkpoint, "device": spec.device, "dtype": spec.dtype})
        self.lock = asyncio.Lock()  # generate seeds torch's global RNG: concurrent calls would share it
        super().__init__(spec)

    def info(self) -> dict[str, Any]:
        return self.describe()

    async def generate(self, images: list[np.ndarray], prompt: str, options: dict[str, Any]) -> list[str]:
        """`VlmAdapter.generate(images, prompt, **options)` on this replica's model."""
        async with self.lock:
            return await self.run_model(lambda: self.vlm.generate(images, prompt, **options))

    async def score_answers(self, images: list[np.ndarray], prompt: str, answers: list[str]) -> np.ndarray:
        """`VlmAdapter.score_answers(images, prompt, answers)` on this replica's model."""
        async with self.lock:
            return await self.run_model(lambda: self.vlm.score_answers(images, prompt, answers))


@serve.deployment
class ActionExpertDeployment(ModelReplica):
    """The action expert's denoiser behind `predict` (batched over robots); the episode state — the
    observation window and waypoint progress — stays with each caller."""

    kind = KIND_ACTION_EXPERT

    def __init__(self, spec: DeploymentSpec) -> None:
        import torch

        from nodes.action_expert.checkpoint import load_policy_checkpoint

        if spec.num_threads is not None:
            torch.set_num_threads(spec.num_threads)
        self.policy, _ = load_policy_checkpoint(spec.checkpoint, device=spec.device)
        self.device = next(self.policy.parameters()).device
        super().__init__(spec, self.predict)

    def info(self) -> dict[str, Any]:
        return {**self.describe(), "config": self.policy.config.to_dict()}

    @serve.batch(max_batch_size=PLACEHOLDER_BATCH, batch_wait_timeout_s=PLACEHOLDER_WAIT_S)
    async def predict(self, observations: list[dict[str, np.ndarray]], seeds: list[int]) -> list[np.ndarray]:
        """Each (1, To, ...) observation window → its (Na, Da) actions. The noise comes from the first
        request's seed: a lone caller's chunks are reproducible, a shared batch's depend on its company."""
        return await self.run_model(self._predict, observations, seeds[0])

    def _predict(self, observations: list[dict[str, np.ndarray]], seed: int) -> list[np.ndarray]:
        import torch

        obs = {key: torch.from_numpy(np.concatenate([o[key] for o in observations])).to(self.device)
               for key in observations[0]}
        generator = torch.Generator(device=self.device).manual_seed(seed)
        with torch.inference_mode():
            actions = self.policy.predict_action(obs, generator=generator)  # (B, Na, Da)
        return list(actions.float().cpu().numpy())


DEPLOYMENTS = {KIND_CLIP: ClipDeployment, KIND_VLM: VlmDeployment, KIND_ACTION_EXPERT: ActionExpertDeployment}


def build_application(spec: DeploymentSpec) -> Any:
    """The Serve application for one spec (one application per deployment, named like it)."""
    return DEPLOYMENTS[spec.kind].options(**spec.deployment_options()).bind(spec)
