"""Shapes-world benchmarks on disk: an MP4 and a JSON sidecar per seed, and an index; resumable.

Layout: `DIR/shapes_<seed>.mp4`, `DIR/shapes_<seed>.json` (the scene's timeline, its questions and
the split), `DIR/index.json`. A video counts as finished when its sidecar exists, was made with the
same settings and the video has the byte size the sidecar recorded: the video is renamed into place
when complete and the sidecar is written after it, so an interrupted run leaves nothing that looks
finished, and a rerun skips what is done. Splits are by seed (every fifth seed is held out), so a
held-out scene is never a training scene.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sim.shapes_world.questions import make_questions
from sim.shapes_world.render import write_video
from sim.shapes_world.scene import SceneConfig, make_scene

SIDECAR_SCHEMA = "groundloop.shapes_world.v1"
INDEX_NAME = "index.json"
VIDEO_SUFFIX = ".mp4"
SIDECAR_SUFFIX = ".json"
TRAIN, HELDOUT, ALL = "train", "heldout", "all"
SPLITS = (TRAIN, HELDOUT)
HELDOUT_EVERY = 5  # seeds with seed % 5 == 4 are held out
DEFAULT_QUESTIONS_PER_KIND = 3


def split_of(seed: int) -> str:
    return HELDOUT if seed % HELDOUT_EVERY == HELDOUT_EVERY - 1 else TRAIN


def seeds_for(split: str, n: int, start: int = 0) -> list[int]:
    """The first `n` seeds from `start` on that belong to `split` (ALL: simply start .. start + n - 1)."""
    if split not in (*SPLITS, ALL):
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join((*SPLITS, ALL))}")
    seeds: list[int] = []
    seed = start
    while len(seeds) < n:
        if split == ALL or split_of(seed) == split:
            seeds.append(seed)
        seed += 1
    return seeds


def stem(seed: int) -> str:
    return f"shapes_{seed:06d}"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1))
    os.replace(partial, path)


def _settings(config: SceneConfig, per_kind: int) -> dict[str, Any]:
    return {"config": asdict(config), "questions_per_kind": per_kind}


def _entry(sidecar: dict[str, Any]) -> dict[str, Any]:
    """The index's line for one finished video."""
    return {"seed": sidecar["seed"], "split": sidecar["split"], "video": sidecar["video"],
            "sidecar": stem(sidecar["seed"]) + SIDECAR_SUFFIX, "duration_s": sidecar["duration_s"],
            "n_frames": sidecar["n_frames"], "n_events": len(sidecar["events"]), "n_questions": len(sidecar["questions"])}


def finished(out: Path, seed: int, config: SceneConfig, per_kind: int) -> dict[str, Any] | None:
    """The sidecar of a finished video for these settings, else None."""
    sidecar_path, video_path = out / (stem(seed) + SIDECAR_SUFFIX), out / (stem(seed) + VIDEO_SUFFIX)
    if not (sidecar_path.is_file() and video_path.is_file()):
        return None
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = {k: sidecar.get(k) for k in ("config", "questions_per_kind")} == _settings(config, per_kind)
    return sidecar if same and sidecar.get("video_bytes") == video_path.stat().st_size else None


def generate_video(out: str | Path, seed: int, config: SceneConfig,
                   per_kind: int = DEFAULT_QUESTIONS_PER_KIND) -> dict[str, Any]:
    """Script, render and ask about one scene; writes the MP4, then its sidecar. The sidecar."""
    out = Path(out)
    scene = make_scene(config, seed)
    video_path = write_video(scene, out / (stem(seed) + VIDEO_SUFFIX))
    timeline = scene.to_json()
    sidecar = {
        "schema": SIDECAR_SCHEMA, "seed": seed, "split": split_of(seed), "video": video_path.name,
        "video_bytes": video_path.stat().st_size, **_settings(config, per_kind),
        "fps": config.fps, "width": config.width, "height": config.height,
        "n_frames": config.n_frames, "duration_s": config.n_frames / config.fps,
        "actors": timeline["actors"], "events": timeline["events"],
        "questions": [q.to_json() for q in make_questions(scene, per_kind)],
    }
    _write_json(out / (stem(seed) + SIDECAR_SUFFIX), sidecar)
    return sidecar


def _load_index(path: Path) -> dict[str, dict[str, Any]]:
    try:
        return {v["video"]: v for v in json.loads(path.read_text())["videos"]}
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return {}


def generate_dataset(out: str | Path, n: int, config: SceneConfig, *, seed_start: int = 0, split: str = ALL,
                     per_kind: int = DEFAULT_QUESTIONS_PER_KIND, progress: bool = True) -> dict[str, list[int]]:
    """`n` videos of `split` from `seed_start` on, skipping finished ones. DIR/index.json is rewritten
    after every video, merged with what an earlier run listed there. The seeds generated and skipped."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / INDEX_NAME
    entries = _load_index(index_path)
    report: dict[str, list[int]] = {"generated": [], "skipped": []}
    bar = tqdm(seeds_for(split, n, seed_start), desc="shapes videos", unit="video", disable=not progress)
    for seed in bar:
        sidecar = finished(out, seed, config, per_kind)
        report["skipped" if sidecar is not None else "generated"].append(seed)
        if sidecar is None:
            sidecar = generate_video(out, seed, config, per_kind)
        entries[sidecar["video"]] = _entry(sidecar)
        _write_json(index_path, {"schema": SIDECAR_SCHEMA, "videos": sorted(entries.values(), key=lambda v: v["seed"])})
        bar.set_postfix(skipped=len(report["skipped"]))
    return report
