"""Writing the audit log: one call per action, from the view or signal that did it."""

import contextvars
import ipaddress

from django.conf import settings

from audit.models import AuditEvent

# The request being served, for the signal receivers (role changes, users created or deleted in the admin) that
# Django calls without one; set by audit.middleware.AuditRequestMiddleware. None in Celery tasks and commands.
current_request = contextvars.ContextVar("audit_current_request", default=None)


def _is_trusted_proxy(address):
    return any(address in ipaddress.ip_network(net, strict=False) for net in settings.TRUSTED_PROXIES)


def client_address(request):
    """The address the request came from: REMOTE_ADDR, unless that is a proxy listed in MORPHEUS_TRUSTED_PROXIES;
    then the last X-Forwarded-For hop that is not such a proxy (the ones before it are whatever the client sent).
    Also django-axes' AXES_CLIENT_IP_CALLABLE, so a lockout and the audit log name the same address."""
    if request is None:
        return None
    try:  # a server on a Unix socket may leave it empty or write something else: then no address
        remote = ipaddress.ip_address(request.META.get("REMOTE_ADDR") or "")
    except ValueError:
        return None
    if not settings.TRUSTED_PROXIES or not _is_trusted_proxy(remote):
        return str(remote)
    hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    for hop in reversed(hops):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return str(remote)  # a hop a proxy would not write: keep the address we know
        if not _is_trusted_proxy(address):
            return str(address)
    return str(remote)


def record(action, *, request=None, user=None, username="", target="", outcome=AuditEvent.OK, via=None, detail=None):
    """Store one audit event. `request` gives the user, address and channel unless they are passed; `detail` is a
    small JSON object and must never hold a secret (a token, a password, a key)."""
    if user is None and request is not None and getattr(request, "user", None) is not None:
        user = request.user if request.user.is_authenticated else None
    if via is None:
        via = getattr(request, "audit_via", AuditEvent.WEB) if request is not None else AuditEvent.SYSTEM
    return AuditEvent.objects.create(
        action=action[:50], user=user, username=(username or (user.get_username() if user else ""))[:150],
        target=str(target)[:300], outcome=outcome, address=client_address(request), via=via, detail=detail or {})
