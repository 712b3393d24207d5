"""Rigs seen through real processes: Redis, the panel worker, beat, and rig agents as `celery worker`s."""

import html
import platform
import re
import shutil
import time
from datetime import timedelta

import psutil
import pytest
from django.utils import timezone

from nodes import broker
from nodes.agent.probe import cpu_model
from nodes.models import GPU, GpuSample, HostSample, Node, Operation, StatusChange, minute_floor
from tests.helpers import make_node
from tests.harness import wait_until

pytestmark = pytest.mark.integration

GiB = 1024**3


def rig(name):
    return Node.objects.get(name=name)


def has_telemetry(name, gpus):
    node = rig(name)
    return bool(node.host_reading) and node.gpus.filter(reading_at__isnull=False).count() == gpus


def test_it_shows_each_rigs_hardware_and_live_telemetry(rigs, viewer_client):
    _, alpha_token = make_node("alpha")
    _, beta_token = make_node("beta")
    alpha_agent = rigs.start("alpha", alpha_token, fake_nvml="2x3090", wait=False)
    beta_agent = rigs.start("beta", beta_token, fake_nvml="nodriver", wait=False)
    wait_until(lambda: has_telemetry("alpha", 2) and has_telemetry("beta", 0), timeout=60,
               message="hardware and telemetry from both rigs")

    for name in ("alpha", "beta"):
        hw = rig(name).hardware
        # This machine is both rigs, so what they report is what the test sees here.
        assert hw["cpu_model"] == cpu_model()
        assert hw["cpu_cores_logical"] == psutil.cpu_count(logical=True)
        assert hw["cpu_cores_physical"] == (psutil.cpu_count(logical=False) or 0)
        assert hw["ram_total"] == psutil.virtual_memory().total
        assert hw["kernel"] == platform.release()
        assert hw["os"]
        assert hw["data_dir"].endswith(f"{name}/data")
        assert hw["disk_total"] == shutil.disk_usage(hw["data_dir"]).total
        assert 0 < hw["disk_free"] <= hw["disk_total"]
        host = rig(name).host_reading
        assert 0 <= host["cpu_percent"] <= 100
        assert 0 < host["ram_used"] <= hw["ram_total"]
        assert host["disk_free"] > 0

    alpha = rig("alpha")
    assert (alpha.hardware["driver_version"], alpha.hardware["cuda_version"]) == ("550.54.14", "12.4")
    gpus = list(alpha.gpus.order_by("index"))
    assert [(g.index, g.name, g.vram_total, g.power_limit_w, g.pcie_gen, g.pcie_width, g.compute_capability)
            for g in gpus] == [(i, "NVIDIA GeForce RTX 3090", 24 * GiB, 350.0, 4, 16, "8.6") for i in (0, 1)]
    assert len({g.uuid for g in gpus}) == 2
    for gpu in gpus:
        # The fake card's readings stay in these ranges; a value in the wrong field would fall outside.
        assert 0 <= gpu.util <= 100
        assert 0.2 * gpu.vram_total - 1 <= gpu.vram_used <= 0.8 * gpu.vram_total + 1
        assert 40 <= gpu.temp_c <= 75
        assert 30 <= gpu.power_w <= 350
        assert 30 <= gpu.fan <= 90
        assert 210 <= gpu.sm_clock <= 1710

    beta = rig("beta")
    assert beta.gpus.count() == 0
    assert beta.hardware["driver_version"] is None
    assert "no NVIDIA driver" in beta.gpu_note

    # Readings keep coming: each GPU's latest reading moves on.
    first = {g.pk: g.reading_at for g in gpus}
    wait_until(lambda: all(g.reading_at > first[g.pk] for g in alpha.gpus.all()), timeout=30,
               message="a newer reading for each of alpha's GPUs")

    alpha_page = viewer_client.get("/rigs/alpha/").content.decode()
    assert "driver 550.54.14 · CUDA 12.4" in alpha_page
    assert alpha_page.count("NVIDIA GeForce RTX 3090") >= 2
    assert all(g.uuid in alpha_page for g in gpus)
    beta_page = viewer_client.get("/rigs/beta/").content.decode()
    assert "No GPUs: no NVIDIA driver" in beta_page
    # Each agent consumes its own queue and no other.
    assert "node.alpha" in alpha_agent.log() and "node.beta" not in alpha_agent.log()
    assert "node.beta" in beta_agent.log() and "node.alpha" not in beta_agent.log()


def transitions(name, since=None):
    changes = StatusChange.objects.filter(node__name=name).order_by("at", "id")
    if since is not None:
        changes = changes.filter(at__gte=since)
    return [(c.old, c.new) for c in changes]


def test_it_marks_a_killed_rig_stale_then_offline_and_online_again_when_it_returns(rigs, viewer_client):
    _, alpha_token = make_node("alpha")
    _, beta_token = make_node("beta")
    # Alpha reports less often than beta (stale only after 10 s), so a hiccup on a loaded machine cannot flip it.
    alpha_agent = rigs.start("alpha", alpha_token, interval=5.0, wait=False)
    beta_agent = rigs.start("beta", beta_token, interval=1.0, wait=False)
    wait_until(lambda: rig("alpha").last_status == rig("beta").last_status == Node.ONLINE, timeout=60,
               message="both rigs online")
    alpha_agent.wait_for_log("ready.")
    beta_agent.wait_for_log("ready.")

    killed_at = timezone.now()
    beta_agent.kill()
    wait_until(lambda: (Node.ONLINE, Node.STALE) in transitions("beta", since=killed_at), timeout=30,
               message="beta marked stale")
    wait_until(lambda: (Node.STALE, Node.OFFLINE) in transitions("beta", since=killed_at), timeout=30,
               message="beta marked offline")
    beta = rig("beta")
    # The last of each, in case a report still in the queue at the kill briefly brought beta back.
    stale = StatusChange.objects.filter(node=beta, new=Node.STALE, at__gte=killed_at).order_by("at", "id").last()
    offline = StatusChange.objects.filter(node=beta, new=Node.OFFLINE, at__gte=killed_at).order_by("at", "id").last()
    assert stale.at < offline.at
    # Not before two and five missed intervals.
    assert (stale.at - beta.last_seen).total_seconds() >= 2 * beta.telemetry_interval
    assert (offline.at - beta.last_seen).total_seconds() >= 5 * beta.telemetry_interval
    assert beta.status == Node.OFFLINE
    # An offline rig stays on the dashboard, marked.
    cards = viewer_client.get("/", HTTP_HX_REQUEST="true").content.decode()
    assert re.search(r'id="rig-beta"[^>]*data-status="offline"', cards)

    rigs.start("beta", beta_token, interval=1.0, wait=False)
    wait_until(lambda: (Node.OFFLINE, Node.ONLINE) in transitions("beta", since=offline.at), timeout=60,
               message="beta back online")
    assert rig("beta").status == Node.ONLINE
    # Alpha never left: its only change is the first one, from new to online.
    assert transitions("alpha") == [(Node.NEW, Node.ONLINE)]
    assert rig("alpha").status == Node.ONLINE


def test_it_keeps_one_history_row_per_gpu_per_minute_and_prunes_old_ones(rigs, panel):
    _, token = make_node("alpha")
    started = timezone.now()
    agent = rigs.start("alpha", token, fake_nvml="2x3090", interval=0.5, wait=False)
    wait_until(lambda: has_telemetry("alpha", 2), timeout=60, message="alpha's telemetry")
    readings = set()

    def six_readings():
        readings.add(GPU.objects.get(node__name="alpha", index=0).reading_at)
        return len(readings) >= 6

    wait_until(six_readings, timeout=30, interval=0.2, message="six telemetry reports from alpha")
    agent.stop()
    panel.roundtrip()
    stopped = timezone.now()

    # The run spans one minute, or two when it crosses a minute boundary; never one row per report.
    minutes = (minute_floor(stopped) - minute_floor(started)) // timedelta(minutes=1) + 1
    for gpu in GPU.objects.filter(node__name="alpha"):
        samples = list(gpu.samples.order_by("minute"))
        assert 1 <= len(samples) <= minutes < len(readings)
        assert all(s.minute == minute_floor(s.minute) for s in samples)
        last = samples[-1]
        # A minute's row holds the last reading of that minute.
        assert last.minute == minute_floor(gpu.reading_at)
        assert (last.util, last.vram_used, last.temp_c, last.power_w) == (
            gpu.util, gpu.vram_used, gpu.temp_c, gpu.power_w)
    assert 1 <= HostSample.objects.filter(node__name="alpha").count() <= minutes

    # Rows older than the retention window (24 h) are pruned by the panel's upkeep task.
    gpu = GPU.objects.get(node__name="alpha", index=0)
    old_minute = minute_floor(timezone.now() - timedelta(hours=25))
    GpuSample.objects.create(gpu=gpu, minute=old_minute, util=1, vram_used=1, temp_c=1, power_w=1)
    HostSample.objects.create(node=gpu.node, minute=old_minute, cpu_percent=1, ram_used=1, disk_free=1)
    recent = GpuSample.objects.filter(minute__gt=old_minute).count()
    panel.wait_done("panel.prune_history", panel.send("panel.prune_history"))
    assert not GpuSample.objects.filter(minute=old_minute).exists()
    assert not HostSample.objects.filter(minute=old_minute).exists()
    assert GpuSample.objects.count() == recent


def test_it_shows_an_agent_started_with_a_wrong_token_as_token_rejected(rigs, viewer_client):
    _beta, token = make_node("beta")
    broker.ensure_account("beta", token)
    rigs.start("beta", "a-token-from-another-panel-0123456789", wait=False, account=False)
    # The broker refuses its login; the rig page says so.
    wait_until(lambda: "agent token rejected" in viewer_client.get("/rigs/beta/").content.decode(), timeout=60,
               message="beta's token rejected")
    beta = rig("beta")
    # Its reports wrote nothing: no heartbeat, no hardware.
    assert (beta.last_seen, beta.hardware, beta.gpus.count()) == (None, {}, 0)


def test_it_rejects_the_running_agent_after_its_token_is_rotated(rigs, operator_client):
    _, old_token = make_node("alpha")
    agent = rigs.start("alpha", old_token, interval=0.5, wait=False)
    wait_until(lambda: rig("alpha").status == Node.ONLINE, timeout=60, message="alpha online")

    response = operator_client.post("/rigs/alpha/rotate-token/")
    rotated_at = timezone.now()
    assert response.status_code == 200
    new_token = html.unescape(response.content.decode()).split('MORPHEUS_NODE_TOKEN: "', 1)[1].split('"')[0]
    assert rig("alpha").check_token(new_token) and not rig("alpha").check_token(old_token)

    # The running agent is cut off at once and cannot log in again with the old token.
    wait_until(lambda: "agent token rejected" in operator_client.get("/rigs/alpha/").content.decode(), timeout=30,
               message="the old token rejected by the broker")
    assert "Connection closed by server" in agent.log() or "invalid username-password" in agent.log()
    assert broker.account_state("alpha")["connections"] == 0
    assert rig("alpha").last_seen <= rotated_at + timedelta(seconds=1)

    # Restarted with the token the panel showed, the agent is heard again.
    agent.stop()
    rigs.start("alpha", new_token, interval=0.5, wait=False)
    wait_until(lambda: not rig("alpha").token_rejected and rig("alpha").last_seen > rotated_at, timeout=60,
               message="alpha heard with its new token")
    assert "agent token rejected" not in operator_client.get("/rigs/alpha/").content.decode()


# --- forged reports, sent straight to the panel queue as a forger on the broker would ------------------
def hardware_payload(**gpu_changes):
    gpus = [{"index": i, "name": "NVIDIA GeForce RTX 3090", "uuid": f"GPU-forged-{i}", "vram_total": 24 * GiB,
             "power_limit_w": 350.0, "pcie_gen": 4, "pcie_width": 16, "compute_capability": "8.6"} for i in (0, 1)]
    gpus[0].update(gpu_changes)
    return {"cpu_model": "Intel i7-13700K", "cpu_cores_physical": 16, "cpu_cores_logical": 24,
            "ram_total": 64 * GiB, "disk_total": 10**12, "disk_free": 5 * 10**11, "os": "Ubuntu 24.04",
            "kernel": "6.8.0", "driver_version": "550.54.14", "cuda_version": "12.4",
            # A long interval, so the rig cannot go stale (and change rows) while a test runs.
            "telemetry_interval": 60.0, "gpus": gpus}


def telemetry_payload(**gpu_changes):
    gpus = [{"index": i, "util": 50, "vram_used": 8 * GiB, "temp_c": 60, "power_w": 200.0, "fan": 40,
             "sm_clock": 1500} for i in (0, 1)]
    gpus[0].update(gpu_changes)
    return {"at": time.time(), "host": {"cpu_percent": 10.0, "ram_used": 8 * GiB, "disk_free": 5 * 10**11},
            "gpus": gpus}


def enrolled_alpha(panel):
    """Alpha with hardware, a latest reading and history, as written by the panel worker itself."""
    _, token = make_node("alpha")
    for kind, payload in (("hardware", hardware_payload()), ("telemetry", telemetry_payload())):
        line = panel.wait_done("panel.report", panel.report("alpha", token, kind, payload))
        assert line.endswith(": None"), line  # applied, not rejected
    assert GPU.objects.filter(node__name="alpha", util=50).count() == 2
    return token


def all_rows():
    return {model.__name__: list(model.objects.order_by("pk").values())
            for model in (Node, GPU, GpuSample, HostSample, StatusChange, Operation)}


def send_forged(panel, node, token, kind, payload):
    """Send a report and wait until the panel worker has finished with it; returns what it logged."""
    mark = panel.worker.mark()
    panel.wait_done("panel.report", panel.report(node, token, kind, payload))
    return panel.worker.log(since=mark)


FORGED = {
    "unknown rig": ("zeta", "telemetry", telemetry_payload(), "rig 'zeta' rejected: unknown rig"),
    "no rig name": (None, "telemetry", telemetry_payload(), "rig None rejected: rig name missing"),
    "unknown kind": ("alpha", "firmware", {}, "rejected: unknown report kind 'firmware'"),
    "payload not an object": ("alpha", "telemetry", "all GPUs idle", "payload must be an object"),
    "missing host readings": ("alpha", "telemetry", {**telemetry_payload(), "host": None}, "host must be an object"),
    "VRAM as text": ("alpha", "hardware", hardware_payload(vram_total="24 GB"), "vram_total must be a number"),
    "negative VRAM": ("alpha", "hardware", hardware_payload(vram_total=-GiB), f"vram_total={-GiB} is outside"),
    "negative VRAM used": ("alpha", "telemetry", telemetry_payload(vram_used=-1), "vram_used=-1 is outside"),
    "10,000 °C": ("alpha", "telemetry", telemetry_payload(temp_c=10_000), "temp_c=10000 is outside"),
    "GPU listed twice": ("alpha", "telemetry", telemetry_payload(index=1), "GPU indexes repeat"),
}


@pytest.mark.parametrize("case", FORGED)
def test_it_changes_nothing_for_a_forged_report(panel, case):
    token = enrolled_alpha(panel)
    before = all_rows()
    node, kind, payload, reason = FORGED[case]

    logged = send_forged(panel, node, token, kind, payload)

    assert "morpheus.ingest" in logged and reason in logged
    assert all_rows() == before


def test_it_marks_the_rig_when_a_report_carries_a_wrong_token(panel, viewer_client):
    enrolled_alpha(panel)
    before = all_rows()

    logged = send_forged(panel, "alpha", "a-guessed-token-0123456789abcdef", "telemetry",
                         telemetry_payload(temp_c=99))

    assert "rig 'alpha' rejected: bad report signature (agent token rejected)" in logged
    assert rig("alpha").token_rejected
    after = all_rows()
    # Only the mark changed: no reading, no history, no heartbeat.
    rejected_at = after["Node"][0].pop("token_rejected_at")
    assert before["Node"][0].pop("token_rejected_at") is None and rejected_at is not None
    assert after == before
    assert "agent token rejected" in viewer_client.get("/rigs/alpha/").content.decode()
