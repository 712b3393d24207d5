"""A rig enrolled before rigs had keys can be sent nothing; whatever action was clicked says so, on the rig's page."""

from django.contrib import messages
from django.shortcuts import redirect

from nodes.channel import NoRigKey


class NoRigKeyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, NoRigKey):
            return None
        messages.error(request, f"{exception}. Nothing was sent.")
        return redirect("node_detail", exception.rig)
