"""On-chain actions through the rig's proxy-router: approve, provider, model, bids (each a confirmed operation)."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render

from hosting.services import Refused
from marketplace import chain
from marketplace.chain_forms import FORMS, TITLES, initial
from marketplace.models import Router
from nodes.models import Node
from nodes.permissions import is_operator, require_operator


def panel_context(request, node, router):
    """What the rig's Marketplace page shows of this part (templates/marketplace/_chain.html)."""
    snapshot = router.snapshot if router else {}
    context = {"chain_market": chain.market_rows(node, snapshot) if router else [],
               "chain_recent": chain.recent(node)}
    if not is_operator(request.user) or router is None:
        return context
    try:
        chain.running_router(node)
    except Refused as exc:
        context["chain_refusal"] = str(exc)
        return context
    # Several forms on one page: each with its own element ids.
    context["chain_forms"] = [
        (action, TITLES[action], form(initial=initial(action, node, router, snapshot), auto_id=f"id_{action}_%s"))
        for action, form in FORMS.items() if action != "delete_bid"]
    context["chain_models"] = sorted(chain.known_models(node, snapshot).items())
    return context


def _carried(form):
    """The values as typed, carried through the confirmation step so "Back" shows them unchanged."""
    return [(name, value) for name in form.fields for value in form.data.getlist(name)]


@login_required
def chain_action(request, name, action):
    """GET: the action's form. POST: checked, then a confirmation saying what it costs, then the operation."""
    if action not in FORMS:
        raise Http404("no such on-chain action")
    require_operator(request)
    node = get_object_or_404(Node, name=name)
    router = Router.objects.filter(node=node).first()
    snapshot = router.snapshot if router else {}
    context = {"node": node, "router": router, "action": action, "title": TITLES[action],
               "chain_models": sorted(chain.known_models(node, snapshot).items())}
    if request.method != "POST":
        form = FORMS[action](initial=initial(action, node, router, snapshot, request.GET.get("model")))
        return render(request, "marketplace/chain_action.html", {**context, "form": form})
    form = FORMS[action](request.POST)
    going_back = "back" in request.POST
    if form.is_valid() and not going_back:
        params = form.cleaned_params
        try:
            chain.running_router(node)
            if chain.is_confirmed(request.POST.get("confirmed"), node, request.user, action, params):
                operation = chain.start(node, request.user, action, params)
                messages.success(request, f"Sent to {node.name}: {operation.target}. The outcome appears below.")
                return redirect("rig_marketplace", node.name)
            if request.POST.get("confirmed"):
                messages.warning(request, "That confirmation was for other values, or is more than 15 minutes old: "
                                          "check what this costs and confirm again.")
        except Refused as exc:
            form.add_error(None, str(exc))
        else:
            summary = {}
            if action == "post_bid":
                suggested, source = chain.suggested_bid(node, params["model_id"])
                summary = {"market": chain.compare(params["price_per_second"],
                                                   (snapshot.get("market") or {}).get(params["model_id"])),
                           "suggested": suggested, "suggested_source": source}
            return render(request, "marketplace/chain_confirm.html", {
                **context, "form": form, "carried": _carried(form), "costs": chain.costs(action, params, router),
                "confirm_token": chain.confirmation(node, request.user, action, params),
                "target": chain.target(action, params), **summary})
    return render(request, "marketplace/chain_action.html", {**context, "form": form})
