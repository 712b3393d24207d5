"""One alerts run, in steps a test can call one at a time: find what fires (`findings`), open new causes and promote
those that held long enough (`open_causes`), resolve those gone (`resolve_gone`), then tell each transition once
(`notify_due` → `notify_one`, claimed with a conditional UPDATE so two workers never send twice)."""

import logging
import time
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from alerts import notify, rules
from alerts.models import Alert, AlertEvent, Channel, Rule

log = logging.getLogger("morpheus.alerts")
CLAIM_STALE = timedelta(seconds=60)  # a claim older than this was a worker that died mid-send
NOTIFY_BUDGET = 30.0  # seconds of sending per run (inside the task's 60 s soft limit); the rest goes next run


def run(now=None):
    now = now or timezone.now()
    found = findings(now)
    unresolved = list(Alert.objects.filter(resolved_at=None).select_related("rule"))
    opened = open_causes(found, unresolved, now)
    resolved = resolve_gone(found, unresolved, now)
    sent = notify_due(now)
    return {"opened": opened, "resolved": resolved, "notified": sent}


def findings(now):
    """{rule: rules.Result} for every enabled rule, over one shared read of the fleet."""
    fleet = rules.Fleet(now)
    return {rule: rules.evaluate(rule, fleet) for rule in Rule.objects.filter(enabled=True)}


def open_causes(found, unresolved, now):
    """New causes become pending alerts (open at once when the rule has no minutes to wait); pending ones that held
    for the rule's minutes open; open ones take the latest value and message. Returns how many opened."""
    by_key = {(alert.rule_id, alert.cause): alert for alert in unresolved}
    opened, changed = 0, []
    for rule, result in found.items():
        wait = timedelta(minutes=rule.for_minutes)
        for cause, finding in result.firing.items():
            alert = by_key.get((rule.pk, cause))
            if alert is None:
                opened += _create(rule, finding, now, opens=not rule.for_minutes)
            elif alert.opened_at is None:
                if alert.first_seen <= now - wait:
                    opened += _promote(alert, finding, now)
            elif (alert.message, alert.value) != (finding.message, finding.value):
                alert.message, alert.value = finding.message, finding.value
                changed.append(alert)
    if changed:
        Alert.objects.bulk_update(changed, ["message", "value"])
    return opened


def _create(rule, finding, now, opens):
    try:
        with transaction.atomic():
            alert = Alert.objects.create(rule=rule, cause=finding.cause, rig=finding.rig, first_seen=now,
                                         opened_at=now if opens else None, value=finding.value,
                                         message=finding.message)
            if opens:
                AlertEvent.objects.create(alert=alert, at=now, kind=AlertEvent.OPENED, detail=finding.message)
    except IntegrityError:  # another run opened this cause a moment ago: one alert per cause
        return 0
    return int(opens)


def _promote(alert, finding, now):
    if not Alert.objects.filter(pk=alert.pk, opened_at=None, resolved_at=None).update(
            opened_at=now, message=finding.message, value=finding.value):
        return 0
    AlertEvent.objects.create(alert=alert, at=now, kind=AlertEvent.OPENED, detail=finding.message)
    return 1


def resolve_gone(found, unresolved, now):
    """Causes no longer firing: a pending alert is forgotten (nobody was told), an open one resolves. A disabled rule's
    alerts resolve; a cause on a rig the panel does not hear from is held as it is. Returns how many resolved."""
    results = {rule.pk: result for rule, result in found.items()}
    resolved = 0
    for alert in unresolved:
        result = results.get(alert.rule_id)
        if result is not None and (alert.cause in result.firing or alert.rig in result.unheard):
            continue
        if alert.opened_at is None:
            Alert.objects.filter(pk=alert.pk, opened_at=None).delete()
            continue
        why = "the rule was disabled" if result is None else "the cause is gone"
        if Alert.objects.filter(pk=alert.pk, resolved_at=None).update(resolved_at=now):
            AlertEvent.objects.create(alert=alert, at=now, kind=AlertEvent.RESOLVED, detail=why)
            resolved += 1
    return resolved


def notify_due(now):
    """Tell every transition not told yet; each alert on its own, so one failing channel holds up nobody."""
    due = (Alert.objects.filter(Q(opened_at__isnull=False, notified_open_at=None)
                                | Q(resolved_at__isnull=False, notified_resolved_at=None))
           .filter(Q(notify_claimed_at=None) | Q(notify_claimed_at__lt=now - CLAIM_STALE))
           .select_related("rule").order_by("id"))
    channels = {channel.pk: channel for channel in Channel.objects.filter(enabled=True)}
    sent, deadline = 0, time.monotonic() + NOTIFY_BUDGET
    for done, alert in enumerate(due):
        if done and time.monotonic() > deadline:
            log.warning("alert notifications: sending budget of %g s spent, the rest go next run", NOTIFY_BUDGET)
            break
        sent += notify_one(alert, channels, now)
    return sent


def _claim(alert, field, now):
    return Alert.objects.filter(Q(notify_claimed_at=None) | Q(notify_claimed_at__lt=now - CLAIM_STALE),
                                pk=alert.pk, **{field: None}).update(notify_claimed_at=now) == 1


def notify_one(alert, channels, now):
    """Send this alert's next transition to every enabled channel (or only those that failed last time); True when
    this call told someone. Only the worker whose claim succeeded sends."""
    if alert.notified_open_at is None and alert.resolved_at is not None:
        # It resolved before anyone heard it opened: nothing to tell about either.
        if Alert.objects.filter(pk=alert.pk, notified_open_at=None, notify_claimed_at=None).update(
                notified_open_at=now, notified_resolved_at=now):
            AlertEvent.objects.create(alert=alert, at=now, kind=AlertEvent.SKIPPED,
                                      detail="resolved before its opening was told")
        return False
    state, field = ("open", "notified_open_at") if alert.notified_open_at is None else \
        ("resolved", "notified_resolved_at")
    if not _claim(alert, field, now):
        return False
    targets = [channels[pk] for pk in alert.retry_channels if pk in channels] if alert.notify_attempts else \
        list(channels.values())
    if not targets:
        AlertEvent.objects.create(alert=alert, at=now, kind=AlertEvent.SKIPPED,
                                  detail="no enabled channel" if not alert.notify_attempts
                                  else "the channels that failed were disabled or removed")
        Alert.objects.filter(pk=alert.pk).update(**{field: now}, notify_claimed_at=None, notify_attempts=0,
                                                 retry_channels=[])
        return False
    text, body = notify.describe(alert, state)
    failed, told = [], False
    for channel in targets:
        try:
            notify.send(channel, text, body)
        except notify.NotifyError as exc:
            failed.append(channel.pk)
            AlertEvent.objects.create(alert=alert, at=timezone.now(), kind=AlertEvent.FAILED, channel=channel.name,
                                      detail=f"{state}: {exc}"[:500])
            log.warning("alert %s (%s) not sent via %s: %s", alert.pk, state, channel.name, exc)
        else:
            told = True
            AlertEvent.objects.create(alert=alert, at=timezone.now(), kind=AlertEvent.NOTIFIED, channel=channel.name,
                                      detail=state)
    attempts = alert.notify_attempts + 1
    if not failed or attempts >= settings.ALERT_NOTIFY_ATTEMPTS:
        if failed:
            AlertEvent.objects.create(alert=alert, at=timezone.now(), kind=AlertEvent.SKIPPED,
                                      detail=f"{state}: gave up after {attempts} tries")
        Alert.objects.filter(pk=alert.pk).update(**{field: timezone.now()}, notify_claimed_at=None,
                                                 notify_attempts=0, retry_channels=[])
    else:
        Alert.objects.filter(pk=alert.pk).update(notify_claimed_at=None, notify_attempts=attempts,
                                                 retry_channels=failed)
    return told


def send_test(channel, now=None):
    """Send a test message through one channel; (ok, sentence) is also kept on the channel for its page."""
    now = now or timezone.now()
    text, body = notify.test_message(channel, now)
    try:
        notify.send(channel, text, body)
        ok, result = True, f"sent at {now:%Y-%m-%d %H:%M:%S} UTC"
    except notify.NotifyError as exc:
        ok, result = False, f"failed at {now:%Y-%m-%d %H:%M:%S} UTC: {exc}"
    Channel.objects.filter(pk=channel.pk).update(last_test_at=now, last_test_result=result[:300])
    return ok, result
