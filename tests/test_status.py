from datetime import timedelta

import pytest
from django.utils import timezone

from nodes.models import Node, StatusChange
from nodes.tasks import check_node_status
from tests.helpers import make_node

pytestmark = pytest.mark.django_db

INTERVAL = 5.0


def seen_ago(node, seconds, now):
    node.last_seen = now - timedelta(seconds=seconds)
    Node.objects.filter(pk=node.pk).update(last_seen=node.last_seen)


@pytest.fixture
def now():
    return timezone.now()


@pytest.fixture
def rig():
    node, _token = make_node("alpha", telemetry_interval=INTERVAL)
    return node


def test_it_calls_a_rig_that_never_reported_new(rig, now):
    assert rig.status_at(now) == Node.NEW
    assert rig.status_at(now + timedelta(days=30)) == Node.NEW


@pytest.mark.parametrize(
    "age_in_intervals, expected",
    [
        (0, Node.ONLINE),
        (1, Node.ONLINE),
        (1.9, Node.ONLINE),
        (2.2, Node.STALE),
        (4.9, Node.STALE),
        (5.2, Node.OFFLINE),
        (1000, Node.OFFLINE),
    ],
)
def test_it_goes_stale_after_two_missed_intervals_and_offline_after_five(rig, now, age_in_intervals, expected):
    rig.last_seen = now - timedelta(seconds=age_in_intervals * INTERVAL)
    assert rig.status_at(now) == expected


def test_it_scales_the_thresholds_with_the_rigs_own_interval(rig, now):
    rig.last_seen = now - timedelta(seconds=30)
    rig.telemetry_interval = 60.0
    assert rig.status_at(now) == Node.ONLINE
    rig.telemetry_interval = 1.0
    assert rig.status_at(now) == Node.OFFLINE


def test_it_records_new_to_online_when_the_first_report_arrives(rig, now):
    seen_ago(rig, 0, now)
    change = rig.record_status(now)
    assert (change.old, change.new, change.at) == (Node.NEW, Node.ONLINE, now)
    rig.refresh_from_db()
    assert rig.last_status == Node.ONLINE
    assert list(rig.status_changes.values_list("old", "new")) == [(Node.NEW, Node.ONLINE)]


def test_it_stores_one_row_per_transition_through_stale_offline_and_back(rig, now):
    seen_ago(rig, 0, now)
    rig.record_status(now)
    rig.record_status(now + timedelta(seconds=1 * INTERVAL))  # still online
    rig.record_status(now + timedelta(seconds=3 * INTERVAL))
    rig.record_status(now + timedelta(seconds=4 * INTERVAL))  # still stale
    rig.record_status(now + timedelta(seconds=6 * INTERVAL))
    rig.record_status(now + timedelta(seconds=60 * INTERVAL))  # still offline
    later = now + timedelta(seconds=61 * INTERVAL)
    seen_ago(rig, 0, later)
    rig.record_status(later)

    history = list(StatusChange.objects.filter(node=rig).order_by("at").values_list("old", "new"))
    assert history == [
        (Node.NEW, Node.ONLINE),
        (Node.ONLINE, Node.STALE),
        (Node.STALE, Node.OFFLINE),
        (Node.OFFLINE, Node.ONLINE),
    ]


def test_it_writes_nothing_when_the_status_is_unchanged(rig, now):
    seen_ago(rig, 0, now)
    rig.record_status(now)
    assert rig.record_status(now + timedelta(seconds=1)) is None
    assert rig.record_status(now + timedelta(seconds=2)) is None
    assert StatusChange.objects.filter(node=rig).count() == 1


def test_it_writes_one_row_when_two_callers_see_the_same_transition(rig, now):
    seen_ago(rig, 0, now)
    # Two workers each loaded the rig before either wrote: both see "new", both compute "online".
    first, second = Node.objects.get(pk=rig.pk), Node.objects.get(pk=rig.pk)
    assert first.record_status(now) is not None
    assert second.record_status(now) is None
    assert StatusChange.objects.filter(node=rig).count() == 1
    assert Node.objects.get(pk=rig.pk).last_status == Node.ONLINE


def test_it_marks_rigs_that_went_quiet_from_the_periodic_check(now):
    quiet, _ = make_node("quiet", telemetry_interval=1.0, last_seen=now - timedelta(seconds=3),
                         last_status=Node.ONLINE)
    lively, _ = make_node("lively", telemetry_interval=60.0, last_seen=now, last_status=Node.ONLINE)
    waiting, _ = make_node("waiting")

    assert check_node_status() == 1
    assert check_node_status() == 0  # nothing new on a second pass

    assert Node.objects.get(pk=quiet.pk).last_status == Node.STALE
    assert Node.objects.get(pk=lively.pk).last_status == Node.ONLINE
    assert Node.objects.get(pk=waiting.pk).last_status == Node.NEW
    assert list(StatusChange.objects.values_list("node__name", "new")) == [("quiet", Node.STALE)]
