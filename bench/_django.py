"""Shared set-up for the benchmarks: a throwaway SQLite database (or DATABASE_URL), migrated, Django ready."""

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GiB = 1024**3


def setup(database_url=None, debug=False):
    """Configure Django against a fresh database; returns the temp folder (caller removes it)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    workdir = Path(tempfile.mkdtemp(prefix="morpheus-bench-"))
    os.environ["DATABASE_URL"] = database_url or f"sqlite:///{workdir / 'bench.sqlite3'}"
    os.environ["DJANGO_SETTINGS_MODULE"] = "morpheus_admin.settings"
    os.environ["DJANGO_DEBUG"] = "true" if debug else "false"
    os.environ["MORPHEUS_DATA_DIR"] = str(workdir / "var")
    os.environ.setdefault("MORPHEUS_LOG_LEVEL", "WARNING")
    os.environ.pop("MORPHEUS_ENV", None)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    return workdir


def hardware_payload(gpus=8, interval=5.0):
    """A hardware report as the agent sends it (2× RTX 3090 rig, scaled to `gpus` cards)."""
    return {
        "cpu_model": "13th Gen Intel(R) Core(TM) i7-13700K",
        "cpu_cores_physical": 16,
        "cpu_cores_logical": 24,
        "ram_total": 64 * GiB,
        "disk_total": 1000 * 10**9,
        "disk_free": 700 * 10**9,
        "data_dir": "/var/lib/morpheus-agent",
        "os": "Ubuntu 24.04.1 LTS",
        "kernel": "6.8.0-49-generic",
        "hostname": "rig",
        "driver_version": "560.35.03",
        "cuda_version": "12.6",
        "gpu_note": "",
        "telemetry_interval": interval,
        "protocol": 1,
        "gpus": [
            {
                "index": i,
                "name": "NVIDIA GeForce RTX 3090",
                "uuid": f"GPU-{i:08x}-0000-0000-0000-000000000000",
                "vram_total": 24 * GiB,
                "power_limit_w": 350.0,
                "pcie_gen": 4,
                "pcie_width": 16,
                "pcie_gen_max": 4,
                "pcie_width_max": 16,
                "compute_capability": "8.6",
            }
            for i in range(gpus)
        ],
    }


def telemetry_payload(at, seed, gpus=8):
    """A telemetry report as the agent sends it; `seed` varies the readings."""
    return {
        "at": at,
        "host": {"cpu_percent": float(seed % 100), "ram_used": (8 + seed % 40) * GiB, "ram_total": 64 * GiB,
                 "disk_free": 700 * 10**9},
        "gpus": [
            {
                "index": i,
                "uuid": f"GPU-{i:08x}-0000-0000-0000-000000000000",
                "util": (seed * 7 + i * 13) % 101,
                "vram_used": ((seed + i) % 24) * GiB,
                "vram_total": 24 * GiB,
                "temp_c": 40.0 + (seed + i) % 45,
                "power_w": 100.0 + (seed * 3 + i) % 250,
                "fan": (seed + i) % 100,
                "sm_clock": 1395 + (seed + i) % 400,
            }
            for i in range(gpus)
        ],
    }


def wait_until(predicate, timeout, what, every=0.005):
    """Poll until predicate() is truthy and return it; stop the benchmark with what it waited for otherwise."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise SystemExit(f"timed out waiting for {what}")


class PanelWithRig:
    """A throwaway Redis, a real panel worker and one real rig agent ("bench-rig"), ready when constructed."""

    def __init__(self, workdir, agent_env=None):
        from morpheus_admin import localredis
        from morpheus_admin.celery import app
        from nodes.models import Node
        from tests import harness

        self.workdir, self.agent_env, self.data_dir = Path(workdir), agent_env or {}, Path(workdir) / "rig"
        self.redis_proc, self.redis_url = localredis.start(self.workdir / "redis")
        app.conf.broker_url = self.redis_url
        env = harness.panel_env(self.redis_url, os.environ["DATABASE_URL"], MORPHEUS_LOG_LEVEL="WARNING")
        self.worker = harness.panel_worker(env, self.workdir).start()
        self.node = Node(name="bench-rig")
        self.token = self.node.set_new_token()
        self.node.save()
        self.agent = None
        self.worker.wait_for_log("ready.", timeout=60)
        self.start_agent()

    def start_agent(self):
        from tests import harness

        self.agent = harness.agent("bench-rig", self.token, self.redis_url, self.data_dir, self.workdir,
                                   interval=5.0, extra_env=self.agent_env).start()
        self.agent.wait_for_log("ready.", timeout=60)

    def stop(self):
        if self.agent is not None:
            self.agent.stop()
        self.worker.stop()
        self.redis_proc.terminate()
