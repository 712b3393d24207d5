from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from hosting.models import Deployment
from marketplace import chain_views, checklist, install_views, publishing, services, session_views
from marketplace.forms import ConfirmRestartForm, PublishForm, RouterForm
from marketplace.models import Listing, Router
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
    context = {**_live_context(node, router), "form": form, "needs_confirm": needs_confirm,
               "apply_form": ConfirmRestartForm(auto_id="id_apply_%s")}  # the router form has a confirm_restart too
    if request.htmx:  # the page's live part, polled (templates/marketplace/rig_marketplace.html)
        return render(request, "marketplace/rig_marketplace.html#live", context)
    for part in (chain_views, session_views, install_views):
        context.update(part.panel_context(request, node, router))
    return render(request, "marketplace/rig_marketplace.html", context)


def _live_context(node, router):
    """The router's state, published deployments and checklist: the part of the page that re-renders every few
    seconds."""
    snapshot = router.snapshot if router else {}
    error = snapshot.get("error")
    operations = Operation.objects.filter(node=node, kind__in=(Operation.ROUTER_APPLY, Operation.ROUTER_REFRESH))
    listings = list(publishing.with_recommendation(Listing.objects.filter(deployment__node=node)).order_by("pk"))
    rig_checklist = checklist.rig_checklist(node, router, listings)
    health = {str(k).lower(): v for k, v in (snapshot.get("models_health") or {}).items()}
    published = [{"listing": listing, "slots": publishing.slots_of(listing), "health": health.get(listing.model_id)}
                 for listing in listings]
    return {
        "node": node, "router": router, "snap": snapshot, "checklist": rig_checklist, "listings": listings,
        "published": published,
        "apply_pending": any(item.key in checklist.PENDING for item in rig_checklist.items),
        "restart_needed": publishing.restart_needed(router),
        "error": error, "error_text": ERROR_TEXT.get((error or {}).get("kind"), "The router's admin API failed"),
        "models_health": sorted((snapshot.get("models_health") or {}).items()),
        "operations": operations.order_by("-pk")[:5]}


@login_required
def fleet(request):
    """Every rig's checklist on one page."""
    return render(request, "marketplace/fleet.html", {"checklists": checklist.fleet()})


@login_required
@require_POST
def rig_apply_published(request, name):
    """Send the rig's published deployments to its router (after a "publish, apply later")."""
    require_operator(request)
    router = get_object_or_404(Router.objects.select_related("node"), node__name=name)
    form = ConfirmRestartForm(request.POST)
    form.is_valid()
    try:
        operation = services.apply_published(router, request.user, form.cleaned_data.get("confirm_restart", False))
    except services.Refused as exc:
        messages.warning(request, f"Not applied: {exc}. Tick the box to go ahead."
                         if isinstance(exc, services.RestartNeeded) else f"Not applied: {exc}")
    else:
        messages.success(request, f"Published deployments sent to {name}'s proxy-router" if operation else
                         "The router already runs with the published deployments")
    return redirect("rig_marketplace", name)


def sell_context(deployment, router=None, listing=None, data=None):
    """The "Sell on Morpheus" part of a deployment's page (templates/marketplace/_sell.html)."""
    restart_needed = publishing.restart_needed(router)
    if listing is not None:
        initial = {"model_name": listing.model_name, "capacity_policy": listing.capacity_policy,
                   "concurrent_slots": listing.concurrent_slots or publishing.recommended_slots(deployment)}
    else:
        initial = {"model_name": publishing.default_model_name(deployment),
                   "concurrent_slots": publishing.recommended_slots(deployment)}
    form = PublishForm(data, initial=initial, deployment=deployment, router=router, restart_needed=restart_needed,
                       auto_id="sell_%s")
    model_ids = [value for value, _label in form.fields["model"].choices if value]
    wanted = listing.model_id if listing is not None else (model_ids[0] if len(model_ids) == 1 else "")
    form.initial.update({"model": wanted} if wanted in model_ids else {"model_id": wanted})
    context = {"sell_deployment": deployment, "sell_router": router, "sell_listing": listing, "sell_form": form,
               "sell_restart_needed": restart_needed, "sell_open_sessions": router.open_sessions if router else 0}
    if listing is not None:
        context["sell_slots"] = publishing.slots_of(listing)
    if listing is not None and router is not None:
        context["sell_items"] = checklist.listing_items(listing, router.snapshot)
        context["sell_health"] = {k.lower(): v for k, v in (router.snapshot.get("models_health") or {}).items()
                                  }.get(listing.model_id)
    return context


def _deployment(pk):
    return get_object_or_404(Deployment.objects.select_related("node", "model_file"), pk=pk)


@login_required
def deployment_publish(request, pk):
    """Publish (or change) a deployment as a models-config entry on its rig's router, and apply it."""
    deployment = _deployment(pk)
    router = Router.objects.filter(node=deployment.node).first()
    listing = Listing.objects.filter(deployment=deployment).first()
    context = sell_context(deployment, router, listing, request.POST if request.method == "POST" else None)
    form = context["sell_form"]
    if request.method == "POST":
        require_operator(request)
        try:
            publishing.check_router(deployment.node, router)
        except services.Refused as exc:
            form.add_error(None, f"Not published: {exc}")
        if form.is_valid():
            data = form.cleaned_data
            try:
                listing, operation = services.publish_deployment(
                    deployment, request.user, data["model_id"], data["model_name"], data["concurrent_slots"],
                    data["capacity_policy"], confirm_restart=data.get("confirm_restart", False),
                    later="later" in request.POST)
            except services.RestartNeeded as exc:
                form.add_error("confirm_restart" if "confirm_restart" in form.fields else None,
                               f"Not published: {exc}. Tick the box to go ahead, or save it and apply later.")
            except services.Refused as exc:
                form.add_error(None, f"Not published: {exc}")
            else:
                if operation is not None:
                    messages.success(request, f"{deployment.name} published as {listing.model_name}; its entry is on "
                                              f"its way to {deployment.node.name}'s proxy-router.")
                else:
                    messages.success(request, f"{deployment.name} published as {listing.model_name}; "
                                              + ("apply it from the rig's Marketplace page when you are ready."
                                                 if "later" in request.POST else "the router already runs with it."))
                return redirect(deployment)
    return render(request, "marketplace/publish.html", context)


@login_required
def deployment_unpublish(request, pk):
    """Take a deployment off the marketplace: its entry leaves the router's models-config (confirmed first)."""
    require_operator(request)
    deployment = _deployment(pk)
    listing = get_object_or_404(Listing, deployment=deployment)
    router = Router.objects.filter(node=deployment.node).first()
    form = ConfirmRestartForm(request.POST if request.method == "POST" else None)  # an empty POST is a POST
    if request.method == "POST" and form.is_valid():
        try:
            services.unpublish_deployment(listing, request.user, form.cleaned_data["confirm_restart"],
                                          later="later" in request.POST)
        except services.RestartNeeded as exc:
            form.add_error("confirm_restart", f"Not removed: {exc}. Tick the box to go ahead.")
        except services.Refused as exc:
            form.add_error(None, f"Not removed: {exc}")
        else:
            messages.success(request, f"{deployment.name} is no longer published.")
            return redirect(deployment)
    return render(request, "marketplace/unpublish_confirm.html", {
        "deployment": deployment, "listing": listing, "router": router, "form": form,
        "restart_needed": publishing.restart_needed(router)})


@login_required
@require_POST
def rig_router_refresh(request, name):
    require_operator(request)
    node = get_object_or_404(Node, name=name)
    services.refresh_router(node, request.user)
    messages.success(request, f"Asked {node.name} for its proxy-router's state")
    return redirect("rig_marketplace", node.name)
