"""Applying agent reports (`nodes.ingest.handle_report`, what the panel worker runs for `panel.report`)."""

import logging
from datetime import timedelta

import pytest
from django.utils import timezone

from nodes import ingest
from nodes.models import GPU, GpuSample, HostSample, Node, Operation, StatusChange
from tests.helpers import make_node, report as handle_report, signed_report
from tests.test_reports import GiB, hardware, telemetry, with_gpu

pytestmark = pytest.mark.django_db

MINUTE = timezone.now().replace(second=0, microsecond=0) - timedelta(hours=1)


def snapshot(except_rejection=False):
    """Everything a report could write, to show that a rejected one wrote nothing."""
    nodes = list(Node.objects.order_by("pk").values())
    if except_rejection:
        for row in nodes:
            del row["token_rejected_at"]
    return {
        "nodes": nodes,
        "gpus": list(GPU.objects.order_by("pk").values()),
        "gpu_samples": list(GpuSample.objects.order_by("pk").values()),
        "host_samples": list(HostSample.objects.order_by("pk").values()),
        "status_changes": StatusChange.objects.count(),
        "operations": list(Operation.objects.order_by("pk").values()),
    }


def at(seconds):
    return MINUTE + timedelta(seconds=seconds)


def report_telemetry(name, token, seconds, **changes):
    return handle_report(name, token, "telemetry", telemetry(at=at(seconds).timestamp(), **changes), now=at(seconds))


@pytest.fixture
def rig():
    return make_node("alpha")


@pytest.fixture
def reporting_rig(rig):
    """A rig that has reported its hardware and one reading, so a bad report has something to spoil."""
    node, token = rig
    assert handle_report("alpha", token, "hardware", hardware(), now=at(1)) is None
    assert report_telemetry("alpha", token, 2) is None
    return node, token


def test_it_records_hardware_then_telemetry(rig):
    node, token = rig
    assert handle_report("alpha", token, "hardware", hardware(), now=at(1)) is None
    gpus = list(GPU.objects.filter(node=node).order_by("index"))
    assert [(g.index, g.name, g.uuid, g.vram_total, g.compute_capability) for g in gpus] == [
        (0, "NVIDIA GeForce RTX 3090", "GPU-00000000", 24 * GiB, "8.6"),
        (1, "NVIDIA GeForce RTX 3090", "GPU-00000001", 24 * GiB, "8.6"),
    ]
    assert all(g.util is None for g in gpus)

    assert report_telemetry("alpha", token, 2) is None
    node.refresh_from_db()
    assert node.hardware["cpu_model"] == "13th Gen Intel(R) Core(TM) i7-13700K"
    assert node.hardware_at == at(1)
    assert node.last_seen == at(2)
    assert node.host_reading["cpu_percent"] == 12.5
    for gpu in GPU.objects.filter(node=node):
        assert (gpu.util, gpu.vram_used, gpu.temp_c, gpu.power_w, gpu.fan, gpu.sm_clock) == (
            87, 20 * GiB, 71, 301.5, 64, 1695)
        assert gpu.reading_at == at(2)
    assert GpuSample.objects.filter(gpu__node=node, minute=MINUTE).count() == 2
    assert HostSample.objects.filter(node=node, minute=MINUTE).count() == 1
    assert list(node.status_changes.values_list("old", "new")) == [(Node.NEW, Node.ONLINE)]


def test_it_keeps_one_sample_per_gpu_per_minute_holding_the_latest_values(reporting_rig):
    _node, token = reporting_rig
    report_telemetry("alpha", token, 40, gpus=[
        {"index": 0, "util": 12, "vram_used": 3 * GiB, "temp_c": 45, "power_w": 90.0, "fan": 30, "sm_clock": 600},
        {"index": 1, "util": 99, "vram_used": 23 * GiB, "temp_c": 80, "power_w": 349.0, "fan": 90, "sm_clock": 1900},
    ])
    samples = {s.gpu.index: s for s in GpuSample.objects.select_related("gpu")}
    assert len(samples) == 2
    assert (samples[0].util, samples[0].temp_c, samples[0].vram_used) == (12, 45, 3 * GiB)
    assert (samples[1].util, samples[1].power_w) == (99, 349.0)
    assert HostSample.objects.count() == 1

    report_telemetry("alpha", token, 61)
    assert GpuSample.objects.count() == 4
    assert GpuSample.objects.filter(minute=MINUTE + timedelta(minutes=1)).count() == 2


def test_it_replaces_a_gpu_swapped_for_another_card(reporting_rig):
    node, token = reporting_rig
    old = GPU.objects.get(node=node, index=1)
    swapped = with_gpu(hardware(), index=0)  # the card in slot 0 stays
    swapped["gpus"][1].update(uuid="GPU-new-card", name="NVIDIA GeForce RTX 4090")
    assert handle_report("alpha", token, "hardware", swapped, now=at(10)) is None

    new = GPU.objects.get(node=node, index=1)
    assert (new.uuid, new.name) == ("GPU-new-card", "NVIDIA GeForce RTX 4090")
    assert new.pk != old.pk
    assert not GPU.objects.filter(uuid=old.uuid).exists()
    assert new.samples.count() == 0  # the old card's history is not the new card's
    assert GPU.objects.get(node=node, index=0).samples.count() == 1


def test_it_drops_a_gpu_that_was_removed(reporting_rig):
    node, token = reporting_rig
    assert handle_report("alpha", token, "hardware", hardware(gpu_count=1), now=at(10)) is None
    assert list(GPU.objects.filter(node=node).values_list("index", flat=True)) == [0]
    assert GpuSample.objects.filter(gpu__node=node).count() == 1


def test_it_skips_readings_for_a_gpu_it_does_not_know_yet(rig):
    node, token = rig
    handle_report("alpha", token, "hardware", hardware(gpu_count=1), now=at(1))
    assert report_telemetry("alpha", token, 2) is None  # reports GPUs 0 and 1
    assert GpuSample.objects.filter(gpu__node=node).count() == 1
    assert Node.objects.get(pk=node.pk).last_seen == at(2)


def test_it_files_a_reading_from_a_badly_wrong_clock_under_arrival_time(reporting_rig):
    _node, token = reporting_rig
    arrival = at(70)
    far_future = (arrival + timedelta(days=3)).timestamp()
    assert handle_report("alpha", token, "telemetry", telemetry(at=far_future), now=arrival) is None
    assert GpuSample.objects.filter(minute=MINUTE + timedelta(minutes=1)).count() == 2


def test_it_rejects_a_report_for_an_unknown_rig_and_writes_nothing(reporting_rig, caplog):
    _node, token = reporting_rig
    before = snapshot()
    with caplog.at_level(logging.WARNING, logger="morpheus.ingest"):
        reason = handle_report("ghost", token, "hardware", hardware(), now=at(30))
    assert reason == "unknown rig"
    assert "unknown rig" in caplog.text
    assert snapshot() == before


@pytest.mark.parametrize("name", [None, 42, "", "Alpha", "alpha\x00", "../alpha"])
def test_it_rejects_a_report_without_a_proper_rig_name(reporting_rig, name):
    _node, token = reporting_rig
    before = snapshot()
    assert handle_report(name, token, "telemetry", telemetry(), now=at(30)) is not None
    assert snapshot() == before


@pytest.mark.parametrize("kind", ["hardware", "telemetry"])
def test_it_rejects_a_wrong_token_and_only_notes_the_rejection(reporting_rig, kind, caplog):
    node, _token = reporting_rig
    _other, other_token = make_node("beta")
    before = snapshot(except_rejection=True)
    payload = hardware(gpu_count=0) if kind == "hardware" else telemetry()
    with caplog.at_level(logging.WARNING, logger="morpheus.ingest"):
        reason = handle_report("alpha", other_token, kind, payload, now=at(30))

    assert "bad report signature" in reason
    assert "bad report signature" in caplog.text
    assert snapshot(except_rejection=True) == before
    node.refresh_from_db()
    assert node.token_rejected_at == at(30)
    assert node.token_rejected  # the rig page says "agent token rejected"


def test_it_notes_a_rejected_token_at_most_every_few_seconds(rig):
    node, _token = rig
    handle_report("alpha", "w" * 43, "telemetry", telemetry(), now=at(0))
    handle_report("alpha", "w" * 43, "telemetry", telemetry(), now=at(2))
    assert Node.objects.get(pk=node.pk).token_rejected_at == at(0)
    handle_report("alpha", "w" * 43, "telemetry", telemetry(), now=at(8))
    assert Node.objects.get(pk=node.pk).token_rejected_at == at(8)


def test_it_clears_token_rejected_once_the_right_token_reports(rig):
    node, token = rig
    handle_report("alpha", "w" * 43, "hardware", hardware(), now=at(0))
    assert Node.objects.get(pk=node.pk).token_rejected
    handle_report("alpha", token, "hardware", hardware(), now=at(1))
    assert not Node.objects.get(pk=node.pk).token_rejected


@pytest.mark.parametrize("field", ["body", "mac"])
@pytest.mark.parametrize("forged", [None, 123, ["t"], {"token": "t"}, True])
def test_it_rejects_a_report_whose_body_or_mac_is_not_text(reporting_rig, field, forged):
    _node, token = reporting_rig
    before = snapshot(except_rejection=True)
    signed = {**signed_report("alpha", token, "telemetry", telemetry()), field: forged}
    assert "unsigned report" in ingest.handle_report(**signed, now=at(30))
    assert snapshot(except_rejection=True) == before


def test_it_rejects_a_report_altered_after_signing(reporting_rig):
    _node, token = reporting_rig
    before = snapshot(except_rejection=True)
    signed = signed_report("alpha", token, "telemetry", telemetry())
    signed["body"] = signed["body"].replace('"cpu_percent":', '"cpu_percent":9')
    assert "bad report signature" in ingest.handle_report(**signed, now=at(30))
    assert snapshot(except_rejection=True) == before


def test_it_rejects_a_report_signed_by_one_rig_sent_under_another_name(reporting_rig):
    _node, token = reporting_rig
    make_node("beta")
    signed = {**signed_report("alpha", token, "telemetry", telemetry()), "rig": "beta"}
    assert "bad report signature" in ingest.handle_report(**signed, now=at(30))


def test_it_refuses_an_unsigned_report_in_the_old_format(reporting_rig):
    from nodes.tasks import report

    _node, token = reporting_rig
    answer = report.run(node="alpha", token=token, kind="telemetry", payload=telemetry(), sent_at=0)
    assert "unsigned report refused" in answer


def test_it_keeps_the_highest_sequence_number_and_the_rig_clock_offset(reporting_rig):
    node, token = reporting_rig
    base = Node.objects.get(pk=node.pk).report_seq
    ingest.handle_report(**signed_report("alpha", token, "telemetry", telemetry(), seq=base + 7,
                                         sent_at=at(30).timestamp() + 2.5), now=at(30))
    ingest.handle_report(**signed_report("alpha", token, "telemetry", telemetry(), seq=base + 5,
                                         sent_at=at(31).timestamp()), now=at(31))
    node.refresh_from_db()
    assert node.report_seq == base + 7 and node.clock_offset == 0


MALFORMED = [
    ("hardware", {k: v for k, v in hardware().items() if k != "ram_total"}, "ram_total is missing"),
    ("hardware", hardware(ram_total="64 GB"), "ram_total must be a number"),
    ("hardware", with_gpu(hardware(), vram_total=-1), "vram_total=-1 is outside"),
    ("hardware", with_gpu(hardware(), index=1), "GPU indexes repeat"),
    ("hardware", hardware(gpu_count=65), "more than 64"),
    ("hardware", hardware(cpu_cores_logical=True), "must be a number, got bool"),
    ("hardware", "not a dict", "payload must be an object"),
    ("hardware", with_gpu(hardware(), name="RTX\x003090"), "name contains a NUL"),
    ("telemetry", with_gpu(telemetry(), temp_c=10_000), "temp_c=10000 is outside"),
    ("telemetry", with_gpu(telemetry(), util=float("nan")), "util is not finite"),
    ("telemetry", with_gpu(telemetry(), util=False), "util must be a number, got bool"),
    ("telemetry", with_gpu(telemetry(), vram_used=-5), "vram_used=-5 is outside"),
    ("telemetry", with_gpu(telemetry(), index=1), "GPU indexes repeat"),
    ("telemetry", telemetry(gpu_count=65), "more than 64"),
    ("telemetry", {"at": 1.0, "gpus": []}, "host must be an object"),
    ("operation", {"operation": 1, "status": "exploded"}, "is not one of"),
    ("firmware", {}, "unknown report kind 'firmware'"),
    (["hardware"], {}, "unknown report kind"),
    (None, {}, "unknown report kind"),
]


@pytest.mark.parametrize("kind, payload, reason", MALFORMED,
                         ids=[f"{m[0]}-{m[2]}" for m in MALFORMED])
def test_it_rejects_a_malformed_report_and_writes_nothing(reporting_rig, kind, payload, reason, caplog):
    _node, token = reporting_rig
    before = snapshot()
    with caplog.at_level(logging.WARNING, logger="morpheus.ingest"):
        answer = handle_report("alpha", token, kind, payload, now=at(50))
    assert reason in answer
    assert reason in caplog.text
    assert snapshot() == before


def test_it_applies_an_operation_outcome_from_its_own_rig_only(reporting_rig):
    alpha, alpha_token = reporting_rig
    _beta, beta_token = make_node("beta")
    operation = Operation.objects.create(node=alpha, kind=Operation.PING)

    forged = {"operation": operation.pk, "status": "succeeded", "message": "beta says hi"}
    assert handle_report("beta", beta_token, "operation", forged, now=at(20)) is None
    assert Operation.objects.get(pk=operation.pk).status == Operation.QUEUED

    outcome = {"operation": operation.pk, "status": "succeeded", "message": "agent answered", "result": {"x": 1}}
    assert handle_report("alpha", alpha_token, "operation", outcome, now=at(21)) is None
    operation.refresh_from_db()
    assert (operation.status, operation.message, operation.result) == ("succeeded", "agent answered", {"x": 1})
    assert operation.finished == at(21)


def test_it_never_moves_a_finished_operation_back(reporting_rig):
    alpha, token = reporting_rig
    operation = Operation.objects.create(node=alpha, kind=Operation.REFRESH_HARDWARE)
    handle_report("alpha", token, "operation", {"operation": operation.pk, "status": "failed", "message": "no"},
                  now=at(20))
    handle_report("alpha", token, "operation", {"operation": operation.pk, "status": "running"}, now=at(21))
    handle_report("alpha", token, "operation", {"operation": operation.pk, "status": "succeeded"}, now=at(22))
    operation.refresh_from_db()
    assert (operation.status, operation.message, operation.finished) == ("failed", "no", at(20))


def test_a_restarted_agent_interrupts_only_what_it_reported_on_before_its_inventory(reporting_rig):
    """It may pick up a queued operation (and say "running") before its boot inventory is applied: that one's report
    came after the inventory was made and it goes on; one it resumed is listed and goes on."""
    node, token = reporting_rig
    before = Operation.objects.create(node=node, kind=Operation.BUILD_LLAMA)
    before.apply_report(Operation.RUNNING, seq=100)
    resumed = Operation.objects.create(node=node, kind=Operation.DOWNLOAD_MODEL)
    resumed.apply_report(Operation.RUNNING, seq=101)
    since = Operation.objects.create(node=node, kind=Operation.PING)
    since.apply_report(Operation.RUNNING, seq=300)  # picked up after the inventory below was made
    queued = Operation.objects.create(node=node, kind=Operation.PING)
    inventory = {"boot": True, "operations": [resumed.pk], "deployments": []}
    assert ingest.handle_report(**signed_report("alpha", token, "inventory", inventory, seq=200)) is None
    statuses = {op.pk: (op.status, op.message) for op in Operation.objects.all()}
    assert statuses[before.pk][0] == "failed" and "interrupted" in statuses[before.pk][1]
    assert statuses[resumed.pk][0] == statuses[since.pk][0] == "running"
    assert statuses[queued.pk][0] == "queued"
    # A periodic inventory ends what the rig no longer has (its outcome never came) with its own words.
    assert ingest.handle_report(**signed_report("alpha", token, "inventory", {**inventory, "boot": False},
                                                seq=400)) is None
    resumed.refresh_from_db()
    since.refresh_from_db()
    assert resumed.status == "running"
    assert since.status == "failed" and since.message.startswith("lost on the rig")
