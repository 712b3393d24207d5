"""Alerts: rules (what to watch, with thresholds), alerts (one row per cause and episode), their history, and the
channels that tell a person (email, webhooks)."""

from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from morpheus_admin.sealing import SealedTextField

# What each kind watches and which thresholds it reads; alerts/rules.py evaluates them, the migration seeds them.
KINDS = {
    "rig_offline": ("Rig offline", "A rig's agent has not reported for 5 telemetry intervals.", ("for_minutes",)),
    "gpu_temperature": ("GPU hot", "A GPU above the temperature limit (°C) for N minutes.", ("limit", "for_minutes")),
    "vram_full": ("VRAM nearly full", "A GPU's memory use above the limit (%) for N minutes.",
                  ("limit", "for_minutes")),
    "disk_full": ("Disk nearly full", "Free space on a rig's data disk below the limit (%) or below the free GB.",
                  ("limit", "free_gb", "for_minutes")),
    "deployment_failed": ("Deployment failed", "A deployment that should run is failed on its rig.", ("for_minutes",)),
    "crash_loop": ("Deployment crash looping", "At least N server exits within the window (minutes).",
                   ("limit", "window_minutes")),
    "clock_skew": ("Clock skew", "A rig's clock is more than the limit (seconds) off the panel's.",
                   ("limit", "for_minutes")),
    "router_unhealthy": ("Proxy-router unhealthy", "A rig's proxy-router is degraded, unresponsive, failed or in "
                         "backoff, or stopped while deployments are published.", ("for_minutes",)),
    "bid_model_down": ("Bid on a model that is down", "An active bid whose deployment is not healthy, or whose "
                       "endpoint the router's probe finds unhealthy.", ("for_minutes",)),
}

THRESHOLD_LABELS = {
    "limit": {"gpu_temperature": "limit (°C)", "vram_full": "limit (% used)", "disk_full": "limit (% free)",
              "crash_loop": "exits", "clock_skew": "limit (seconds)"},
    "free_gb": "free space below (GB)",
    "window_minutes": "within (minutes)",
    "for_minutes": "for at least (minutes)",
}


class Rule(models.Model):
    kind = models.CharField(max_length=30, unique=True, choices=[(k, v[0]) for k, v in KINDS.items()])
    enabled = models.BooleanField(default=True)
    limit = models.FloatField(null=True, blank=True, validators=[MinValueValidator(0), MaxValueValidator(10**6)])
    free_gb = models.FloatField(null=True, blank=True, validators=[MinValueValidator(0), MaxValueValidator(10**6)])
    window_minutes = models.FloatField(null=True, blank=True,
                                       validators=[MinValueValidator(0.1), MaxValueValidator(7 * 24 * 60)])
    # The condition must hold this long before the alert opens (a pending alert remembers when it was first seen).
    for_minutes = models.FloatField(default=0, validators=[MinValueValidator(0), MaxValueValidator(7 * 24 * 60)])
    updated = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return self.title

    @property
    def title(self):
        return KINDS[self.kind][0]

    @property
    def description(self):
        return KINDS[self.kind][1]

    @property
    def fields_used(self):
        return KINDS[self.kind][2]

    def summary(self):
        parts = []
        for name in self.fields_used:
            value = getattr(self, name)
            if value is None or (name == "for_minutes" and not value):
                continue
            label = THRESHOLD_LABELS[name]
            label = label.get(self.kind, name) if isinstance(label, dict) else label
            parts.append(f"{label} {value:g}")
        return ", ".join(parts)


class Alert(models.Model):
    """One episode of one cause (the rule and its object: "rig:alpha", "gpu:alpha:0", "deployment:12"): pending while
    the condition has not held for the rule's minutes yet, open, then resolved. At most one unresolved row per cause
    (the constraint), so a cause that stays true never opens a second alert."""

    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="alerts")
    cause = models.CharField(max_length=200)
    rig = models.CharField(max_length=40, blank=True)  # the rig it is about, to hold it while that rig is unheard
    first_seen = models.DateTimeField(default=timezone.now)
    opened_at = models.DateTimeField(null=True, blank=True, db_index=True)
    resolved_at = models.DateTimeField(null=True, blank=True, db_index=True)
    value = models.FloatField(null=True, blank=True)
    message = models.CharField(max_length=500)
    # Done telling (sent, or given up after settings.ALERT_NOTIFY_ATTEMPTS tries) for the open / the resolution.
    notified_open_at = models.DateTimeField(null=True, blank=True)
    notified_resolved_at = models.DateTimeField(null=True, blank=True)
    # A worker sending now holds this; a claim older than a minute is taken to be a dead worker's.
    notify_claimed_at = models.DateTimeField(null=True, blank=True)
    notify_attempts = models.PositiveSmallIntegerField(default=0)
    retry_channels = models.JSONField(default=list, blank=True)  # channel ids whose last try failed

    class Meta:
        ordering = ["-first_seen", "-id"]
        constraints = [models.UniqueConstraint(fields=["rule", "cause"], condition=Q(resolved_at__isnull=True),
                                               name="alert_one_unresolved_per_cause")]

    def __str__(self):
        return f"{self.cause}: {self.state}"

    @property
    def state(self):
        if self.resolved_at:
            return "resolved"
        return "open" if self.opened_at else "pending"


class AlertEvent(models.Model):
    OPENED, RESOLVED, NOTIFIED, FAILED, SKIPPED = "opened", "resolved", "notified", "notify_failed", "not_notified"
    KINDS = [(OPENED, "opened"), (RESOLVED, "resolved"), (NOTIFIED, "notified"), (FAILED, "notification failed"),
             (SKIPPED, "not notified")]

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=15, choices=KINDS)
    channel = models.CharField(max_length=100, blank=True)
    detail = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["at", "id"]


def validate_webhook_url(url):
    """http(s) with a host and no user:password (the secret belongs in the path, which is sealed)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValidationError("Not a valid URL.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Use an http:// or https:// URL with a host.")
    if parts.username or parts.password:
        raise ValidationError("Put no user:password in the URL; receivers take their secret in the path or query.")
    if port == 0:
        raise ValidationError("Not a valid port.")


class Channel(models.Model):
    EMAIL, WEBHOOK = "email", "webhook"
    KIND_CHOICES = [(EMAIL, "email"), (WEBHOOK, "webhook (Slack, Discord or any JSON receiver)")]

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=10, choices=KIND_CHOICES)
    # An email address, or a webhook URL: sealed at rest (a Slack or Discord URL is its own secret), shown only as
    # its origin.
    target = SealedTextField()
    enabled = models.BooleanField(default=True)
    created = models.DateTimeField(default=timezone.now)
    last_test_at = models.DateTimeField(null=True, blank=True)
    last_test_result = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("alert_channel_edit", args=[self.pk])

    @property
    def target_shown(self):
        """What a page may show: the address, or only the webhook's scheme and host."""
        if self.kind == self.EMAIL:
            return self.target
        parts = urlsplit(self.target)
        return f"{parts.scheme}://{parts.netloc}/…" if parts.netloc else "(not set)"
