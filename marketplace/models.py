"""The Morpheus proxy-router of each rig: what the provider asked for, and what the rig last reported."""

from django.conf import settings
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


class Listing(models.Model):
    """A deployment published on the Morpheus marketplace through its rig's proxy-router: one models-config entry.

    `model_id` is the on-chain model the entry serves (0x + 64 hex, lowercase as the router looks it up): one the
    provider registered (the id the router returned, not the one sent) or an existing model they bid on.
    """
    CAPACITY_POLICIES = ("simple", "idle_timeout")

    deployment = models.OneToOneField("hosting.Deployment", on_delete=models.CASCADE, related_name="listing")
    model_id = models.CharField(max_length=66)
    model_name = models.CharField(max_length=200)
    # None: the deployment's latest benchmark recommendation, else its parallel slots.
    concurrent_slots = models.PositiveIntegerField(null=True, blank=True)
    capacity_policy = models.CharField(max_length=20, choices=[(p, p) for p in CAPACITY_POLICIES], default="simple")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"{self.model_name} ({self.deployment}) on the marketplace"
