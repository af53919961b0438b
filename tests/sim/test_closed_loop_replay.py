"""The embodied loop recorded on inproc and replayed with the robot replaced: every downstream node —
point cloud, planner, action expert (seeded diffusion noise), controller — gives the recorded outputs
again, in the recorded order, although the replayed robot no longer steps a simulator and the run's
timing is nothing like the live one's."""
import dataclasses

import numpy as np
import pytest

from pipeline.graph import RecordSpec, load_graph
from pipeline.inproc import InprocExecutor
from pipeline.messages import Message
from pipeline.record import recorded_messages
from pipeline.replay import replay_graph
from streaming.recording import read_info

pytestmark = pytest.mark.slow
GRAPH = "configs/pick_cube.yaml"
SHORT = ["env.episodes=1", "env.max_episode_steps=20"]
REPLACED = "env"
def run_recorded(graph, out: str) -> list[tuple[str, Message]]:
    """Run on inproc recording every stream to `out`; the recording's messages, in order."""
    graph.record = RecordSpec(out, [f"{n}/{p}" for n, s in graph.nodes.items() for p in s.cls.outputs])
    InprocExecutor(graph).run(max_seconds=240)
    assert read_info(out).complete
    return [(recorded.stream, message) for recorded, message in recorded_messages(out)]


def content(message: Message) -> dict:
    """Every field, the stamp included; arrays as (dtype, shape, bytes)."""
    out = {}
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        out[f.name] = (value.dtype.str, value.shape, value.tobytes()) if isinstance(value, np.ndarray) else value
    return out


def test_a_replay_with_the_robot_replaced_reproduces_every_downstream_output(tmp_path):
    live = run_recorded(load_graph(GRAPH, SHORT), str(tmp_path / "live.mcap"))
    replayed = run_recorded(replay_graph(GRAPH, tmp_path / "live.mcap", [REPLACED], speed=0, overrides=SHORT),
                            str(tmp_path / "replay.mcap"))
    streams = {stream for stream, _ in live}
    downstream = {s for s in streams if not s.startswith(f"{REPLACED}/")}
    assert downstream == {"cloud/cloud", "planner/waypoints", "expert/actions", "controller/command"}
    assert [(s, m.seq) for s, m in replayed] == [(s, m.seq) for s, m in live]  # the same messages in the same order
    for stream in sorted(streams):
        ours = [content(m) for s, m in live if s == stream]
        theirs = [content(m) for s, m in replayed if s == stream]
        assert ours and ours == theirs, stream
