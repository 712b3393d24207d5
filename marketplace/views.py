from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from marketplace import chain_views, install_views, services, session_views
from marketplace.forms import RouterForm
from marketplace.models import Router
from nodes import reauth
from nodes.models import Node, Operation
from nodes.permissions import require_operator

ERROR_TEXT = {
    "down": "The router is not answering its admin API",
    "unauthorized": "The router refused the credentials in its cookie file (401)",
    "degraded": "The router reports itself degraded (503)",
    "malformed": "The router answered with something that is not its API's JSON",
    "rate_limited": "The router is rate-limited (429)",
    "timeout": "The router's admin API did not answer in time",
}


@login_required
def rig_marketplace(request, name):
    node = get_object_or_404(Node, name=name)
    router = Router.objects.filter(node=node).first()
    initial = ({"binary": router.binary_path, "network": router.network, "proxy_port": router.proxy_port,
                "web_port": router.web_port} if router else None)
    form = RouterForm(request.POST or None, initial=initial)
    needs_confirm = False
    if request.method == "POST":
        require_operator(request)
        if form.is_valid():
            data = form.cleaned_data
            running = router is not None and router.is_running
            new_code = router is None or router.binary_path != data["binary"].strip()
            if new_code and not reauth.is_recent(request):
                return reauth.password_page(request)  # a binary the rig has not run for us: the password again
            if running and not data["confirm_restart"]:
                needs_confirm = True
                messages.warning(request, f"The proxy-router is {router.state}: applying restarts it and cuts its "
                                          f"{router.open_sessions} open session(s). Tick the box to go ahead.")
            else:
                try:
                    services.apply_router(node, request.user, data["network"], data["binary"], data["proxy_port"],
                                          data["web_port"], restart=running)
                except services.Refused as exc:
                    form.add_error("binary", str(exc))
                else:
                    messages.success(request, f"Proxy-router {'restart' if running else 'start'} sent to {node.name}")
                    return redirect("rig_marketplace", node.name)
    snapshot = router.snapshot if router else {}
    error = snapshot.get("error")
    operations = Operation.objects.filter(node=node, kind__in=(Operation.ROUTER_APPLY, Operation.ROUTER_REFRESH))
    context = {
        "node": node, "router": router, "snap": snapshot, "form": form, "needs_confirm": needs_confirm,
        "error": error, "error_text": ERROR_TEXT.get((error or {}).get("kind"), "The router's admin API failed"),
        "models_health": sorted((snapshot.get("models_health") or {}).items()),
        "operations": operations.order_by("-pk")[:5]}
    for part in (chain_views, session_views, install_views):
        context.update(part.panel_context(request, node, router))
    return render(request, "marketplace/rig_marketplace.html", context)


@login_required
@require_POST
def rig_router_refresh(request, name):
    require_operator(request)
    node = get_object_or_404(Node, name=name)
    services.refresh_router(node, request.user)
    messages.success(request, f"Asked {node.name} for its proxy-router's state")
    return redirect("rig_marketplace", node.name)
