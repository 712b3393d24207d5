from django.conf import settings
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.http import urlencode
from django_htmx.http import HttpResponseClientRedirect
from django_otp import user_has_device

from nodes.permissions import is_operator


class SecondFactorMiddleware:
    """A user with a TOTP device who gave only the password reaches nothing but the code step (and logout);
    with MORPHEUS_REQUIRE_2FA_FOR_OPERATORS an operator without a device reaches only the Security page."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = request.user
        if user.is_authenticated and not user.is_verified():
            if user_has_device(user):
                if request.path not in (reverse("login_verify"), reverse("logout")):
                    return _send_to(request, "login_verify")
            elif settings.REQUIRE_2FA_FOR_OPERATORS and is_operator(user):
                if request.path not in (reverse("security"), reverse("logout")):
                    return _send_to(request, "security")
        return self.get_response(request)


def _send_to(request, name):
    url = reverse(name)
    if request.htmx:  # a poll would swap the whole page into a fragment
        return HttpResponseClientRedirect(url)
    if request.method == "GET":
        url += "?" + urlencode({"next": request.get_full_path()})
    return redirect(url)
