from datetime import timedelta

import pytest
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from nodes.models import GPU, GpuSample, HostSample, Node, Operation, StatusChange, minute_floor
from nodes.tasks import expire_operations, prune_history
from tests.helpers import make_node

pytestmark = pytest.mark.django_db


@pytest.fixture
def gpu():
    node, _token = make_node("alpha")
    return GPU.objects.create(node=node, index=0, uuid="GPU-0", name="NVIDIA GeForce RTX 3090", vram_total=24 << 30)


def sample_at(gpu, age):
    minute = minute_floor(timezone.now() - age)
    GpuSample.objects.create(gpu=gpu, minute=minute, util=50, vram_used=1 << 30, temp_c=60, power_w=200)
    HostSample.objects.create(node=gpu.node, minute=minute, cpu_percent=10, ram_used=1 << 30, disk_free=1 << 40)
    return minute


def test_it_keeps_a_day_of_history_and_deletes_what_is_older(gpu):
    assert settings.TELEMETRY_RETENTION == timedelta(hours=24)
    kept = [sample_at(gpu, timedelta(minutes=m)) for m in (0, 5, 60 * 23, 60 * 24 - 2)]
    for age in (timedelta(hours=24, minutes=2), timedelta(hours=30), timedelta(days=9)):
        sample_at(gpu, age)

    removed = prune_history()

    assert removed["gpu_samples"] == 3 and removed["host_samples"] == 3
    assert sorted(GpuSample.objects.values_list("minute", flat=True)) == sorted(kept)
    assert sorted(HostSample.objects.values_list("minute", flat=True)) == sorted(kept)
    assert prune_history()["gpu_samples"] == 0  # nothing left to prune on the next run


def test_it_keeps_at_most_one_row_per_gpu_per_minute(gpu):
    sample_at(gpu, timedelta(0))
    with pytest.raises(IntegrityError), transaction.atomic():
        sample_at(gpu, timedelta(0))


def test_it_prunes_old_status_history_but_keeps_the_rig_and_its_latest_reading(gpu):
    node = gpu.node
    now = timezone.now()
    StatusChange.objects.create(node=node, old=Node.NEW, new=Node.ONLINE, at=now - timedelta(days=91))
    StatusChange.objects.create(node=node, old=Node.ONLINE, new=Node.OFFLINE, at=now - timedelta(days=1))
    GPU.objects.filter(pk=gpu.pk).update(util=75, reading_at=now - timedelta(days=3))

    assert prune_history()["status_changes"] == 1

    assert list(StatusChange.objects.values_list("new", flat=True)) == [Node.OFFLINE]
    assert GPU.objects.get(pk=gpu.pk).util == 75


def test_it_fails_operations_no_agent_picked_up_in_time(gpu):
    node = gpu.node
    timeout = timedelta(seconds=settings.OPERATION_PICKUP_TIMEOUT)
    now = timezone.now()
    forgotten = Operation.objects.create(node=node, kind=Operation.PING, created=now - timeout - timedelta(seconds=5))
    fresh = Operation.objects.create(node=node, kind=Operation.PING, created=now - timeout + timedelta(seconds=30))
    running = Operation.objects.create(node=node, kind=Operation.REFRESH_HARDWARE, status=Operation.RUNNING,
                                       created=now - timeout * 3, started=now - timeout * 3)
    done = Operation.objects.create(node=node, kind=Operation.PING, status=Operation.SUCCEEDED,
                                    created=now - timeout * 3, finished=now - timeout * 3, message="agent answered")

    assert expire_operations() == 1

    forgotten.refresh_from_db()
    assert forgotten.status == Operation.FAILED
    assert "did not pick this up" in forgotten.message
    assert forgotten.finished is not None
    assert Operation.objects.get(pk=fresh.pk).status == Operation.QUEUED
    assert Operation.objects.get(pk=running.pk).status == Operation.RUNNING
    assert Operation.objects.get(pk=done.pk).message == "agent answered"
    assert expire_operations() == 0


def test_it_ends_operations_that_outrun_their_kinds_run_limit_and_says_which(gpu, settings):
    settings.RUN_TIMEOUTS = {"launch": 1800, "build": 3 * 3600, "other": 600}
    node, now = gpu.node, timezone.now()

    def running(kind, seconds):
        return Operation.objects.create(node=node, kind=kind, status=Operation.RUNNING,
                                        created=now - timedelta(seconds=seconds), started=now - timedelta(seconds=seconds))

    slow_load = running(Operation.LAUNCH, 1700)  # a big model still loading: within the launch limit
    stuck_launch = running(Operation.LAUNCH, 1900)
    stuck_ping = running(Operation.PING, 700)
    long_build = running(Operation.BUILD_LLAMA, 2 * 3600)
    long_download = running(Operation.DOWNLOAD_MODEL, 48 * 3600)  # downloads resume and report progress: no limit

    assert expire_operations() == 2
    for row, status in ((slow_load, "running"), (long_build, "running"), (long_download, "running"),
                        (stuck_launch, "failed"), (stuck_ping, "failed")):
        assert Operation.objects.get(pk=row.pk).status == status
    assert Operation.objects.get(pk=stuck_launch.pk).message == (
        "no outcome from the rig within 1800 s of it starting (the run limit for a launch server, "
        "MORPHEUS_LAUNCH_TIMEOUT)")
    assert "within 600 s" in Operation.objects.get(pk=stuck_ping.pk).message
