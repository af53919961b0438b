"""The reference robot server: a ManiSkill task behind the robot bridge, so a graph drives the simulator
across the network exactly as it would drive a real arm (robot/BRIDGE_PROTOCOL.md).

    groundloop keys keys/
    groundloop sim serve-robot --task PickCube-v1 --endpoint tcp://127.0.0.1:5555 --keys keys/
    groundloop eval configs/pick_cube_bridge.yaml --episodes 3          # in another shell or host

`python -m sim.bridge_server ...` takes the same arguments. The server prints one line starting with
READY_LINE once it answers (scripts wait for it), holds the robot and exits cleanly on SIGINT/SIGTERM.
"""
from __future__ import annotations

import argparse
import logging
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from robot.bridge import DEFAULT_HEARTBEAT_S, DEFAULT_WATCHDOG_S
from sim.tasks import PICK_CUBE, TASKS

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"  # loopback unless told otherwise: tcp://0.0.0.0:5555 serves the network
DEFAULT_SERVER_STEPS = 200  # the env's own step limit; a graph's RobotNode ends episodes at its max_episode_steps
READY_LINE = "robot server ready:"
READY_TIMEOUT_S = 120.0  # importing ManiSkill and creating the env: ~6 s idle, much longer on a busy machine


def serve_robot(args: argparse.Namespace) -> int:
    """Create the simulator, serve it until a signal, then hold and close it."""
    from robot.bridge_server import RobotServer
    from sim.maniskill_robot import CameraSpec, ManiSkillRobot

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    camera = CameraSpec(width=args.camera_width, height=args.camera_height)
    robot = ManiSkillRobot(args.task, max_episode_steps=args.max_episode_steps, camera=camera)
    server = RobotServer(robot, args.endpoint, keys_dir=args.keys, insecure=args.insecure,
                         state_endpoint=args.state_endpoint, watchdog_s=args.watchdog_s, heartbeat_s=args.heartbeat_s)

    def stop(signum: int, frame: object) -> None:
        server.stop_event.set()

    def ready(server: RobotServer) -> None:
        print(f"{READY_LINE} {args.task} on {server.endpoint}, state on {server.state_endpoint}, "
              f"{'insecure' if args.insecure else 'CURVE'}", flush=True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve(on_ready=ready)
    return 0


def start_server_process(endpoint: str, keys_dir: str | Path | None, *extra_args: str,
                         timeout_s: float = READY_TIMEOUT_S) -> subprocess.Popen:
    """`serve-robot` in a child process (insecure when `keys_dir` is None), returned once it answers.
    Its log goes to this process's stderr; stop it with `terminate()` (it holds the robot and exits)."""
    security = ["--keys", str(keys_dir)] if keys_dir is not None else ["--insecure"]
    command = [sys.executable, "-m", "sim.bridge_server", "--endpoint", endpoint, *security, *extra_args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if not select.select([process.stdout], [], [], 0.5)[0]:
            continue
        line = process.stdout.readline()
        if line.startswith(READY_LINE):
            return process
        if not line:
            break  # stdout closed: the server is on its way out
    process.kill()
    process.wait()
    raise RuntimeError(f"robot server `{' '.join(command)}` was not ready within {timeout_s:.0f} s "
                       f"(exit code {process.returncode}); its log is above")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The `serve-robot` command (in `groundloop sim` and `python -m sim.bridge_server`)."""
    parser = sub.add_parser("serve-robot", help="serve a ManiSkill task as a robot over the bridge (ZeroMQ, CURVE)")
    configure(parser)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default=PICK_CUBE, choices=sorted(TASKS), help="ManiSkill task")
    parser.add_argument("--endpoint", default=DEFAULT_ENDPOINT,
                        help="command endpoint to bind: tcp://HOST:PORT or ipc://PATH")
    parser.add_argument("--state-endpoint", default=None,
                        help="state endpoint to bind (default: port + 1, or PATH.state)")
    parser.add_argument("--keys", default=None, help="CURVE keys directory (`groundloop keys DIR`); required for tcp")
    parser.add_argument("--insecure", action="store_true", help="plain tcp without CURVE: trusted networks only")
    parser.add_argument("--watchdog-s", type=float, default=DEFAULT_WATCHDOG_S,
                        help="hold the robot after this long without a command")
    parser.add_argument("--heartbeat-s", type=float, default=DEFAULT_HEARTBEAT_S, help="state heartbeat period")
    parser.add_argument("--max-episode-steps", type=int, default=DEFAULT_SERVER_STEPS, help="the env's step limit")
    parser.add_argument("--camera-width", type=int, default=256)
    parser.add_argument("--camera-height", type=int, default=256)
    parser.set_defaults(func=serve_robot)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: `python -m sim.bridge_server --endpoint tcp://127.0.0.1:5555 --keys keys/`."""
    parser = argparse.ArgumentParser(prog="python -m sim.bridge_server", description=__doc__.splitlines()[0])
    configure(parser)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
