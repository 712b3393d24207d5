from audit.log import current_request


class AuditRequestMiddleware:
    """Makes the request known to the audit signal receivers (who changed a role, from where) while it is served."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = current_request.set(request)
        try:
            return self.get_response(request)
        finally:
            current_request.reset(token)
