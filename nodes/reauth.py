"""The password asked again ("sudo mode") before the actions that put code or secrets on rigs.

A correct password on the confirm page stamps the session; for MORPHEUS_REAUTH_MINUTES after that the guarded
actions run. Otherwise the action is not performed: the user gets the password page, which sends them back to
the page they came from to click again (a POST is never replayed).
"""

import functools
import time

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import authenticate, logout
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme

from audit.log import record
from audit.models import AuditEvent
from nodes.permissions import require_operator

SESSION_KEY = "reauth_at"


def safe_url(request, url, fallback="/"):
    """`url` if it stays on this site, else `fallback` (a `next` or Referer is whatever the client sent)."""
    if url and url_has_allowed_host_and_scheme(url, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return url
    return fallback


def check_password(request, password):
    """The logged-in user's password, checked through authenticate() so that a wrong one counts towards the
    login lockout; the one that trips it logs the user out (then `request.axes_locked_out` is true)."""
    request.audit_password_check = True  # the caller records the outcome under its own action (audit/signals.py)
    try:
        user = authenticate(request, username=request.user.get_username(), password=password)
    finally:
        request.audit_password_check = False
    if getattr(request, "axes_locked_out", False):
        logout(request)
        return False
    return user is not None and user.pk == request.user.pk


def is_recent(request):
    stamped = request.session.get(SESSION_KEY)
    return isinstance(stamped, (int, float)) and 0 <= time.time() - stamped < settings.REAUTH_MINUTES * 60


def password_page(request):
    """The password page in place of the action; it returns to the page the action was clicked on."""
    back = request.get_full_path() if request.method == "GET" else request.headers.get("Referer", "")
    return render(request, "nodes/reauth.html",
                  {"next": safe_url(request, back), "minutes": settings.REAUTH_MINUTES}, status=403)


def require_recent_password(view):
    """Operator actions (POSTs) that run only if the password was typed in the last few minutes; pages (GETs)
    always show. The role is checked first, so a viewer gets 403, not a password page."""
    @functools.wraps(view)
    def guarded(request, *args, **kwargs):
        if request.method != "GET":
            require_operator(request)
            if not is_recent(request):
                return password_page(request)
        return view(request, *args, **kwargs)
    return guarded


@login_required
def confirm_password(request):
    next_url = safe_url(request, request.POST.get("next") or request.GET.get("next"))
    error = None
    if request.method == "POST":
        user = request.user
        if check_password(request, request.POST.get("password", "")):
            request.session[SESSION_KEY] = time.time()
            record("password.confirm", request=request)
            messages.success(request, "Password confirmed. Do the action again.")
            return redirect(next_url)
        locked_out = getattr(request, "axes_locked_out", False)
        record("password.confirm", request=request, user=user,
               outcome=AuditEvent.REFUSED if locked_out else AuditEvent.FAILED,
               detail={"locked_out": True} if locked_out else None)
        if locked_out:
            return HttpResponse(status=429)  # AxesMiddleware puts the lockout page in its place
        error = "That password is not right."
    return render(request, "nodes/reauth.html",
                  {"next": next_url, "error": error, "minutes": settings.REAUTH_MINUTES})
