"""Sessions and earnings on a rig's proxy-router, with the restart timeline."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, render

from marketplace import sessions
from marketplace.models import Router
from nodes.models import Node


def panel_context(request, node, router):
    """What the rig's Marketplace page shows of this part (templates/marketplace/_sessions.html)."""
    return {"sessions_summary": sessions.summary(node, router) if router is not None else None}


@login_required
def rig_sessions(request, name):
    node = get_object_or_404(Node, name=name)
    router = Router.objects.filter(node=node).first()
    context = {"node": node, "router": router, **sessions.rig_sessions(node, router)}
    return render(request, "marketplace/rig_sessions.html", context)
