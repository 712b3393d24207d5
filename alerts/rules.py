"""What each rule kind finds firing now: pure reads of what the panel holds, a fixed number of queries per kind.

`evaluate(rule, fleet)` returns a Result: the firing causes (object key → Finding) and the rigs whose alerts are held
as they are, because the panel has not heard from them (a GPU of an unheard rig is neither hot nor cool to us: its
"rig offline" alert speaks for it).
"""

from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property

from django.db.models import Count

from hosting.models import Deployment, ServerExit
from marketplace.checklist import _lined_up, short
from marketplace.models import Listing, Router
from nodes.models import GPU, Node

GB = 10**9


@dataclass(frozen=True)
class Finding:
    cause: str
    rig: str
    value: float | None
    message: str


@dataclass
class Result:
    firing: dict = field(default_factory=dict)
    unheard: set = field(default_factory=set)

    def add(self, cause, rig, value, message):
        self.firing[cause] = Finding(cause, rig, value, message[:500])


class Fleet:
    """What the rules read, each loaded once per evaluation and only when a rule asks for it."""

    def __init__(self, now):
        self.now = now

    @cached_property
    def nodes(self):
        return list(Node.objects.only("id", "name", "last_seen", "telemetry_interval", "clock_offset", "hardware",
                                      "host_reading"))

    @cached_property
    def online(self):
        return {node.pk: node for node in self.nodes if node.status_at(self.now) == Node.ONLINE}

    @cached_property
    def unheard(self):
        return {node.name for node in self.nodes if node.pk not in self.online}

    @cached_property
    def gpus(self):
        return list(GPU.objects.filter(node_id__in=list(self.online)).select_related("node").only(
            "index", "name", "vram_total", "vram_used", "temp_c", "node__name"))


def rig_offline(rule, fleet):
    result = Result()
    for node in fleet.nodes:
        if node.last_seen is not None and node.status_at(fleet.now) == Node.OFFLINE:
            age = (fleet.now - node.last_seen).total_seconds()
            result.add(f"rig:{node.name}", node.name, round(age),
                       f"{node.name} is offline: its agent last reported at {node.last_seen:%Y-%m-%d %H:%M:%S} UTC.")
    return result


def gpu_temperature(rule, fleet):
    result = Result(unheard=fleet.unheard)
    for gpu in fleet.gpus:
        if gpu.temp_c is not None and gpu.temp_c > rule.limit:
            result.add(f"gpu:{gpu.node.name}:{gpu.index}", gpu.node.name, gpu.temp_c,
                       f"{gpu.node.name} GPU {gpu.index} ({gpu.name}) is at {gpu.temp_c:.0f} °C "
                       f"(limit {rule.limit:g} °C).")
    return result


def vram_full(rule, fleet):
    result = Result(unheard=fleet.unheard)
    for gpu in fleet.gpus:
        if gpu.vram_used is None or not gpu.vram_total:
            continue
        used = 100 * gpu.vram_used / gpu.vram_total
        if used > rule.limit:
            result.add(f"gpu:{gpu.node.name}:{gpu.index}", gpu.node.name, round(used, 1),
                       f"{gpu.node.name} GPU {gpu.index} ({gpu.name}) has {used:.0f} % of its VRAM in use "
                       f"(limit {rule.limit:g} %).")
    return result


def disk_full(rule, fleet):
    result = Result(unheard=fleet.unheard)
    for node in fleet.online.values():
        free = (node.host_reading or {}).get("disk_free")
        total = (node.hardware or {}).get("disk_total")
        if free is None:
            continue
        percent = 100 * free / total if total else None
        low_percent = rule.limit is not None and percent is not None and percent < rule.limit
        low_bytes = rule.free_gb is not None and free < rule.free_gb * GB
        if low_percent or low_bytes:
            of_total = f" ({percent:.1f} % of {total / GB:.0f} GB)" if percent is not None else ""
            result.add(f"disk:{node.name}", node.name, round(free / GB, 2),
                       f"{node.name} has {free / GB:.1f} GB free on its data disk{of_total}.")
    return result


def deployment_failed(rule, fleet):
    result = Result(unheard=fleet.unheard)
    failed = Deployment.objects.filter(desired_state=Deployment.RUNNING, actual_state="failed",
                                       node_id__in=list(fleet.online)).select_related("node").only(
        "name", "message", "node__name")
    for deployment in failed:
        why = (deployment.message or "").strip().splitlines()
        result.add(f"deployment:{deployment.pk}", deployment.node.name, None,
                   f"{deployment.node.name}/{deployment.name} failed{': ' + why[0] if why else ''}.")
    return result


def crash_loop(rule, fleet):
    """Server exits are facts already received: counted whatever the rig's state now (nothing is held)."""
    result = Result()
    window = rule.window_minutes or 10
    rows = (ServerExit.objects.filter(at__gte=fleet.now - timedelta(minutes=window))
            .values("deployment_id", "deployment__name", "deployment__node__name")
            .annotate(exits=Count("id")).filter(exits__gte=rule.limit or 3))
    for row in rows:
        rig = row["deployment__node__name"]
        result.add(f"deployment:{row['deployment_id']}", rig, row["exits"],
                   f"{rig}/{row['deployment__name']} crashed {row['exits']} times in the last {window:g} minutes.")
    return result


def clock_skew(rule, fleet):
    result = Result(unheard=fleet.unheard)
    for node in fleet.online.values():
        if node.clock_offset is not None and abs(node.clock_offset) > rule.limit:
            ahead = "ahead of" if node.clock_offset > 0 else "behind"
            result.add(f"rig:{node.name}", node.name, round(node.clock_offset, 1),
                       f"{node.name}'s clock is {abs(node.clock_offset):.0f} s {ahead} the panel's "
                       f"(limit {rule.limit:g} s): signed messages may be refused as expired.")
    return result


ROUTER_FINE = ("healthy", "starting")


def router_unhealthy(rule, fleet):
    result = Result(unheard=fleet.unheard)
    publishing = set(Listing.objects.values_list("deployment__node_id", flat=True))
    for router in Router.objects.filter(node_id__in=list(fleet.online)).select_related("node").only(
            "state", "snapshot", "node__name"):
        if router.state in ROUTER_FINE or (router.state == "stopped" and router.node_id not in publishing):
            continue
        why = ((router.snapshot or {}).get("message") or "").strip().splitlines()
        result.add(f"router:{router.node.name}", router.node.name, None,
                   f"The proxy-router on {router.node.name} is {router.state}{': ' + why[0][:200] if why else ''}.")
    return result


def bid_model_down(rule, fleet):
    """An active bid (the router's last report) whose model has no deployment published, whose deployment is not
    healthy, or whose endpoint the router's own probe finds unhealthy: sessions opened on it fail."""
    result = Result(unheard=fleet.unheard)
    published = {}
    for listing in Listing.objects.filter(deployment__node_id__in=list(fleet.online)).select_related(
            "deployment__node"):
        published[(listing.deployment.node_id, listing.model_id)] = listing
    for router in Router.objects.filter(node_id__in=list(fleet.online)).select_related("node").only(
            "snapshot", "node__name", "node__last_seen", "node__telemetry_interval"):
        bids, _config, health = _lined_up(router.snapshot or {})
        rig = router.node.name
        for model_id in sorted(bids):
            listing = published.get((router.node_id, model_id))
            if listing is None:
                why = "no deployment is published for it"
            elif not listing.deployment.is_healthy:
                deployment = listing.deployment
                state = deployment.actual_state if deployment.desired_state == deployment.RUNNING else "stopped"
                why = f"its deployment {deployment.name} is {state}"
            elif health.get(model_id) == "unhealthy":
                why = "the router's probe of its endpoint fails"
            else:
                continue
            result.add(f"bid:{rig}:{model_id}", rig, None,
                       f"Your bid on model {short(model_id)} on {rig} is active but {why}: sessions opened on it fail.")
    return result


EVALUATORS = {
    "rig_offline": rig_offline,
    "gpu_temperature": gpu_temperature,
    "vram_full": vram_full,
    "disk_full": disk_full,
    "deployment_failed": deployment_failed,
    "crash_loop": crash_loop,
    "clock_skew": clock_skew,
    "router_unhealthy": router_unhealthy,
    "bid_model_down": bid_model_down,
}


def evaluate(rule, fleet):
    return EVALUATORS[rule.kind](rule, fleet)
