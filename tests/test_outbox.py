"""The agent's outbox (outcomes kept until the panel acknowledges them) and its report numbering."""

import json

import pytest

from nodes.agent.envelope import Sequence
from nodes.agent.outbox import Outbox


class Broker:
    """`publish` as the agent's: records what went out, or raises while `down`."""

    def __init__(self):
        self.down = False
        self.sent = []

    def __call__(self, kind, payload, seq):
        if self.down:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        self.sent.append(seq)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def box(tmp_path):
    broker, clock = Broker(), Clock()
    return Outbox(tmp_path / "outbox", broker, retry_after=10, max_delay=60, clock=clock), broker, clock


def test_it_keeps_a_report_on_disk_and_sends_it_at_once(box, tmp_path):
    outbox, broker, _clock = box
    outbox.put("operation", {"operation": 7, "status": "succeeded"}, 41)
    assert broker.sent == [41]
    stored = json.loads((tmp_path / "outbox" / "41.json").read_text())
    assert stored == {"kind": "operation", "payload": {"operation": 7, "status": "succeeded"}, "seq": 41}
    outbox.acked([41, 999])  # an unknown number is ignored
    assert len(outbox) == 0 and not (tmp_path / "outbox" / "41.json").exists()


def test_a_report_put_while_the_broker_is_away_is_kept_and_sent_once_it_is_back(box):
    outbox, broker, clock = box
    broker.down = True
    outbox.put("operation", {"operation": 7, "status": "succeeded"}, 41)  # does not raise
    assert broker.sent == [] and len(outbox) == 1
    assert outbox.flush() == 0  # not due yet
    broker.down = False
    assert outbox.flush(everything=True) == 1 and broker.sent == [41]  # reconnected: all of it, now


def test_unacknowledged_reports_go_again_with_a_growing_delay_until_acknowledged(box):
    outbox, broker, clock = box
    outbox.put("deployment", {"deployment": 1, "state": "healthy"}, 5)
    sent_at = []
    for _ in range(120):  # 120 s of the flush timer ticking every second
        clock.now += 1
        if outbox.flush():
            sent_at.append(clock.now - 1000)
    # 10 s after the first send, then 20 s after that, then 40, then capped at 60.
    assert sent_at[:3] == [10, 30, 70] and len(sent_at) == 3
    outbox.acked([5])
    clock.now += 1000
    assert outbox.flush() == 0 and broker.sent == [5, 5, 5, 5]


def test_it_stops_at_the_first_failure_and_keeps_the_order(box):
    outbox, broker, clock = box
    broker.down = True
    for seq in (3, 1, 2):
        outbox.put("operation", {"operation": seq, "status": "failed"}, seq)
    broker.down = False
    outbox.flush(everything=True)
    assert broker.sent == [1, 2, 3]


def test_what_waited_when_the_agent_stopped_is_sent_by_the_next_one(tmp_path):
    broker = Broker()
    broker.down = True
    first = Outbox(tmp_path / "outbox", broker)
    first.put("operation", {"operation": 9, "status": "succeeded"}, 77)
    (tmp_path / "outbox" / "junk.json").write_text("{not json")  # a torn write is dropped, not fatal
    broker.down = False
    second = Outbox(tmp_path / "outbox", broker)
    assert [e["seq"] for e in second.pending()] == [77]
    assert second.flush() == 1 and broker.sent == [77]  # due at once after a restart
    assert not (tmp_path / "outbox" / "junk.json").exists()


def test_it_is_bounded_and_drops_the_oldest_saying_so(tmp_path, caplog):
    outbox = Outbox(tmp_path / "outbox", Broker(), max_entries=3)
    for seq in range(1, 6):
        outbox.put("operation", {"operation": seq, "status": "failed"}, seq)
    assert [e["seq"] for e in outbox.pending()] == [3, 4, 5]
    assert len(list((tmp_path / "outbox").glob("*.json"))) == 3
    assert "outbox full" in caplog.text


def test_report_numbers_keep_rising_across_restarts_and_a_wiped_state_folder(tmp_path):
    path = tmp_path / "state" / "report-seq"
    first = Sequence(path, now=1_000.0)
    numbers = [first.next() for _ in range(3)]
    assert numbers == sorted(numbers) and numbers[0] > 1_000 * 1_000_000
    again = Sequence(path, now=1_000.0)  # restarted (its clock even went back): continues above the reserved block
    assert again.next() > numbers[-1]
    path.unlink()  # the state folder wiped; a second later the counter still starts above every earlier number
    wiped = Sequence(path, now=1_001.0)
    assert wiped.next() > again.next()
