"""Sending one message to one channel: email through Django's mail backend, or a webhook POST whose JSON body fits
Slack (`text`), Discord (`content`) and generic receivers (`alert`). Errors come back as one sentence that never
carries the webhook URL (it is a secret)."""

import smtplib
import socket
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.core.mail import send_mail

from alerts.models import Channel

WEBHOOK_TIMEOUT = 5  # seconds, connect and read each


class NotifyError(Exception):
    pass


def alerts_url():
    return f"{settings.PANEL_URL}/alerts/" if settings.PANEL_URL else "/alerts/"


def describe(alert, state):
    """(subject line, body dict) for an alert's transition ("open" or "resolved")."""
    word = "RESOLVED" if state == "resolved" else "OPEN"
    text = f"[{word}] {alert.rule.title}: {alert.message}"
    at = alert.resolved_at if state == "resolved" else alert.opened_at
    return text, {"rule": alert.rule.kind, "title": alert.rule.title, "cause": alert.cause, "rig": alert.rig,
                  "state": state, "message": alert.message, "value": alert.value, "url": alerts_url(),
                  "at": at.isoformat() if at else None}


def test_message(channel, now):
    text = f"[TEST] Morpheus Admin can reach this channel ({channel.name})."
    return text, {"rule": "test", "title": "Test", "cause": f"channel:{channel.pk}", "rig": "", "state": "test",
                  "message": text, "value": None, "url": alerts_url(), "at": now.isoformat()}


def send(channel, text, alert_body):
    """Raises NotifyError, whatever went wrong: one channel's failure is recorded and never stops the others."""
    try:
        if channel.kind == Channel.EMAIL:
            send_email(channel.target, text, alert_body)
        else:
            send_webhook(channel.target, text, alert_body)
    except NotifyError:
        raise
    except Exception as exc:  # noqa: BLE001 — its words may hold the URL: only its kind is kept
        raise NotifyError(f"unexpected {type(exc).__name__} while sending") from None


def send_email(address, text, alert_body):
    body = "\n".join([alert_body["message"], "", f"Rule: {alert_body['title']}", f"Cause: {alert_body['cause']}",
                      f"State: {alert_body['state']}", f"At: {alert_body['at']}", "", alert_body["url"]])
    try:
        send_mail(" ".join(f"Morpheus: {text}".split())[:200], body, None, [address], fail_silently=False)
    except (smtplib.SMTPException, OSError) as exc:
        raise NotifyError(f"the mail server at {settings.EMAIL_HOST}:{settings.EMAIL_PORT} refused or was "
                          f"unreachable ({_reason(exc)})") from None


def send_webhook(url, text, alert_body):
    parts = urlsplit(url)
    where = f"{parts.scheme}://{parts.netloc}"
    payload = {"text": text, "content": text[:2000], "alert": alert_body}
    try:
        response = requests.post(url, json=payload, timeout=WEBHOOK_TIMEOUT, allow_redirects=False,
                                 headers={"User-Agent": "morpheus-admin-alerts"})
    except requests.Timeout:
        raise NotifyError(f"{where} did not answer within {WEBHOOK_TIMEOUT} s") from None
    except requests.ConnectionError:
        raise NotifyError(f"could not connect to {where}") from None
    except requests.RequestException as exc:
        raise NotifyError(f"request to {where} failed ({type(exc).__name__})") from None
    if response.is_redirect or 300 <= response.status_code < 400:
        target = urlsplit(response.headers.get("Location", ""))
        raise NotifyError(f"{where} answered a redirect (HTTP {response.status_code}"
                          f"{' to ' + target.netloc if target.netloc else ''}); redirects are not followed")
    if response.status_code >= 400:
        raise NotifyError(f"{where} answered HTTP {response.status_code}")


def _reason(exc):
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{exc.smtp_code} {exc.smtp_error.decode(errors='replace')[:120]}"
    return type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {str(exc)[:120]}"
