"""Validation of agent reports (plain Python, no database)."""

import copy

import pytest

from nodes.reports import ReportError, clean_hardware, clean_operation, clean_telemetry

GiB = 1024**3


def hardware(gpu_count=2, **changes):
    report = {
        "cpu_model": "13th Gen Intel(R) Core(TM) i7-13700K",
        "cpu_cores_physical": 16,
        "cpu_cores_logical": 24,
        "ram_total": 64 * GiB,
        "disk_total": 1000 * GiB,
        "disk_free": 800 * GiB,
        "data_dir": "/var/lib/morpheus-agent",
        "os": "Ubuntu 24.04 LTS",
        "kernel": "6.8.0-45-generic",
        "hostname": "alpha",
        "driver_version": "550.54.14",
        "cuda_version": "12.4",
        "gpu_note": "",
        "telemetry_interval": 5.0,
        "protocol": 1,
        "gpus": [
            {"index": i, "name": "NVIDIA GeForce RTX 3090", "uuid": f"GPU-{i:08d}", "vram_total": 24 * GiB,
             "power_limit_w": 350.0, "pcie_gen": 4, "pcie_width": 16, "pcie_gen_max": 4, "pcie_width_max": 16,
             "compute_capability": "8.6", "mem_bandwidth_gbs": 936.2, "mem_bandwidth_source": "nvml"}
            for i in range(gpu_count)
        ],
    }
    report.update(changes)
    return report


def telemetry(gpu_count=2, at=1_800_000_000.0, **changes):
    report = {
        "at": at,
        "host": {"cpu_percent": 12.5, "ram_used": 9 * GiB, "ram_total": 64 * GiB, "disk_free": 800 * GiB},
        "gpus": [
            {"index": i, "uuid": f"GPU-{i:08d}", "util": 87, "vram_used": 20 * GiB, "vram_total": 24 * GiB,
             "temp_c": 71, "power_w": 301.5, "fan": 64, "sm_clock": 1695}
            for i in range(gpu_count)
        ],
    }
    report.update(changes)
    return report


def with_gpu(report, **changes):
    report = copy.deepcopy(report)
    report["gpus"][0].update(changes)
    return report


def without(report, key, gpu=False):
    report = copy.deepcopy(report)
    del (report["gpus"][0] if gpu else report)[key]
    return report


def test_it_accepts_a_full_hardware_report():
    clean = clean_hardware(hardware())
    assert clean["ram_total"] == 64 * GiB
    assert clean["gpus"][1] == {"index": 1, "name": "NVIDIA GeForce RTX 3090", "uuid": "GPU-00000001",
                                "vram_total": 24 * GiB, "power_limit_w": 350.0, "pcie_gen": 4, "pcie_width": 16,
                                "compute_capability": "8.6", "mem_bandwidth_gbs": 936.2,
                                "mem_bandwidth_source": "nvml"}
    # An older agent says nothing of bandwidth; an unknown source is dropped, an absurd figure refused.
    assert clean_hardware(without(hardware(), "mem_bandwidth_gbs", gpu=True))["gpus"][0]["mem_bandwidth_gbs"] is None
    assert clean_hardware(with_gpu(hardware(), mem_bandwidth_source="<b>"))["gpus"][0]["mem_bandwidth_source"] is None
    with pytest.raises(ReportError, match="mem_bandwidth_gbs"):
        clean_hardware(with_gpu(hardware(), mem_bandwidth_gbs=10**9))


def test_it_accepts_a_rig_without_gpus_and_keeps_the_note():
    clean = clean_hardware(hardware(gpu_count=0, driver_version=None, cuda_version=None, gpu_note="no NVIDIA driver"))
    assert clean["gpus"] == []
    assert clean["gpu_note"] == "no NVIDIA driver"
    assert clean["driver_version"] is None


def test_it_accepts_readings_a_card_does_not_support():
    clean = clean_telemetry(with_gpu(telemetry(), fan=None, power_w=None, util=None))
    assert clean["gpus"][0]["fan"] is None
    assert clean["gpus"][1]["fan"] == 64


def test_it_takes_whole_floats_as_integers():
    assert clean_hardware(hardware(ram_total=float(64 * GiB)))["ram_total"] == 64 * GiB


def test_it_truncates_overlong_text():
    assert len(clean_hardware(hardware(cpu_model="x" * 5000))["cpu_model"]) == 200


BAD_HARDWARE = [
    ("not an object", ["a", "list"], "payload must be an object"),
    ("missing RAM", without(hardware(), "ram_total"), "ram_total is missing"),
    ("missing GPU list", without(hardware(), "gpus"), "gpus must be a list"),
    ("missing GPU UUID", without(hardware(), "uuid", gpu=True), "uuid is missing"),
    ("missing GPU name", with_gpu(hardware(), name=""), "name is missing"),
    ("RAM as text", hardware(ram_total="64 GB"), "ram_total must be a number"),
    ("cores as a boolean", hardware(cpu_cores_logical=True), "cpu_cores_logical must be a number"),
    ("fractional cores", hardware(cpu_cores_physical=7.5), "must be a whole number"),
    ("GPU list as an object", hardware(gpus={"0": {}}), "gpus must be a list"),
    ("GPU as text", hardware(gpus=["RTX 3090"]), "each GPU must be an object"),
    ("GPU name as a number", with_gpu(hardware(), name=3090), "name must be text"),
    ("negative VRAM", with_gpu(hardware(), vram_total=-24 * GiB), "vram_total"),
    ("zero VRAM", with_gpu(hardware(), vram_total=0), "vram_total"),
    ("NaN VRAM", with_gpu(hardware(), vram_total=float("nan")), "vram_total is not finite"),
    ("infinite power limit", with_gpu(hardware(), power_limit_w=float("inf")), "power_limit_w is not finite"),
    ("absurd power limit", with_gpu(hardware(), power_limit_w=1_000_000), "power_limit_w"),
    ("huge integer", hardware(ram_total=10**400), "ram_total"),
    ("negative GPU index", with_gpu(hardware(), index=-1), "index"),
    ("GPU index as a boolean", with_gpu(hardware(), index=False), "index must be a number"),
    ("duplicate GPU indexes", with_gpu(hardware(), index=1), "GPU indexes repeat"),
    ("too many GPUs", hardware(gpu_count=65), "more than 64"),
    ("NUL in text", hardware(os="Ubuntu\x00"), "os contains a NUL"),
    ("no telemetry interval", without(hardware(), "telemetry_interval"), "telemetry_interval is missing"),
    ("telemetry interval zero", hardware(telemetry_interval=0), "telemetry_interval"),
]


@pytest.mark.parametrize("payload, reason", [case[1:] for case in BAD_HARDWARE], ids=[c[0] for c in BAD_HARDWARE])
def test_it_rejects_a_malformed_hardware_report_with_a_reason(payload, reason):
    with pytest.raises(ReportError, match=reason.replace("(", r"\(")):
        clean_hardware(payload)


BAD_TELEMETRY = [
    ("not an object", None, "payload must be an object"),
    ("missing host", without(telemetry(), "host"), "host must be an object"),
    ("missing time", without(telemetry(), "at"), "at is missing"),
    ("missing VRAM used", without(telemetry(), "vram_used", gpu=True), "vram_used is missing"),
    ("negative VRAM used", with_gpu(telemetry(), vram_used=-1), "vram_used=-1 is outside"),
    ("10,000 °C", with_gpu(telemetry(), temp_c=10_000), "temp_c=10000 is outside"),
    ("below absolute zero", with_gpu(telemetry(), temp_c=-300), "temp_c"),
    ("utilisation over 100%", with_gpu(telemetry(), util=250), "util"),
    ("NaN utilisation", with_gpu(telemetry(), util=float("nan")), "util is not finite"),
    ("NaN time", telemetry(at=float("nan")), "at is not finite"),
    ("utilisation as a boolean", with_gpu(telemetry(), util=True), "util must be a number"),
    ("temperature as text", with_gpu(telemetry(), temp_c="71"), "temp_c must be a number"),
    ("CPU over 100%", telemetry(host={"cpu_percent": 101, "ram_used": 1, "disk_free": 1}), "cpu_percent"),
    ("negative disk free", telemetry(host={"cpu_percent": 1, "ram_used": 1, "disk_free": -1}), "disk_free"),
    ("duplicate GPU indexes", with_gpu(telemetry(), index=1), "GPU indexes repeat"),
    ("too many GPUs", telemetry(gpu_count=65), "more than 64"),
    ("GPU reading as a list", telemetry(gpus=[[0, 50]]), "each GPU reading must be an object"),
]


@pytest.mark.parametrize("payload, reason", [case[1:] for case in BAD_TELEMETRY], ids=[c[0] for c in BAD_TELEMETRY])
def test_it_rejects_malformed_telemetry_with_a_reason(payload, reason):
    with pytest.raises(ReportError, match=reason):
        clean_telemetry(payload)


def test_it_accepts_an_operation_outcome():
    clean = clean_operation({"operation": 7, "status": "succeeded", "message": "2 GPUs detected",
                             "result": {"gpus": 2}})
    assert (clean["operation"], clean["status"], clean["message"], clean["result"]) == (
        7, "succeeded", "2 GPUs detected", {"gpus": 2})


@pytest.mark.parametrize(
    "payload, reason",
    [
        ({"operation": 7, "status": "queued"}, "operation status 'queued' is not one of"),
        ({"operation": 7, "status": "done"}, "is not one of"),
        ({"status": "succeeded"}, "operation is missing"),
        ({"operation": "7", "status": "succeeded"}, "operation must be a number"),
        ({"operation": 0, "status": "succeeded"}, "operation=0 is outside"),
        ({"operation": 7, "status": "failed", "result": ["x"]}, "result must be an object"),
        ({"operation": 7, "status": "succeeded", "result": {"blob": "x" * 5_000_000}},
         "result is 5000012 bytes, more than 131072"),
        ({"operation": 7, "status": "succeeded", "result": {"text": "an answer\x00"}}, "result contains a NUL"),
        ({"operation": 7, "status": "running", "result": {"steps": [{"k\x00": 1}]}}, "result contains a NUL"),
    ],
)
def test_it_rejects_a_malformed_operation_outcome(payload, reason):
    with pytest.raises(ReportError, match=reason):
        clean_operation(payload)
