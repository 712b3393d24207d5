"""The Morpheus proxy-router of each rig: what the provider asked for, and what the rig last reported."""

from django.db import models

from nodes.agent.protocol import ROUTER_NETWORKS, ROUTER_STATES
from nodes.models import Node

MOR = 10**18


class Router(models.Model):
    node = models.OneToOneField(Node, on_delete=models.CASCADE, related_name="router")
    # Desired: where the binary is on the rig, which chain, the ports it listens on.
    network = models.CharField(max_length=10, choices=[(n, n) for n in ROUTER_NETWORKS], default="mainnet")
    binary_path = models.CharField(max_length=4096)
    proxy_port = models.PositiveIntegerField(default=3333)
    web_port = models.PositiveIntegerField(default=8082)
    # Reported: the rig's last `router` report, as validated by nodes.reports.clean_router.
    state = models.CharField(max_length=20, choices=[(s, s) for s in ROUTER_STATES], default="stopped")
    snapshot = models.JSONField(default=dict, blank=True)
    reported_at = models.DateTimeField(null=True, blank=True)
    report_seq = models.BigIntegerField(default=0)

    def __str__(self):
        return f"proxy-router on {self.node.name}"

    @property
    def open_sessions(self):
        return self.snapshot.get("open_sessions") or 0

    @property
    def is_running(self):
        return self.state in ("starting", "healthy", "degraded", "unresponsive")
