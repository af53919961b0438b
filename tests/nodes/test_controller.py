import numpy as np
import pytest

from nodes.controller import WATCHDOG_DEADLINE_S, Controller
from pipeline.graph import GraphError, build_graph
from pipeline.harness import NodeHarness, TimedInput
from pipeline.messages import ActionChunk, EStop, RobotState


def state(step, episode=0, z=0.2):
    return RobotState(qpos=np.zeros(9, np.float32), qvel=np.zeros(9, np.float32),
                      ee_pose=np.array([0.3, 0.0, z, 1, 0, 0, 0], np.float32), episode=episode, step=step)


def chunk(start, values, episode=0):
    actions = np.zeros((len(values), 7), np.float32)
    actions[:, 0] = values
    actions[:, 6] = 1.0
    return ActionChunk(actions=actions, stamps_ns=np.zeros(len(values), np.int64), start_step=start, episode=episode)


def commands(outputs):
    return [(o.message.step, round(float(o.message.action[0]), 4), o.message.hold, o.message.reason) for o in outputs]


def test_one_command_per_state_from_the_covering_chunk():
    harness = NodeHarness(Controller)
    out = harness.run([TimedInput(0.00, "actions", chunk(0, [0.1, 0.2, 0.3])),
                       TimedInput(0.01, "state", state(0)), TimedInput(0.02, "state", state(1))])
    assert commands(out) == [(0, 0.1, False, ""), (1, 0.2, False, "")]


def test_a_state_waits_for_its_chunk_then_overlapping_chunks_are_blended():
    harness = NodeHarness(Controller, {"new_weight": 0.7})
    out = harness.run([TimedInput(0.00, "state", state(0)),  # no plan yet: wait, do not hold at once
                       TimedInput(0.05, "actions", chunk(0, [0.1, 0.1, 0.1])),
                       TimedInput(0.06, "actions", chunk(1, [0.3, 0.3])),
                       TimedInput(0.07, "state", state(1))])
    assert commands(out) == [(0, 0.1, False, ""), (1, round(0.3 * 0.1 + 0.7 * 0.3, 4), False, "")]


def test_the_watchdog_holds_when_no_fresh_plan_arrives():
    harness = NodeHarness(Controller)
    out = harness.run([TimedInput(0.0, "actions", chunk(0, [0.1])), TimedInput(0.01, "state", state(0)),
                       TimedInput(0.02, "state", state(1))], until_s=1.0)
    assert commands(out)[1] == (1, 0.0, True, "watchdog")
    assert out[1].t_s == pytest.approx(WATCHDOG_DEADLINE_S)
    assert harness.metrics["counters"] == {"hold_watchdog": 1}


def test_estop_holds_until_released():
    harness = NodeHarness(Controller)
    out = harness.run([TimedInput(0.0, "actions", chunk(0, [0.1, 0.1, 0.1])), TimedInput(0.01, "estop", EStop(reason="button")),
                       TimedInput(0.02, "state", state(0)), TimedInput(0.03, "estop", EStop(engaged=False)),
                       TimedInput(0.04, "state", state(1))])
    assert [c[2:] for c in commands(out)] == [(True, "estop"), (False, "")]


def test_nan_chunks_are_rejected_and_clamps_counted():
    harness = NodeHarness(Controller)
    bad = chunk(0, [np.nan, 0.1])
    out = harness.run([TimedInput(0.0, "actions", bad), TimedInput(0.01, "actions", chunk(0, [5.0])),
                       TimedInput(0.02, "state", state(0))])
    assert harness.metrics["counters"]["rejected_chunks"] == 1
    assert harness.metrics["counters"]["clamp_max_step_m"] == 1
    assert np.linalg.norm(out[0].message.action[:3]) == pytest.approx(0.5)  # 0.05 m at 0.1 m per unit


def test_stale_episodes_are_ignored():
    harness = NodeHarness(Controller)
    out = harness.run([TimedInput(0.0, "state", state(0, episode=1)), TimedInput(0.01, "actions", chunk(0, [0.1], episode=0))])
    assert out == [] and harness.metrics["counters"] == {"stale_chunks": 1}


def test_a_graph_cannot_lengthen_or_remove_the_watchdog():
    raw = {"name": "c", "nodes": [
        {"id": "c", "uses": "nodes.controller.Controller", "inputs": {"actions": {"from": "c2/command", "timeout": 5.0}}},
    ]}
    with pytest.raises(GraphError):
        build_graph(raw, "c.yaml")
    with pytest.raises(Exception, match="looser"):
        NodeHarness(Controller, {"max_step_m": 2.0}).setup()
