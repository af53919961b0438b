"""Edge protocol and security, with real sockets in one process."""
import time

import pytest
import zmq

from streaming.security import generate_keys, load_keys, start_authenticator
from streaming.transport import EdgeConfig, InputEdge, Publisher, Subscriber


def _pump_until(condition, publisher, subscribers, seconds=3.0):
    deadline = time.monotonic() + seconds
    received = {id(s): [] for s in subscribers}
    while time.monotonic() < deadline and not condition(received):
        publisher.pump(10)
        for subscriber in subscribers:
            subscriber.maybe_hello()
            for socket in subscriber.sockets.values():
                for edge, seq, frames in subscriber.receive(socket):
                    received[id(subscriber)].append(seq)
                    subscriber.ack(edge, processed=seq)
    return received


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.term()


def test_lossless_edge_resends_unprocessed_messages_to_a_restarted_consumer(context, tmp_path):
    endpoint = f"ipc://{tmp_path}/p.sock"
    publisher = Publisher(context, endpoint, [EdgeConfig("p/out->c/in", "out", "c", True, 4, 0)])
    edge = [InputEdge("p/out->c/in", "p", 0)]
    first = Subscriber(context, "c", "life-1", {"p": endpoint}, edge, {})
    _pump_until(lambda r: publisher.edges["p/out->c/in"].incarnation, publisher, [])
    for seq in range(3):
        publisher.publish("out", seq, [b"x"])
    got = []
    deadline = time.monotonic() + 3
    while len(got) < 3 and time.monotonic() < deadline:
        publisher.pump(10)
        for socket in first.sockets.values():
            got += [seq for _, seq, _ in first.receive(socket)]
    assert got == [0, 1, 2]
    first.ack("p/out->c/in", processed=0)  # it processed 0, then died with 1 and 2 in its queue
    publisher.pump(50)
    first.close()
    second = Subscriber(context, "c", "life-2", {"p": endpoint}, edge, {"p/out->c/in": 0})
    received = _pump_until(lambda r: len(r[id(second)]) >= 2, publisher, [second])
    assert received[id(second)] == [1, 2]
    second.close()
    publisher.close()


def test_curve_refuses_clients_without_an_authorised_key(context, tmp_path):
    keys = load_keys(generate_keys(tmp_path / "keys"))
    stranger = load_keys(generate_keys(tmp_path / "stranger"))
    authenticator = start_authenticator(context, keys)
    edges = [EdgeConfig(f"p/out->{c}/in", "out", c, False, 2, i) for i, c in enumerate(("friend", "intruder", "plain"))]
    publisher = Publisher(context, "tcp://127.0.0.1:0", edges, curve_secret_key=keys.server_secret)
    friend = Subscriber(context, "friend", "1", {"p": publisher.endpoint}, [InputEdge("p/out->friend/in", "p", 0)], {},
                        (keys.server_public, keys.client_public, keys.client_secret))
    intruder = Subscriber(context, "intruder", "1", {"p": publisher.endpoint}, [InputEdge("p/out->intruder/in", "p", 1)], {},
                          (keys.server_public, stranger.client_public, stranger.client_secret))
    plain = Subscriber(context, "plain", "1", {"p": publisher.endpoint}, [InputEdge("p/out->plain/in", "p", 2)], {})
    subscribers = [friend, intruder, plain]
    _pump_until(lambda r: publisher.edges["p/out->friend/in"].incarnation, publisher, subscribers)
    publisher.publish("out", 0, [b"secret"])
    received = _pump_until(lambda r: r[id(friend)], publisher, subscribers, seconds=2.0)
    assert received[id(friend)] == [0]
    assert received[id(intruder)] == [] and received[id(plain)] == []
    assert publisher.edges["p/out->intruder/in"].incarnation is None  # their HELLO never got through
    assert publisher.edges["p/out->plain/in"].incarnation is None
    for subscriber in subscribers:
        subscriber.close()
    publisher.close()
    authenticator.stop()
