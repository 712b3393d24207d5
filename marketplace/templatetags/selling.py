"""`{% sell_on_morpheus deployment %}`: the "Sell on Morpheus" part of a deployment's page, so the hosting app's view
needs nothing from the marketplace app."""

from django import template

from marketplace.models import Listing, Router
from marketplace.views import sell_context

register = template.Library()


@register.inclusion_tag("marketplace/_sell.html", takes_context=True)
def sell_on_morpheus(context, deployment):
    router = Router.objects.filter(node=deployment.node).first()
    listing = Listing.objects.filter(deployment=deployment).first()
    return {**sell_context(deployment, router, listing), "can_operate": context.get("can_operate"),
            "csrf_token": context.get("csrf_token"), "request": context.get("request")}
