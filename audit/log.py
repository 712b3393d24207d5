"""Writing the audit log: one call per action, from the view or signal that did it."""

from audit.models import AuditEvent


def client_address(request):
    """The address the request came from, as Django saw it (REMOTE_ADDR; a proxy in front sets it)."""
    return (request.META.get("REMOTE_ADDR") or None) if request is not None else None


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
