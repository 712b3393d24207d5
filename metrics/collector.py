"""The fleet as Prometheus series, read from what the panel already holds: five queries per scrape at any size.

GPU series follow dcgm-exporter's names, units and labels (`gpu`, `UUID`, `modelName`) so dashboards and alerts
written for it read these too: DCGM_FI_DEV_GPU_UTIL (%), DCGM_FI_DEV_FB_USED / DCGM_FI_DEV_FB_FREE (MiB),
DCGM_FI_DEV_GPU_TEMP (C), DCGM_FI_DEV_POWER_USAGE (W) and DCGM_FI_DEV_SM_CLOCK (MHz) are in its default counters
(NVIDIA/dcgm-exporter etc/default-counters.csv); DCGM_FI_DEV_FAN_SPEED (%), DCGM_FI_DEV_FB_TOTAL (MiB) and
DCGM_FI_DEV_POWER_MGMT_LIMIT (W) are DCGM fields it exports when listed. Each adds the label `rig`.
Everything else is `morpheus_*`.
"""

import os
from datetime import datetime

from django.db.models import Count
from django.db.models.fields.json import KeyTransform
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from hosting.models import Deployment
from marketplace.models import Router
from nodes.agent.protocol import ROUTER_STATES
from nodes.models import GPU, OFFLINE_AFTER_INTERVALS, Node, Operation

MiB = 1024**2
GPU_LABELS = ["rig", "gpu", "UUID", "modelName"]
DEPLOYMENT_LABELS = ["rig", "deployment", "model"]
RIG_STATUSES = [status for status, _ in Node.STATUS_CHOICES]
DEPLOYMENT_STATES = [state for state, _ in Deployment.ACTUAL]
OPERATION_KINDS = [kind for kind, _ in Operation.KIND_CHOICES]
IN_PROGRESS = (Operation.QUEUED, Operation.RUNNING)

# (family, HELP, GPU row field, scale): the latest reading of each GPU.
GPU_READINGS = [
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", "util", 1),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", "vram_used", 1 / MiB),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", "temp_c", 1),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", "power_w", 1),
    ("DCGM_FI_DEV_FAN_SPEED", "Fan speed (in %).", "fan", 1),
    ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", "sm_clock", 1),
]
READING_NOTE = (" The rig's latest reading; absent once it is older than the rig's offline limit "
                f"({OFFLINE_AFTER_INTERVALS} telemetry intervals), so Prometheus marks the series stale instead of "
                "repeating an old value.")
# (family, HELP, serving key): a deployment's live serving metrics (llama-server's /metrics and /slots on the rig).
SERVING_GAUGES = [
    ("morpheus_deployment_generated_tokens_per_second", "Tokens generated per second between the rig's last two "
     "readings of the server.", "generated_tps"),
    ("morpheus_deployment_prompt_tokens_per_second", "Prompt tokens processed per second between the rig's last two "
     "readings of the server.", "prompt_tps"),
    ("morpheus_deployment_slots_busy", "Server slots busy with a request.", "slots_busy"),
    ("morpheus_deployment_slots_total", "Server slots (--parallel).", "slots_total"),
    ("morpheus_deployment_requests_processing", "Requests the server is processing.", "requests_processing"),
    ("morpheus_deployment_requests_deferred", "Requests waiting for a free slot.", "requests_deferred"),
    ("morpheus_deployment_kv_cache_used_tokens", "Tokens held in the slots' KV cache.", "kv_used"),
    ("morpheus_deployment_kv_cache_total_tokens", "The slots' context sizes together, in tokens.", "kv_total"),
]
SERVING_COUNTERS = [
    ("morpheus_deployment_generated_tokens", "Tokens generated since the server started (those of running requests "
     "included); a restarted server counts from zero.", "tokens_generated"),
    ("morpheus_deployment_prompt_tokens", "Prompt tokens processed since the server started (cached ones not); a "
     "restarted server counts from zero.", "prompt_tokens"),
]
SERVING_NOTE = (" Present only while the deployment is healthy on an online rig and its serving metrics are recent "
                "(3 telemetry intervals), as on the deployment page.")


def _age(now, moment):
    return (now - moment).total_seconds()


class FleetCollector:
    """A prometheus_client collector over the database; registered in a fresh CollectorRegistry per scrape."""

    def __init__(self, now=None):
        self.now = now

    def collect(self):
        now = self.now or timezone.now()
        rigs = list(Node.objects.order_by("name").values_list(
            "id", "name", "last_seen", "telemetry_interval", "clock_offset", "host_reading",
            KeyTransform("disk_total", "hardware")))
        names = {rig_id: name for rig_id, name, *_ in rigs}
        yield from self.rig_families(rigs, now)
        yield from self.gpu_families(names, now, {rig_id: interval for rig_id, _, _, interval, *_ in rigs})
        yield from self.deployment_families()
        yield from self.operation_families()
        yield from self.router_families()

    # --- rigs -----------------------------------------------------------------------------------------------------
    def rig_families(self, rigs, now):
        status = GaugeMetricFamily(
            "morpheus_rig_status", "1 for the rig's status now (new: enrolled, never heard; online; stale: a report "
            "is late; offline), 0 for the others.", labels=["rig", "status"])
        age = GaugeMetricFamily("morpheus_rig_last_seen_age_seconds", "Seconds since the panel applied the rig's "
                                "last report (absent for a rig never heard from).", labels=["rig"])
        interval = GaugeMetricFamily("morpheus_rig_telemetry_interval_seconds", "How often the rig's agent sends "
                                     "telemetry; a rig is stale after 2 and offline after 5 intervals.", labels=["rig"])
        clock = GaugeMetricFamily("morpheus_rig_clock_offset_seconds", "The rig's clock minus the panel's at its last "
                                  "report (time in the queue included).", labels=["rig"])
        host = {
            "cpu_percent": GaugeMetricFamily("morpheus_rig_cpu_percent", "Host CPU use (in %)." + READING_NOTE,
                                             labels=["rig"]),
            "ram_used": GaugeMetricFamily("morpheus_rig_ram_used_bytes", "Host RAM in use." + READING_NOTE,
                                          labels=["rig"]),
            "ram_total": GaugeMetricFamily("morpheus_rig_ram_total_bytes", "Host RAM." + READING_NOTE,
                                           labels=["rig"]),
            "disk_free": GaugeMetricFamily("morpheus_rig_disk_free_bytes", "Free space on the disk of the agent's "
                                           "data folder (models, builds)." + READING_NOTE, labels=["rig"]),
        }
        disk_total = GaugeMetricFamily("morpheus_rig_disk_total_bytes", "Size of the disk of the agent's data folder, "
                                       "from its last hardware report.", labels=["rig"])
        lag = GaugeMetricFamily(
            "morpheus_panel_ingest_lag_seconds", "Seconds since the panel worker last applied a report from any rig "
            "(now minus the newest rig last-seen time; absent before the first report). Every rig sends telemetry "
            "each interval, so this stays under the shortest interval while ingest keeps up, and grows when the panel "
            "worker or the broker is down or behind (or every rig is).")
        newest = None
        for _, name, last_seen, every, offset, reading, disk in rigs:
            current = Node(last_seen=last_seen, telemetry_interval=every).status_at(now)
            for choice in RIG_STATUSES:
                status.add_metric([name, choice], 1 if choice == current else 0)
            interval.add_metric([name], every)
            if last_seen is not None:
                age.add_metric([name], max(0.0, _age(now, last_seen)))
                newest = last_seen if newest is None else max(newest, last_seen)
            if offset is not None:
                clock.add_metric([name], offset)
            if isinstance(disk, (int, float)):
                disk_total.add_metric([name], disk)
            if reading and self._fresh_text(reading.get("at"), every, now):
                for key, family in host.items():
                    if isinstance(reading.get(key), (int, float)):
                        family.add_metric([name], reading[key])
        if newest is not None:
            lag.add_metric([], max(0.0, _age(now, newest)))
        yield from (status, age, interval, clock, *host.values(), disk_total, lag)

    @staticmethod
    def _fresh(moment, interval, now):
        return moment is not None and _age(now, moment) <= OFFLINE_AFTER_INTERVALS * interval

    def _fresh_text(self, text, interval, now):
        try:
            moment = datetime.fromisoformat(text)
        except (TypeError, ValueError):
            return False
        return self._fresh(moment, interval, now)

    # --- GPUs -----------------------------------------------------------------------------------------------------
    def gpu_families(self, names, now, intervals):
        readings = [(GaugeMetricFamily(name, text + READING_NOTE, labels=GPU_LABELS), field, scale)
                    for name, text, field, scale in GPU_READINGS]
        free = GaugeMetricFamily("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB): total minus used."
                                 + READING_NOTE, labels=GPU_LABELS)
        total = GaugeMetricFamily("DCGM_FI_DEV_FB_TOTAL", "Framebuffer memory (in MiB), from the rig's hardware "
                                  "report.", labels=GPU_LABELS)
        limit = GaugeMetricFamily("DCGM_FI_DEV_POWER_MGMT_LIMIT", "Power limit (in W), from the rig's hardware "
                                  "report.", labels=GPU_LABELS)
        fields = ["node_id", "index", "uuid", "name", "vram_total", "power_limit_w", "reading_at",
                  *(field for _, field, _ in readings)]
        for row in GPU.objects.order_by("node_id", "index").values_list(*fields):
            gpu = dict(zip(fields, row))
            if gpu["node_id"] not in names:  # its rig was enrolled between the two queries: next scrape
                continue
            labels = [names[gpu["node_id"]], str(gpu["index"]), gpu["uuid"], gpu["name"]]
            total.add_metric(labels, gpu["vram_total"] / MiB)
            if gpu["power_limit_w"] is not None:
                limit.add_metric(labels, gpu["power_limit_w"])
            if not self._fresh(gpu["reading_at"], intervals[gpu["node_id"]], now):
                continue
            for family, field, scale in readings:
                if gpu[field] is not None:
                    family.add_metric(labels, gpu[field] * scale)
            if gpu["vram_used"] is not None:
                free.add_metric(labels, (gpu["vram_total"] - gpu["vram_used"]) / MiB)
        yield from (family for family, _, _ in readings)
        yield from (free, total, limit)

    # --- deployments ----------------------------------------------------------------------------------------------
    def deployment_families(self):
        state = GaugeMetricFamily("morpheus_deployment_state", "1 for the state the rig last reported for the "
                                  "deployment's llama-server (pending: no report yet), 0 for the others.",
                                  labels=[*DEPLOYMENT_LABELS, "state"])
        desired = GaugeMetricFamily("morpheus_deployment_desired_running", "1 when the provider wants the deployment "
                                    "running, 0 when stopped.", labels=DEPLOYMENT_LABELS)
        restarts = CounterMetricFamily("morpheus_deployment_restarts", "Automatic restarts of the server after a "
                                       "crash, as the rig counts them since the panel last launched it.",
                                       labels=DEPLOYMENT_LABELS)
        gauges = [(GaugeMetricFamily(name, text + SERVING_NOTE, labels=DEPLOYMENT_LABELS), key)
                  for name, text, key in SERVING_GAUGES]
        counters = [(CounterMetricFamily(name, text + SERVING_NOTE, labels=DEPLOYMENT_LABELS), key)
                    for name, text, key in SERVING_COUNTERS]
        rows = (Deployment.objects.select_related("node", "model_file")
                .only("name", "desired_state", "actual_state", "restarts", "serving", "serving_at",
                      "node__name", "node__last_seen", "node__telemetry_interval", "model_file__path")
                .order_by("node__name", "name"))
        for deployment in rows:
            labels = [deployment.node.name, deployment.name, os.path.basename(deployment.model_file.path)]
            for choice in DEPLOYMENT_STATES:
                state.add_metric([*labels, choice], 1 if choice == deployment.actual_state else 0)
            desired.add_metric(labels, 1 if deployment.desired_state == Deployment.RUNNING else 0)
            restarts.add_metric(labels, deployment.restarts)
            live = deployment.live_serving  # the deployment page's own rule for "live"
            for family, key in (*gauges, *counters):
                if live and isinstance(live.get(key), (int, float)):
                    family.add_metric(labels, live[key])
        yield from (state, desired, restarts, *(family for family, _ in gauges), *(family for family, _ in counters))

    # --- operations -----------------------------------------------------------------------------------------------
    def operation_families(self):
        done = CounterMetricFamily("morpheus_operations", "Operations (rig work: builds, downloads, launches, "
                                   "benchmarks, ...) that ended, by kind and outcome; rows of a removed rig go with "
                                   "it.", labels=["kind", "outcome"])
        running = GaugeMetricFamily("morpheus_operations_in_progress", "Operations queued for a rig or running on it, "
                                    "by kind.", labels=["kind", "status"])
        counts = {(kind, status): n for kind, status, n in
                  Operation.objects.order_by().values_list("kind", "status").annotate(n=Count("id"))}
        for kind in OPERATION_KINDS:
            for outcome in Operation.TERMINAL:
                done.add_metric([kind, outcome], counts.get((kind, outcome), 0))
            for status in IN_PROGRESS:
                running.add_metric([kind, status], counts.get((kind, status), 0))
        yield from (done, running)

    # --- marketplace ----------------------------------------------------------------------------------------------
    def router_families(self):
        state = GaugeMetricFamily("morpheus_router_state", "1 for the state the rig last reported for its Morpheus "
                                  "proxy-router, 0 for the others.", labels=["rig", "state"])
        sessions = GaugeMetricFamily("morpheus_router_open_sessions", "Marketplace sessions open with the rig's "
                                     "provider, as its proxy-router last reported.", labels=["rig"])
        rows = (Router.objects.order_by("node__name")
                .values_list("node__name", "state", KeyTransform("open_sessions", "snapshot")))
        for rig, current, open_sessions in rows:
            for choice in ROUTER_STATES:
                state.add_metric([rig, choice], 1 if choice == current else 0)
            if isinstance(open_sessions, int):
                sessions.add_metric([rig], open_sessions)
        yield from (state, sessions)
