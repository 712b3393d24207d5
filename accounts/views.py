from base64 import b32encode

import django_otp
import segno
from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_client_username
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.contrib.auth.signals import user_login_failed
from django.http import HttpResponse
from django.shortcuts import redirect, render, resolve_url
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import lockouts
from audit.log import record
from audit.models import AuditEvent
from nodes.permissions import is_operator, require_operator
from nodes.reauth import check_password, safe_url


def locked_out(request, response=None, credentials=None):
    """AXES_LOCKOUT_CALLABLE: the page for a locked-out login, on /login/ and on the admin's."""
    return render(request, "accounts/locked_out.html",
                  {"username": get_client_username(request, credentials) or "",
                   "minutes": lockouts.cool_off_minutes()}, status=429)


def _confirmed_device(user):
    return TOTPDevice.objects.filter(user=user, confirmed=True).first()


@login_required
def verify(request):
    """The second login step: the code from the user's authenticator app."""
    next_url = safe_url(request, request.POST.get("next") or request.GET.get("next"),
                        resolve_url(settings.LOGIN_REDIRECT_URL))
    device = _confirmed_device(request.user)
    if device is None or request.user.is_verified():
        return redirect(next_url)
    credentials = {"username": request.user.get_username()}
    error = None
    if request.method == "POST":
        if not AxesProxyHandler.is_allowed(request, credentials):
            logout(request)
            return locked_out(request, credentials=credentials)
        if device.verify_token(request.POST.get("code", "").strip()):
            django_otp.login(request, device)
            record("login.code", request=request)
            return redirect(next_url)
        # A wrong code counts towards the login lockout like a wrong password.
        user_login_failed.send(sender=__name__, credentials=credentials, request=request)  # audited as login.code
        if request.axes_locked_out:
            logout(request)
            return locked_out(request, credentials=credentials)
        error = "That code is not right. Type the code your app shows now."
    return render(request, "accounts/verify.html", {"next": next_url, "error": error})


@login_required
def security(request):
    device = _confirmed_device(request.user)
    context = {"device": device, "failure_limit": settings.AXES_FAILURE_LIMIT,
               "required": settings.REQUIRE_2FA_FOR_OPERATORS and is_operator(request.user)}
    if device is None:
        # The secret stays the same until it is confirmed, so a reload does not invalidate a scanned code.
        pending = TOTPDevice.objects.filter(user=request.user, confirmed=False).first() \
            or TOTPDevice.objects.create(user=request.user, name="Authenticator app", confirmed=False)
        if request.method == "POST":
            if pending.verify_token(request.POST.get("code", "").strip()):
                pending.confirmed = True
                pending.save(update_fields=["confirmed"])
                django_otp.login(request, pending)
                record("2fa.add", request=request, target=request.user.get_username())
                messages.success(request, "Two-factor login is on: the panel asks for a code after your password.")
                return redirect("security")
            context["error"] = "That code is not right. Type the code your app shows now."
        context["secret"] = b32encode(pending.bin_key).decode()
        # Drawn here as inline SVG: the secret never leaves the panel for a QR service or a script. Black on
        # white with its quiet zone, or a phone camera cannot read it on the dark theme.
        context["qr"] = mark_safe(segno.make(pending.config_url, error="m").svg_inline(scale=5, dark="#000", light="#fff"))
    return render(request, "accounts/security.html", context)


@login_required
@require_POST
def remove_device(request):
    user = request.user
    if check_password(request, request.POST.get("password", "")):
        TOTPDevice.objects.filter(user=request.user).delete()
        record("2fa.remove", request=request, target=user.get_username())
        messages.success(request, "Two-factor login is off for your account.")
    elif getattr(request, "axes_locked_out", False):
        record("2fa.remove", request=request, user=user, target=user.get_username(), outcome=AuditEvent.REFUSED,
               detail={"locked_out": True})
        return HttpResponse(status=429)  # AxesMiddleware puts the lockout page in its place
    else:
        record("2fa.remove", request=request, target=user.get_username(), outcome=AuditEvent.FAILED,
               detail={"reason": "wrong password"})
        messages.error(request, "That password is not right; two-factor login is still on.")
    return redirect("security")


@login_required
def lockout_list(request):
    require_operator(request)
    return render(request, "accounts/lockouts.html",
                  {"lockouts": lockouts.current(), "minutes": lockouts.cool_off_minutes()})


@login_required
@require_POST
def lockout_unlock(request):
    require_operator(request)
    username, ip_address = request.POST.get("username", ""), request.POST.get("ip_address", "")
    unlocked = lockouts.unlock(username, ip_address)
    record("lockout.unlock", request=request, target=f"{username} from {ip_address or 'any address'}",
           outcome=AuditEvent.OK if unlocked else AuditEvent.FAILED)
    if unlocked:
        messages.success(request, f"Unlocked {username} from {ip_address or 'any address'}.")
    else:
        messages.error(request, "No such lockout (it may have expired).")
    return redirect("lockout_list")
