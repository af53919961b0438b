"""CLIP, the shipped VLM and the shipped action expert as Serve deployments in one Ray session: each
answers like the same model in-process, whoever calls and however batched; the nodes that name them
(`model:`, `vlm:`, `checkpoint: {serve: ...}`) work as with a local model; a CLIP replica killed in
the middle of a prescan costs no frame and doubles none; a missing deployment, or one of the wrong
kind, is an error naming it."""
from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from nodes.action_expert.checkpoint import load_policy_checkpoint
from nodes.action_expert.node import ActionExpert
from nodes.clip.cache import EmbeddingCache, cache_key, file_digest
from nodes.clip.embedder import TorchClipEmbedder
from nodes.clip_prescan import ClipPrescan
from nodes.serving.client import SEED_HIGH, MissingDeploymentError, ServeCallError, ServedClip, ServedPolicy
from nodes.serving.config import ActorResources, DeploymentSpec, ModelsConfig, ServeRef
from nodes.shapes_vlm.data import CAPTION_PROMPT
from nodes.video_decode import iter_frames
from nodes.vlm import load_vlm
from pipeline.harness import NodeHarness, TimedInput
from pipeline.messages import PointCloud, RobotState, Waypoints
from tests.nodes.action_expert.conftest import DOWN_WXYZ, camera_pose
from tests.nodes.clip.tiny import build_tiny_clip, write_shapes_clip
from tests.nodes.serving.conftest import TEST_CPUS, free_port

CLIP, VLM, EXPERT = "clip", "vlm", "expert"
VLM_DIR, EXPERT_CKPT = "models/vlm_shapes", "models/action_expert_pickcube.pt"
MAX_BATCH = 8
QUESTION = "Which shape met the red circle?"
MAX_TICKS = 100_000
ATOL = 1e-5
# a batch short of MAX_BATCH frames waits this long for company: the kill test's requests are then
# surely inside the replica (accepted, not yet answered) KILL_DELAY_S after they were sent
BATCH_WAIT_S = 0.3
KILL_DELAY_S = 0.1
KILL_AFTER_FRAMES = 6


SEED = 7
N_CLOUD = 256


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes_clip(tmp_path_factory.mktemp("video") / "shapes.mp4")[0]


@pytest.fixture(scope="module")
def models_config(model_dir: Path) -> ModelsConfig:
    half_a_core = ActorResources(num_cpus=0.5)
    specs = [DeploymentSpec(name=CLIP, kind="clip", checkpoint=str(model_dir), device="cpu", num_threads=1,
                            ray_actor_options=ActorResources(num_cpus=1), max_batch_size=MAX_BATCH,
                            batch_wait_timeout_s=BATCH_WAIT_S, health_check_period_s=1.0),
             DeploymentSpec(name=VLM, kind="vlm", checkpoint=VLM_DIR, device="cpu", dtype="float32",
                            max_batch_size=1, ray_actor_options=half_a_core),
             DeploymentSpec(name=EXPERT, kind="action_expert", checkpoint=EXPERT_CKPT, device="cpu", num_threads=1,
                            max_batch_size=4, batch_wait_timeout_s=0.002, ray_actor_options=half_a_core)]
    return ModelsConfig(num_cpus=TEST_CPUS, http_port=free_port(), deployments=specs)


@pytest.fixture(scope="module")
def local(model_dir: Path) -> TorchClipEmbedder:
    return TorchClipEmbedder(model_dir, device="cpu")


@pytest.fixture(scope="module")
def frames(video: Path) -> np.ndarray:
    return np.stack([image for _, _, image in iter_frames(str(video))])  # (40, 64, 64, 3)


def prescan(params: dict) -> tuple[ClipPrescan, list]:
    """Run the node as a source to its end; the node (for its counters) and what it emitted."""
    harness = NodeHarness(ClipPrescan, params)
    outputs = []
    try:
        for _ in range(MAX_TICKS):
            if harness.runner.finished:
                break
            outputs += [o.message for o in harness.tick()]
    finally:
        harness.close()
    assert harness.runner.finished, "the prescan never finished"
    return harness.node, outputs


def test_served_embeddings_are_the_in_process_ones_whoever_calls_and_however_batched(
        serving: str, local: TorchClipEmbedder, frames: np.ndarray) -> None:
    served = ServedClip(ServeRef(serve=CLIP))
    assert served.dim == local.dim and served.identity == local.identity
    assert served.max_batch_size == MAX_BATCH
    # more frames than one model pass takes: split into requests, put back in order
    np.testing.assert_allclose(served.embed_images(frames[:19]), local.embed_images(frames[:19]), atol=ATOL)
    np.testing.assert_allclose(served.embed_texts([QUESTION, "a blue square"]),
                               local.embed_texts([QUESTION, "a blue square"]), atol=ATOL)
    # callers at once, with 1, 3 or 8 frames of two sizes: @serve.batch shares passes, each gets its own rows
    small = frames[:, ::2, ::2]  # (40, 32, 32, 3)
    requests = [frames[i:i + n] if i % 2 else small[i:i + n] for i, n in enumerate([1, 3, 8, 1, 3, 8, 2, 5])]
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(served.embed_images, requests))
    for request, answer in zip(requests, answers):
        np.testing.assert_allclose(answer, local.embed_images(request), atol=ATOL)


def test_the_prescan_scores_through_the_deployment_as_with_its_own_model(
        serving: str, model_dir: Path, video: Path, tmp_path: Path) -> None:
    common = {"video": str(video), "question": QUESTION, "fps": None, "batch_size": 4,
              "cache_dir": str(tmp_path / "cache")}
    node, (served,) = prescan({**common, "model": {"serve": CLIP}})
    assert node.counters["frames_embedded"] == 40 and node.counters["cache_misses"] == 1
    local_node, (by_local,) = prescan({**common, "model": str(model_dir), "cache_dir": None, "device": "cpu"})
    np.testing.assert_array_equal(served.frame_indices, by_local.frame_indices)
    np.testing.assert_allclose(served.scores, by_local.scores, atol=ATOL)
    # the served model's identity is the local one's: a local run finds the served run's cache entry
    cached_node, (cached,) = prescan({**common, "model": str(model_dir), "device": "cpu"})
    assert cached_node.counters["cache_hits"] == 1
    np.testing.assert_allclose(cached.scores, served.scores, atol=ATOL)


def test_a_replica_killed_mid_prescan_loses_no_frame_and_doubles_none(
        serving: str, local: TorchClipEmbedder, video: Path, frames: np.ndarray, tmp_path: Path) -> None:
    params = {"video": str(video), "question": QUESTION, "fps": None, "batch_size": 2,
              "model": {"serve": CLIP, "max_in_flight": 2}, "cache_dir": str(tmp_path / "cache")}
    harness = NodeHarness(ClipPrescan, params)
    outputs, victim = [], None
    try:
        harness.setup()
        node = harness.node
        for _ in range(MAX_TICKS):
            if harness.runner.finished:
                break
            outputs += [o.message for o in harness.tick()]
            if victim is None and node.counters.get("frames_embedded", 0) >= KILL_AFTER_FRAMES:
                assert node.embedder.in_flight, "nothing in flight to lose"
                time.sleep(KILL_DELAY_S)
                victim = node.embedder.client.info["pid"]
                os.kill(victim, signal.SIGKILL)  # the replica process, mid-job
    finally:
        harness.close()
    assert victim is not None and harness.runner.finished
    assert node.counters["serve_retries"] >= 1  # requests were lost with the replica, and sent again
    (scores,) = outputs
    assert scores.frame_indices.tolist() == list(range(len(frames)))  # every frame, once, in order
    expected = local.embed_images(frames) @ local.embed_texts([QUESTION])[0]
    np.testing.assert_allclose(scores.scores, expected, atol=ATOL)
    key = cache_key(file_digest(video), local.identity, None)
    saved = EmbeddingCache(tmp_path / "cache").load(key)  # the job's embeddings, as it kept them
    assert saved.frame_indices.tolist() == list(range(len(frames)))
    np.testing.assert_allclose(saved.embeddings, local.embed_images(frames), atol=ATOL)
    replacement = ServedClip(ServeRef(serve=CLIP)).client.info["pid"]
    assert replacement != victim  # Serve started a new replica


def test_a_missing_deployment_is_an_error_naming_it_and_the_running_ones(serving: str) -> None:
    with pytest.raises(MissingDeploymentError, match=r"'clap' \(running: clip, expert, vlm\).*groundloop serve"):
        NodeHarness(ClipPrescan, {"question": QUESTION, "model": {"serve": "clap"}}).setup()


def test_a_served_vlm_answers_as_the_checkpoint_does_in_process(serving: str) -> None:
    frame = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    served = load_vlm({"serve": VLM})
    local = load_vlm({"hf": VLM_DIR, "device": "cpu", "dtype": "float32"})
    for options in ({"max_new_tokens": 6}, {"max_new_tokens": 4, "n_samples": 2, "temperature": 1.0, "seed": 3}):
        assert served.generate([frame], CAPTION_PROMPT, **options) == local.generate([frame], CAPTION_PROMPT, **options)
    answers = ["the red circle", "no shape", "B"]
    np.testing.assert_allclose(served.score_answers([frame], CAPTION_PROMPT, answers),
                               local.score_answers([frame], CAPTION_PROMPT, answers), atol=ATOL)
    with pytest.raises(ValueError, match=r"images\[0\]"):  # refused before any request is sent
        served.generate([frame[..., 0]], CAPTION_PROMPT, max_new_tokens=2)


def test_a_served_expert_samples_what_the_checkpoint_samples_for_the_same_seed(serving: str) -> None:
    policy, _ = load_policy_checkpoint(EXPERT_CKPT, device="cpu")
    cfg = policy.config
    rng = np.random.default_rng(1)
    obs = {"state": rng.normal(size=(1, cfg.n_obs_steps, cfg.state_dim)),
           "guidance": rng.normal(size=(1, cfg.n_obs_steps, cfg.guidance_dim)),
           "points": rng.normal(scale=0.1, size=(1, cfg.n_obs_steps, cfg.n_points, 3))}
    obs = {key: torch.from_numpy(value.astype(np.float32)) for key, value in obs.items()}
    served = ServedPolicy(ServeRef(serve=EXPERT))
    assert served.config.to_dict() == cfg.to_dict()
    actions = served.predict_action(obs, generator=torch.Generator().manual_seed(SEED))
    seed = int(torch.randint(0, SEED_HIGH, (1,), generator=torch.Generator().manual_seed(SEED)))
    with torch.inference_mode():
        expected = policy.predict_action(obs, generator=torch.Generator().manual_seed(seed))
    assert actions.shape == (1, cfg.n_action_steps, cfg.action_dim)
    np.testing.assert_allclose(actions.numpy(), expected.numpy(), atol=1e-5)


def _step_inputs(step: int) -> tuple[RobotState, PointCloud]:
    state = RobotState(qpos=np.zeros(9, np.float32), qvel=np.zeros(9, np.float32),
                       ee_pose=np.array([0.0, 0.0, 0.3, *DOWN_WXYZ], np.float32), gripper=1.0, step=step)
    xyz = np.random.default_rng(step).normal([0.0, 0.0, 0.6], 0.05, (N_CLOUD, 3)).astype(np.float32)
    return state, PointCloud(xyz=xyz, T_base_frame=camera_pose(), step=step)


def test_the_expert_node_acts_through_the_deployment_and_repeats_for_its_seed(serving: str) -> None:
    poses = np.array([[0.1, 0.0, 0.6, 1, 0, 0, 0, 1.0], [0.1, 0.0, 0.55, 1, 0, 0, 0, -1.0]], np.float32)
    plan = Waypoints(poses=poses, T_base_frame=camera_pose(), valid=True, reason="")
    runs = []
    for _ in range(2):
        harness = NodeHarness(ActionExpert, {"checkpoint": {"serve": EXPERT}, "seed": SEED})
        (state0, cloud0), (state1, cloud1) = _step_inputs(0), _step_inputs(1)
        out = harness.run([TimedInput(0.00, "waypoints", plan), TimedInput(0.01, "cloud", cloud0),
                           TimedInput(0.02, "state", state0), TimedInput(0.03, "state", state1),
                           TimedInput(0.04, "cloud", cloud1)])
        harness.close()
        assert [o.message.start_step for o in out] == [0, 1]
        runs.append(np.stack([o.message.actions for o in out]))
    assert runs[0].shape == (2, 8, 7) and np.all(np.isfinite(runs[0]))
    np.testing.assert_array_equal(runs[0], runs[1])  # the same seed, the same chunks


def test_a_deployment_of_another_kind_is_refused_by_name(serving: str) -> None:
    with pytest.raises(ServeCallError, match=r"'vlm' serves a vlm model, not the clip"):
        NodeHarness(ClipPrescan, {"question": "q", "model": {"serve": VLM}}).setup()
