"""Personal API tokens: shown once, stored as a SHA-256 hash, acting with their owner's role at each request."""

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

SCHEME = "mor_"  # recognisable in a leaked config file or a secret scanner
PREFIX_LENGTH = len(SCHEME) + 8  # the part kept in clear: shown in lists, used to find the row
TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often per token


def digest(secret):
    # A token has 256 random bits: a plain hash cannot be brute-forced, so no slow password hash is needed.
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What it is for, e.g. 'grafana' or 'deploy script'")
    prefix = models.CharField(max_length=PREFIX_LENGTH, unique=True)
    hashed = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def issue(cls, user, name, expires_at=None):
        """A new token: (row, secret). The secret exists only in this return value; show it once."""
        while True:
            secret = SCHEME + secrets.token_urlsafe(32)
            if not cls.objects.filter(prefix=secret[:PREFIX_LENGTH]).exists():
                break
        token = cls.objects.create(user=user, name=name, prefix=secret[:PREFIX_LENGTH], hashed=digest(secret),
                                   expires_at=expires_at)
        return token, secret

    @classmethod
    def find(cls, secret, now=None):
        """The usable token for `secret`, or None: unknown, revoked, expired, or its user deactivated."""
        if not isinstance(secret, str) or not secret.startswith(SCHEME) or len(secret) > 100:
            return None
        token = cls.objects.select_related("user").filter(prefix=secret[:PREFIX_LENGTH]).first()
        if token is None or not hmac.compare_digest(token.hashed, digest(secret)):
            return None
        return token if token.usable(now) else None

    def usable(self, now=None):
        now = now or timezone.now()
        return (self.revoked_at is None and (self.expires_at is None or self.expires_at > now)
                and self.user.is_active)

    @property
    def state(self):
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= timezone.now():
            return "expired"
        return "active"

    def touch(self, now=None):
        """Record a use, at most once a minute: one conditional UPDATE, so a busy script costs no write per call."""
        now = now or timezone.now()
        if self.last_used_at is not None and now - self.last_used_at < TOUCH_EVERY:
            return False  # read with the token a moment ago: no query at all
        stale = Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - TOUCH_EVERY)
        if ApiToken.objects.filter(stale, pk=self.pk).update(last_used_at=now):
            self.last_used_at = now
            return True
        return False

    def revoke(self, now=None):
        """Revoke once; returns False when it was revoked already."""
        now = now or timezone.now()
        if ApiToken.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=now):
            self.revoked_at = now
            return True
        return False
