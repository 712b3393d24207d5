"""Who did what, when, from where, and how it ended: the actions that are not Operation rows (logins, API tokens,
roles, rigs enrolled and removed, ...). Operations are their own audit trail (DESIGN.md); the audit page reads both.
"""

from django.conf import settings
from django.db import models


class AuditEvent(models.Model):
    OK, REFUSED, FAILED = "ok", "refused", "failed"
    OUTCOMES = [(OK, "ok"), (REFUSED, "refused"), (FAILED, "failed")]
    WEB, API, SYSTEM = "web", "api", "system"
    CHANNELS = [(WEB, "web"), (API, "API"), (SYSTEM, "system")]

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="+")
    username = models.CharField(max_length=150, blank=True)  # kept when the user is deleted, or for a failed login
    action = models.CharField(max_length=50, db_index=True)  # e.g. "login", "token.create", "rig.enrol"
    target = models.CharField(max_length=300, blank=True)
    outcome = models.CharField(max_length=10, choices=OUTCOMES, default=OK)
    address = models.GenericIPAddressField(null=True, blank=True)
    via = models.CharField(max_length=10, choices=CHANNELS, default=WEB)
    detail = models.JSONField(default=dict, blank=True)  # never a secret

    class Meta:
        ordering = ["-at", "-pk"]

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.username or '-'} {self.action} {self.target} ({self.outcome})"
