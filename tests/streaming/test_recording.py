"""Recording files: bit-exact round trips, embedded schemas, and surviving a SIGKILLed writer."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from mcap.reader import make_reader

from pipeline.messages import (ActionChunk, Answer, Blob, Command, EStop, Frame, FrameScores, Mask, Message, PointCloud,
                               RobotState, Selection, Tick, Waypoints)
from pipeline.record import message_schema
from streaming.codec import Payload
from streaming.recording import (MESSAGE_ENCODING, SCHEMA_ENCODING, RecordingError, RecordingWriter, pack_frames,
                                 read_info, read_messages, repair, unpack_frames)

RNG = np.random.default_rng(7)
KILL_AFTER_BYTES = 400_000  # the writer below has closed several chunks by then
WAIT_S = 60.0


def every_message_type() -> list[Message]:
    """One message of every type in the vocabulary, with large arrays where the type has them."""
    image = RNG.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    odd = np.array([np.nan, -0.0, np.inf, 1e-310], np.float64)
    odd.view(np.uint64)[0] |= np.uint64(0xDEAD)  # a NaN with a payload: only a bit-exact copy keeps it
    return [
        Tick(stream="a/tick", seq=3, value=41),
        Blob(stream="a/blob", seq=0, data=odd),
        Frame(stream="env/frame", seq=1, frame_id="cam", image=image, intrinsics=np.eye(3),
              depth=RNG.random((480, 640), np.float32), segmentation=RNG.integers(0, 9, (480, 640), dtype=np.int32),
              segment_names={1: "cube", 2: "table"}, T_base_frame=np.eye(4), episode=2, step=5),
        FrameScores(stream="clip/scores", frame_indices=np.arange(50), times_s=np.linspace(0, 5, 50),
                    scores=RNG.random(50, np.float32), query="a red cube"),
        Selection(stream="air/selection", frame_indices=np.array([3, 9]), spans_s=np.array([[0.1, 0.9]]), reasons=["x"]),
        Mask(stream="sam/mask", masks=RNG.random((2, 64, 64)) > 0.5, scores=np.ones(2, np.float32), labels=["a", "b"]),
        PointCloud(stream="cloud/cloud", xyz=RNG.standard_normal((300_000, 3)).astype(np.float32),
                   rgb=RNG.integers(0, 256, (300_000, 3), dtype=np.uint8), is_target=np.zeros(300_000, bool)),
        Waypoints(stream="planner/waypoints", poses=RNG.random((3, 8), np.float32), names=["pre", "grasp", "lift"]),
        ActionChunk(stream="expert/actions", actions=RNG.random((16, 7), np.float32), stamps_ns=np.arange(16) * 50),
        RobotState(stream="env/state", qpos=RNG.random(9, np.float32), qvel=np.zeros(9, np.float32),
                   ee_pose=np.array([0, 0, 0.3, 1, 0, 0, 0], np.float32), done=True),
        Command(stream="controller/command", action=np.ones(7, np.float32)[::2], hold=True, reason="stale"),
        EStop(stream="ops/estop", reason="button"),
        Answer(stream="qa/answer", question="what?", answer="cube", choice=1, spans_s=np.array([[1.0, 2.0]])),
    ]


def assert_same(a: Message, b: Message) -> None:
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), f.name
        else:
            assert x == y, f.name


@pytest.mark.parametrize("compression", ["zstd", "lz4"])
def test_every_message_type_round_trips_bit_exact(tmp_path, compression):
    messages = every_message_type()
    path = tmp_path / "run.mcap"
    with RecordingWriter(path, compression=compression, chunk_bytes=1_000_000) as writer:
        for i, message in enumerate(messages):
            writer.write(message.to_payload(), message.stream, message.stamp_ns, 1000 + i, message.seq,
                         message_schema(type(message)))
    recorded = list(read_messages(path))
    assert [r.stream for r in recorded] == [m.stream for m in messages]
    assert [r.log_time_ns for r in recorded] == [m.stamp_ns for m in messages]  # log_time is the capture stamp
    assert [r.publish_time_ns for r in recorded] == [1000 + i for i in range(len(messages))]
    for original, r in zip(messages, recorded):
        assert_same(original, Message.from_payload(r.payload()))
    assert [r.stream for r in read_messages(path, {"env/frame", "env/state"})] == ["env/frame", "env/state"]


def test_schemas_and_channels_are_embedded_for_other_tools(tmp_path):
    path = tmp_path / "run.mcap"
    with RecordingWriter(path) as writer:
        for message in every_message_type():
            writer.write(message.to_payload(), message.stream, message.stamp_ns, schema=message_schema(type(message)))
    with open(path, "rb") as f:  # the mcap library's own reader, as Foxglove or Rerun would read it
        summary = make_reader(f).get_summary()
    schemas = {s.name: s for s in summary.schemas.values()}
    assert {s.encoding for s in schemas.values()} == {SCHEMA_ENCODING}
    assert {c.message_encoding for c in summary.channels.values()} == {MESSAGE_ENCODING}
    assert summary.statistics.chunk_count >= 2  # chunked: the frame and the cloud overflow one chunk
    frame = json.loads(schemas["Frame"].data)
    assert frame["properties"]["image"]["x-ndarray"] == {} and "index" in frame["properties"]
    assert frame["properties"]["intrinsics"]["anyOf"][1] == {"type": "null"}
    info = read_info(path)
    assert info.complete and info.streams["env/frame"] == "Frame" and info.counts["env/frame"] == 1
    assert set(info.schemas) == {type(m).__name__ for m in every_message_type()}


def test_a_schema_is_read_off_the_payload_when_none_is_given(tmp_path):
    path = tmp_path / "raw.mcap"
    with RecordingWriter(path) as writer:
        writer.write(Payload("Raw", {"n": 1, "name": "x"}, {"v": np.zeros((2, 3), np.int16)}), "raw/out", 5)
    schema = read_info(path).schemas["Raw"]
    assert schema["properties"]["n"] == {"type": "integer"}
    assert schema["properties"]["v"]["x-ndarray"] == {"dtype": "<i2", "ndim": 2}


def test_packed_frames_round_trip_and_reject_garbage():
    frames = [b"head", b"", np.arange(5, dtype=np.uint8)]
    assert [bytes(f) for f in unpack_frames(pack_frames(frames))] == [b"head", b"", bytes(range(5))]
    with pytest.raises(RecordingError):
        unpack_frames(pack_frames(frames)[:-1])
    with pytest.raises(RecordingError, match="compression"):
        RecordingWriter("/tmp/never.mcap", compression="gzip")


WRITER_SCRIPT = """
import sys, numpy as np
from streaming.codec import Payload
from streaming.recording import RecordingWriter
writer = RecordingWriter(sys.argv[1], chunk_bytes=64_000)
i = 0
while True:
    data = np.full(10_000, i % 251, np.uint8)
    writer.write(Payload("Blob", {"stream": "src/blob", "seq": i}, {"data": data}), "src/blob", 1_000 + i)
    i += 1
"""


def test_a_sigkilled_recorder_leaves_a_readable_file_and_repair_completes_it(tmp_path):
    path = tmp_path / "killed.mcap"
    process = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(path)], cwd=os.getcwd())
    try:
        deadline = time.monotonic() + WAIT_S
        while not (path.exists() and path.stat().st_size > KILL_AFTER_BYTES):
            assert process.poll() is None and time.monotonic() < deadline, "the writer did not get going"
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    info = read_info(path)
    assert not info.complete  # no summary, no footer
    seqs = [r.payload().fields["seq"] for r in read_messages(path)]
    assert seqs and seqs == list(range(len(seqs)))  # everything up to the last intact chunk, in order
    report = repair(path)
    assert report.messages == len(seqs) and not report.was_complete
    with open(path, "rb") as f:
        reader = make_reader(f)
        assert reader.get_summary().statistics.message_count == len(seqs)
        assert sum(1 for _ in reader.iter_messages()) == len(seqs)
    assert read_info(path).complete
    last = list(read_messages(path))[-1].payload()
    assert last.arrays["data"][0] == (len(seqs) - 1) % 251


def test_repair_of_a_complete_file_keeps_everything(tmp_path):
    path = tmp_path / "ok.mcap"
    with RecordingWriter(path) as writer:
        writer.add_metadata("run", {"k": "v"})
        for i in range(5):
            writer.write(Payload("Tick", {"seq": i, "value": i}), "a/tick", i)
    report = repair(path, tmp_path / "copy.mcap")
    assert report.was_complete and report.messages == 5 and report.dropped_bytes == 0
    assert [r.log_time_ns for r in read_messages(report.path)] == list(range(5))
    with open(report.path, "rb") as f:
        assert [m.metadata for m in make_reader(f).iter_metadata()] == [{"k": "v"}]
