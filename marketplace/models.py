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


class RouterSession(models.Model):
    """One marketplace session with this rig's provider, as its router reported it (chain times, wei as text).

    `deployment` is the rig's deployment published under the session's model (its Listing), when there is one.
    Tokens served are read from that deployment's cumulative generated-token counter (its serving metrics): once
    when the panel first saw the session open and once when it first saw it closed. The deployment serves every
    session of that model, so the difference is what the deployment generated while the session was open."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="router_sessions")
    session_id = models.CharField(max_length=66)
    model_id = models.CharField(max_length=66)
    bid_id = models.CharField(max_length=66)
    user = models.CharField(max_length=42, blank=True)
    price_per_second = models.CharField(max_length=78)  # wei
    stake = models.CharField(max_length=78, blank=True)  # wei
    opened_at = models.DateTimeField()
    ends_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    claimable_wei = models.CharField(max_length=78, blank=True)  # the last balance read; "" never read
    claimable_at = models.DateTimeField(null=True, blank=True)
    deployment = models.ForeignKey("hosting.Deployment", null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="router_sessions")
    # The deployment's tokens_generated when the session was first seen open / closed, and its server's start then
    # (a restarted server counts from zero again).
    tokens_at_open = models.BigIntegerField(null=True, blank=True)
    tokens_at_close = models.BigIntegerField(null=True, blank=True)
    server_started_at = models.DateTimeField(null=True, blank=True)
    tokens_note = models.CharField(max_length=120, blank=True)  # why tokens served are not known
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()

    class Meta:
        ordering = ["-opened_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["node", "session_id"], name="routersession_once_per_rig")]
        indexes = [models.Index(fields=["node", "-opened_at"], name="routersession_newest")]

    def __str__(self):
        return f"session {self.session_id[:10]}… on {self.node_id}"

    @property
    def is_open(self):
        return self.closed_at is None

    @property
    def tokens_served(self):
        """Tokens the deployment generated while the session was open, when both readings are known."""
        if self.tokens_at_open is None or self.tokens_at_close is None or self.tokens_at_close < self.tokens_at_open:
            return None
        return self.tokens_at_close - self.tokens_at_open


class RouterEvent(models.Model):
    """A change of the rig's proxy-router process worth a place on the sessions timeline: a start, a restart (every
    restart ends the open sessions) or an exit (a crash into backoff, a give-up, a stop). Server exits are the
    deployments' own rows (hosting.ServerExit), read into the same timeline."""

    STARTED, RESTARTED, EXITED = "router_started", "router_restarted", "router_exited"
    KINDS = [(STARTED, "router started"), (RESTARTED, "router restarted"), (EXITED, "router exited")]

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="router_events")
    at = models.DateTimeField()
    kind = models.CharField(max_length=20, choices=KINDS)
    detail = models.CharField(max_length=300, blank=True)
    report_seq = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["node", "-at"], name="routerevent_newest")]

    def __str__(self):
        return f"{self.get_kind_display()} on {self.node_id} at {self.at:%Y-%m-%d %H:%M:%S}"

    @property
    def cuts_sessions(self):
        return self.kind in (self.RESTARTED, self.EXITED)
