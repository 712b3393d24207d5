"""Installing a proxy-router release on a rig from its URL and sha256."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render

from hosting.services import Refused
from marketplace import releases
from marketplace.forms import RouterForm
from marketplace.install_forms import ReleaseForm
from marketplace.models import Router
from nodes import reauth
from nodes.agent.protocol import ROUTER_NETWORKS
from nodes.models import Node
from nodes.permissions import require_operator


def panel_context(request, node, router, form=None):
    """What the rig's Marketplace page shows of this part (templates/marketplace/_install.html)."""
    defaults = RouterForm.base_fields
    return {
        "install_form": form or ReleaseForm(),
        "installs": releases.recent_installs(node),
        # What "start the router with this binary" posts to the Marketplace page's own start/restart form.
        "install_start": {
            "network": router.network if router else defaults["network"].initial,
            "proxy_port": router.proxy_port if router else defaults["proxy_port"].initial,
            "web_port": router.web_port if router else defaults["web_port"].initial,
            "current": router.binary_path if router else None,
            "running": bool(router and router.is_running),
            "networks": ROUTER_NETWORKS,
        },
    }


@login_required
def rig_router_install(request, name):
    node = get_object_or_404(Node, name=name)
    router = Router.objects.filter(node=node).first()
    form = ReleaseForm(request.POST or None)
    status = 200
    if request.method == "POST":
        require_operator(request)
        if form.is_valid():
            if not reauth.is_recent(request):
                return reauth.password_page(request)  # new code for the rig: the password again
            try:
                operation = releases.start_install(node, request.user, form.cleaned_data["url"],
                                                   form.cleaned_data["sha256"])
            except Refused as exc:
                form.add_error("url", str(exc))
            else:
                messages.success(request, f"{node.name} is fetching {operation.target}; it is kept only if its "
                                          "sha256 matches")
                return redirect("rig_marketplace", node.name)
        status = 400
    context = {"node": node, "router": router, **panel_context(request, node, router, form)}
    return render(request, "marketplace/install.html", context, status=status)
