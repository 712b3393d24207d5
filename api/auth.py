"""Bearer tokens for the API: who is calling, at what rate, from the Authorization header alone (no session, so no
CSRF). The caller acts with the token owner's role as it is at this request."""

from django.conf import settings
from ninja.errors import Throttled
from ninja.security import HttpBearer

from api import ratelimit
from api.models import ApiToken
from audit.log import client_address
from audit.models import AuditEvent


class TokenAuth(HttpBearer):
    def __call__(self, request):
        # Not HttpBearer's own: in DEBUG it logs a header with another scheme whole, and that may be a token.
        scheme, _, secret = request.headers.get(self.header, "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            return None
        return self.authenticate(request, secret.strip())

    def authenticate(self, request, token):
        address = client_address(request) or "unknown"
        failed_key = f"api-auth-failed:{address}"
        wait = ratelimit.over(failed_key, settings.API_FAILED_AUTH_RATE)
        if wait:  # an address guessing tokens is slowed down, whatever it sends next
            raise Throttled(wait)
        found = ApiToken.find(token)
        if found is None:
            ratelimit.count(failed_key)
            return None
        wait = ratelimit.hit(f"api-token:{found.prefix}", settings.API_RATE)
        if wait:
            raise Throttled(wait)
        found.touch()
        request.user = found.user
        request.api_token = found
        request.audit_via = AuditEvent.API  # audit.log.record writes via="api" for whatever this request does
        return found
