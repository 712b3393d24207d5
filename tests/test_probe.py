"""The rig-side probe against the fake NVML at the `pynvml` boundary; no database, no Django."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

from nodes.agent.probe import TelemetrySampler, probe_hardware
from nodes.reports import clean_hardware, clean_telemetry
from tests.harness import FAKES, ROOT

GiB = 1024**3


@pytest.fixture
def fake_nvml(monkeypatch):
    """Install a fresh copy of tests/fakes/pynvml.py as `pynvml`; returns a setter for FAKE_NVML."""
    spec = importlib.util.spec_from_file_location("pynvml", FAKES / "pynvml.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "pynvml", module)

    def use(value):
        monkeypatch.setenv("FAKE_NVML", value if isinstance(value, str) else json.dumps(value))
        return module

    return use


def test_it_detects_two_rtx_3090s_with_their_full_profile(fake_nvml, tmp_path):
    nvml = fake_nvml("2x3090")
    profile = probe_hardware(tmp_path / "data")

    assert profile["driver_version"] == "550.54.14"
    assert profile["cuda_version"] == "12.4"
    assert profile["gpu_note"] == ""
    assert [gpu["index"] for gpu in profile["gpus"]] == [0, 1]
    for gpu in profile["gpus"]:
        assert gpu["name"] == "NVIDIA GeForce RTX 3090"
        assert gpu["vram_total"] == 24 * GiB
        assert gpu["power_limit_w"] == 350
        assert (gpu["pcie_gen"], gpu["pcie_width"]) == (4, 16)
        assert gpu["compute_capability"] == "8.6"
    uuids = [gpu["uuid"] for gpu in profile["gpus"]]
    assert len(set(uuids)) == 2 and all(uuid.startswith("GPU-") for uuid in uuids)
    assert nvml._state["init"] == 0  # NVML is shut down again after the probe


def test_it_reports_the_host_and_its_data_folder(fake_nvml, tmp_path):
    fake_nvml("2x3090")
    data_dir = tmp_path / "data"
    profile = probe_hardware(data_dir)

    assert data_dir.is_dir()
    assert profile["data_dir"] == str(data_dir)
    assert profile["cpu_cores_logical"] >= profile["cpu_cores_physical"] >= 1
    assert profile["ram_total"] > 0
    assert 0 < profile["disk_free"] <= profile["disk_total"]
    assert profile["cpu_model"] and profile["os"] and profile["kernel"]


def test_it_reports_zero_gpus_and_says_why_without_a_driver(fake_nvml, tmp_path):
    fake_nvml("nodriver")
    profile = probe_hardware(tmp_path)

    assert profile["gpus"] == []
    assert "no NVIDIA driver" in profile["gpu_note"]
    assert profile["driver_version"] is None and profile["cuda_version"] is None
    assert profile["ram_total"] > 0  # the host part is still there


def test_it_notes_a_driver_that_sees_no_gpus(fake_nvml, tmp_path):
    fake_nvml([])
    profile = probe_hardware(tmp_path)
    assert profile["gpus"] == []
    assert profile["driver_version"] == "550.54.14"
    assert profile["gpu_note"] == "NVIDIA driver present, no GPUs found"


def test_it_leaves_unsupported_readings_empty_instead_of_crashing(fake_nvml, tmp_path):
    fake_nvml([{"name": "NVIDIA A2", "vram_gib": 16, "power_limit_w": 60, "cc": [8, 6], "fanless": True},
               {"name": "NVIDIA GeForce RTX 3090", "vram_gib": 24, "power_limit_w": 350, "cc": [8, 6]}])
    sampler = TelemetrySampler(tmp_path)
    try:
        reading = sampler.sample()
    finally:
        sampler.close()

    fanless, fanned = reading["gpus"]
    assert fanless["fan"] is None
    assert fanless["temp_c"] is not None and fanless["util"] is not None
    assert isinstance(fanned["fan"], int)


def test_it_samples_every_telemetry_field(fake_nvml, tmp_path):
    nvml = fake_nvml("2x3090")
    sampler = TelemetrySampler(tmp_path)
    try:
        first = sampler.sample()
        second = sampler.sample()
        assert nvml._state["init"] == 1  # NVML stays open between samples
    finally:
        sampler.close()
    assert nvml._state["init"] == 0

    for reading in (first, second):
        assert set(reading) == {"at", "host", "gpus"}
        assert set(reading["host"]) == {"cpu_percent", "ram_used", "ram_total", "disk_free", "listening_ports"}
        assert all(value is not None for value in reading["host"].values())
        assert [gpu["index"] for gpu in reading["gpus"]] == [0, 1]
        for gpu in reading["gpus"]:
            assert set(gpu) == {"index", "uuid", "util", "vram_used", "vram_total", "temp_c", "power_w", "fan",
                                "sm_clock"}
            assert all(value is not None for value in gpu.values()), gpu
            assert 0 <= gpu["util"] <= 100
            assert 0 < gpu["vram_used"] < gpu["vram_total"] == 24 * GiB
            assert 0 < gpu["power_w"] <= 350
    assert second["at"] >= first["at"]


def test_it_samples_the_host_alone_without_a_driver(fake_nvml, tmp_path):
    fake_nvml("nodriver")
    reading = TelemetrySampler(tmp_path).sample()
    assert reading["gpus"] == []
    assert reading["host"]["ram_used"] > 0


def test_it_produces_reports_the_panel_accepts(fake_nvml, tmp_path):
    fake_nvml("2x3090")
    profile = probe_hardware(tmp_path)
    profile["telemetry_interval"] = 5.0  # the agent adds it before sending
    hardware = clean_hardware(profile)
    sampler = TelemetrySampler(tmp_path)
    telemetry = clean_telemetry(sampler.sample())
    sampler.close()
    assert len(hardware["gpus"]) == len(telemetry["gpus"]) == 2
    assert hardware["gpus"][1]["compute_capability"] == "8.6"


AGENT_IMPORTS = textwrap.dedent("""
    import sys
    {prelude}
    import nodes.agent.probe, nodes.agent.worker
    print(sorted(name for name in sys.modules if name == "django" or name.startswith("django.")))
""")

# A rig without Django installed: any import of it fails, as it would there.
BLOCK_DJANGO = textwrap.dedent("""
    import importlib.abc
    class NoDjango(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "django" or name.startswith("django."):
                raise ImportError("Django is not installed on this rig")
    sys.meta_path.insert(0, NoDjango())
""")


def run_agent_imports(prelude, **env):
    base = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "DATABASE_"))}
    base.update({"MORPHEUS_BROKER_URL": "redis://127.0.0.1:1/0", "MORPHEUS_NODE": "alpha",
                 "MORPHEUS_NODE_TOKEN": "t" * 43, "PYTHONPATH": str(ROOT)}, **env)
    done = subprocess.run([sys.executable, "-c", AGENT_IMPORTS.format(prelude=prelude)], env=base, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().replace("'", '"'))


def test_it_runs_the_agent_on_a_host_without_django():
    assert run_agent_imports(BLOCK_DJANGO) == []


def test_it_keeps_the_agent_out_of_django_even_where_the_panel_settings_are_set():
    # A shared image may set DJANGO_SETTINGS_MODULE for the panel; the agent must still not load Django.
    modules = run_agent_imports("", DJANGO_SETTINGS_MODULE="morpheus_admin.settings")
    assert not [name for name in modules if name.startswith(("django.conf", "django.db", "django.apps"))], modules
