"""`groundloop sim ...`: demo generation, the motion-planning oracle, LeRobot export, demo replay, shapes-world videos and grounded-pick stills from the command line.

`register(subparsers)` plugs the `sim` command group into the groundloop CLI (entry-point group
`groundloop.commands`); `python -m sim.cli demos ...` runs the same commands on their own.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sim.bridge_server import add_parser as add_serve_robot
from sim.grounded_stills import DEFAULT_MOVED_PER_SEED, DEFAULT_STEPS_BETWEEN
from sim.grounded_stills import DEFAULT_SIZE as GROUNDED_SIZE
from sim.replay import DEFAULT_THRESHOLD_M
from sim.shapes_world.dataset import ALL, DEFAULT_QUESTIONS_PER_KIND, SPLITS
from sim.shapes_world.referring import DEFAULT_PER_KIND, DEFAULT_SIZE, write_referring_set
from sim.tasks import PICK_CUBE, TASKS

DEFAULT_DEMOS = 200
DEFAULT_SHAPES_VIDEOS = 10


def _demos(args: argparse.Namespace) -> int:
    from sim.dataset import generate_demos

    out = Path(args.out) if args.out else Path("data/demos") / args.task
    meta = generate_demos(args.task, args.n, out, seed_start=args.seed_start, n_points=args.n_points,
                          progress=not args.no_progress)
    seeds = range(args.seed_start, args.seed_start + args.n)
    done = [e for e in meta["episodes"] if e["seed"] in seeds]
    ok = sum(e["success"] for e in done)
    print(f"{args.task}: {ok}/{len(done)} successful demos in {out} ({meta['n_episodes']} episodes in total)")
    return 0


def _oracle(args: argparse.Namespace) -> int:
    from sim.evaluate import evaluate_oracle

    summary = evaluate_oracle(args.task, range(args.seed_start, args.seed_start + args.n))
    if not args.per_seed:
        summary.pop("per_seed")
    print(json.dumps(summary))
    return 0


def _shapes_video(args: argparse.Namespace) -> int:
    from sim.shapes_world.dataset import generate_dataset
    from sim.shapes_world.scene import SceneConfig

    config = SceneConfig(duration_s=args.minutes * 60.0, fps=args.fps, width=args.size, height=args.size)
    report = generate_dataset(args.out, args.n, config, seed_start=args.seed, split=args.split,
                              per_kind=args.questions_per_kind, progress=not args.no_progress)
    print(f"shapes-world videos in {args.out}: {len(report['generated'])} written, {len(report['skipped'])} already there")
    return 0


def _referring_set(args: argparse.Namespace) -> int:
    index = write_referring_set(args.out, args.n, size=args.size, seed_start=args.seed, split=args.split,
                                per_kind=args.per_kind)
    print(f"referring stills in {args.out}: {len(index['scenes'])} written")
    return 0


def _grounded_stills(args: argparse.Namespace) -> int:
    import time

    from sim.grounded_stills import write_grounded_stills

    command = (f"groundloop sim grounded-stills --out {args.out} -n {args.n} --seed {args.seed} --split {args.split} "
               f"--size {args.size} --moved {args.moved} --steps-between {args.steps_between}"
               + (" --no-crop" if args.no_crop else ""))
    every = max(1, args.n // 10)

    def progress(done: int, total: int) -> None:
        if done % every == 0 or done == total:
            print(f"  {done}/{total} seeds, {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)

    start = time.monotonic()
    index = write_grounded_stills(args.out, args.n, seed_start=args.seed, split=args.split, crop=not args.no_crop,
                                  size=args.size, moved_per_seed=args.moved, steps_between=args.steps_between,
                                  command=command, progress=progress)
    seconds = time.monotonic() - start
    print(f"grounded stills in {args.out}: {index['n_stills']} stills of {len(index['seeds'])} {args.split} seeds "
          f"({index['seeds'][0]}..{index['seeds'][-1]}), {args.size}×{args.size}, crop {index['crop']}, "
          f"in {seconds:.1f} s ({seconds / len(index['seeds']):.2f} s/seed)")
    return 0


def _export_lerobot(args: argparse.Namespace) -> int:
    from sim.lerobot_export import export_lerobot

    info = export_lerobot(Path(args.data), Path(args.out), repo_id=args.repo_id, overwrite=args.overwrite)
    print(f"LeRobot v3.0 dataset in {args.out}: {info['total_episodes']} episodes, {info['total_frames']} frames")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from sim.dataset import episode_path, load_episode, load_meta
    from sim.maniskill_robot import ManiSkillRobot
    from sim.replay import REPLAY_MAX_STEPS, replay_episode

    data = Path(args.data)
    task = args.task or load_meta(data)["task"]
    seeds = ([int(s) for s in args.episodes.split(",")] if args.episodes
             else [e["seed"] for e in load_meta(data)["episodes"] if e["file"]])
    robot = ManiSkillRobot(task, max_episode_steps=REPLAY_MAX_STEPS, camera=None)
    robot.connect()
    summaries = []
    try:
        for seed in seeds:
            report = replay_episode(load_episode(episode_path(data, seed)), task, threshold_m=args.threshold,
                                    robot=robot)
            print(f"episode {seed}: {len(report.pos_error)} steps, first step over {args.threshold * 1e3:g} mm: "
                  f"{report.first_exceed}, success recorded {report.recorded_success} replayed {report.replay_success}")
            print(f"{'step':>6} {'pos_err_mm':>11} {'rot_err_mrad':>13}")
            for t in range(0, len(report.pos_error), args.every):
                print(f"{t:>6} {report.pos_error[t] * 1e3:>11.4f} {report.rot_error[t] * 1e3:>13.4f}")
            summaries.append(report.summary())
    finally:
        robot.disconnect()
    print(json.dumps({"task": task, "episodes": summaries}))
    return 0


def _add_task(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default=PICK_CUBE, choices=sorted(TASKS), help="ManiSkill task")


def _add_commands(sub: argparse._SubParsersAction) -> None:
    demos = sub.add_parser("demos", help="generate motion-planning demos (point clouds, ee-delta actions, waypoints)")
    _add_task(demos)
    demos.add_argument("-n", type=int, default=DEFAULT_DEMOS, help="number of seeds to run")
    demos.add_argument("--out", default=None, help="output directory (default data/demos/<task>)")
    demos.add_argument("--seed-start", type=int, default=0)
    demos.add_argument("--n-points", type=int, default=1024, help="points per cloud after farthest-point sampling")
    demos.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    demos.set_defaults(func=_demos)

    oracle = sub.add_parser("oracle", help="success rate of the motion-planning expert (no rendering)")
    _add_task(oracle)
    oracle.add_argument("-n", type=int, default=50, help="number of seeds")
    oracle.add_argument("--seed-start", type=int, default=1000)
    oracle.add_argument("--per-seed", action="store_true", help="include every seed's outcome")
    oracle.set_defaults(func=_oracle)

    export = sub.add_parser("export-lerobot", help="demo directory -> LeRobotDataset v3.0 (parquet, meta, MP4s)")
    export.add_argument("--data", required=True, help="demo directory (groundloop sim demos --out)")
    export.add_argument("--out", required=True, help="output dataset directory")
    export.add_argument("--repo-id", default=None, help="recorded in info.json (default local/<out name>)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    export.set_defaults(func=_export_lerobot)

    replay = sub.add_parser("replay", help="replay demos' actions from their seeds and report the ee-pose divergence")
    replay.add_argument("--data", required=True, help="demo directory (groundloop sim demos --out)")
    replay.add_argument("--episodes", default=None, help="comma-separated seeds (default: every episode with a file)")
    replay.add_argument("--task", default=None, choices=sorted(TASKS), help="ManiSkill task (default: meta.json's)")
    replay.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD_M, help="position error (m) that counts as diverged")
    replay.add_argument("--every", type=int, default=10, help="print every n-th step in the per-episode table")
    replay.set_defaults(func=_replay)

    shapes = sub.add_parser("shapes-video", help="shapes-world QA videos: MP4s, JSON sidecars (timeline, questions), index.json")
    shapes.add_argument("--out", required=True, help="output directory (finished videos in it are skipped)")
    shapes.add_argument("-n", type=int, default=DEFAULT_SHAPES_VIDEOS, help="number of videos")
    shapes.add_argument("--minutes", type=float, default=1.0, help="length of each video")
    shapes.add_argument("--seed", type=int, default=0, help="first seed")
    shapes.add_argument("--split", default=ALL, choices=(*SPLITS, ALL), help="only seeds of this split (every fifth seed is held out)")
    shapes.add_argument("--fps", type=int, default=10)
    shapes.add_argument("--size", type=int, default=224, help="width and height in pixels (even)")
    shapes.add_argument("--questions-per-kind", type=int, default=DEFAULT_QUESTIONS_PER_KIND)
    shapes.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    shapes.set_defaults(func=_shapes_video)

    referring = sub.add_parser("referring-set", help="shapes-world referring-segmentation stills: npz images + "
                                                     "instance masks, index.json with the expressions")
    referring.add_argument("--out", default="data/shapes_referring", help="output directory")
    referring.add_argument("-n", type=int, default=100, help="number of stills")
    referring.add_argument("--size", type=int, default=DEFAULT_SIZE, help="width and height in pixels")
    referring.add_argument("--seed", type=int, default=0, help="first seed")
    referring.add_argument("--split", default=ALL, choices=(*SPLITS, ALL), help="only seeds of this split")
    referring.add_argument("--per-kind", type=int, default=DEFAULT_PER_KIND, help="expressions of each kind per still")
    referring.set_defaults(func=_referring_set)

    grounded = sub.add_parser("grounded-stills", help="GroundedPickCube-v1 camera stills with per-cube label maps "
                                                      "(stills.npz + index.json), for a learned grounder")
    grounded.add_argument("--out", default="data/grounded_stills", help="output directory")
    grounded.add_argument("-n", type=int, default=600, help="number of seeds (each gives 1 + --moved stills)")
    grounded.add_argument("--seed", type=int, default=0, help="first seed")
    grounded.add_argument("--split", default=ALL, choices=(*SPLITS, ALL), help="only seeds of this split (every fifth seed is held out)")
    grounded.add_argument("--size", type=int, default=GROUNDED_SIZE, help="width and height of the stills in pixels")
    grounded.add_argument("--no-crop", action="store_true", help="keep the whole camera frame, not WORKSPACE_CROP")
    grounded.add_argument("--moved", type=int, default=DEFAULT_MOVED_PER_SEED,
                          help="stills per seed after random arm moves, besides the one at reset")
    grounded.add_argument("--steps-between", type=int, default=DEFAULT_STEPS_BETWEEN,
                          help="ee-delta actions before each moved still")
    grounded.set_defaults(func=_grounded_stills)

    add_serve_robot(sub)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `sim` command group (demos, oracle, export-lerobot, replay, shapes-video,
    referring-set, grounded-stills, serve-robot) to a parent CLI."""
    sim = subparsers.add_parser("sim", help="simulation: ManiSkill demos and the oracle, shapes-world videos")
    _add_commands(sim.add_subparsers(dest="sim_command", required=True))


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: `python -m sim.cli demos --task PickCube-v1 -n 200`."""
    parser = argparse.ArgumentParser(prog="python -m sim.cli", description=__doc__.splitlines()[0])
    _add_commands(parser.add_subparsers(dest="sim_command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
