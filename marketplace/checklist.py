"""The fleet checklist: per rig, what stands between its proxy-router and selling, each item ok or a problem in one
plain sentence (what MyProvider calls "bid but no config", "config but no bid", and the rest of what loses sessions).

`rig_checklist` is a pure function of the Router row (its last report), the rig's Listings and their Deployments;
`fleet` and `for_rig` load those in a fixed number of queries, whatever the number of rigs.
"""

from dataclasses import dataclass

from hosting.services import Refused
from marketplace.models import Listing, Router
from marketplace.publishing import comparable, entry_for, with_recommendation
from nodes.models import Node


@dataclass(frozen=True)
class Item:
    ok: bool
    key: str  # what is checked, stable for pages and tests
    text: str


@dataclass
class RigChecklist:
    node: Node
    router: Router | None
    items: list

    @property
    def problems(self):
        return [item for item in self.items if not item.ok]

    @property
    def ready(self):
        """Ready to sell: a router, something published, and nothing wrong."""
        return self.router is not None and bool(self.items) and not self.problems


def short(model_id):
    return f"{model_id[:10]}…" if len(model_id or "") > 12 else (model_id or "")


def _router_items(node, router, snap):
    items = []
    if node.status != "online":
        items.append(Item(False, "rig-offline", f"{node.name} is {node.status}: what follows is its last report."))
    if router.reported_at is None:
        items.append(Item(False, "no-report", "The rig has not reported its proxy-router yet."))
    state, version = router.state, snap.get("version") or "unknown"
    if state == "healthy":
        items.append(Item(True, "router", f"The proxy-router is healthy (version {version})."))
    elif state == "degraded":
        items.append(Item(False, "router", "The proxy-router reports itself degraded: consumers may be refused."))
    elif router.is_running:
        items.append(Item(False, "router", f"The proxy-router is {state}: it does not serve yet."))
    else:
        why = (snap.get("message") or "").strip().splitlines()
        items.append(Item(False, "router", f"The proxy-router is {state}{': ' + why[0][:300] if why else ''}."))
    error = snap.get("error")
    if error:
        items.append(Item(False, "admin-api", f"Its admin API failed ({error.get('kind')}): {error.get('reason')}"))
    listening = snap.get("proxy_listening")
    if listening is True:
        items.append(Item(True, "proxy-port", f"Port {router.proxy_port} accepts consumers' connections on the rig."))
    elif listening is False:
        items.append(Item(False, "proxy-port", f"Port {router.proxy_port} (the router's proxy port) is not listening: "
                                               "consumers cannot reach this rig."))
    return items


def _lined_up(snap):
    """The report's bids, config entries and per-model health, each by lowercase model id."""
    bids = {str(b.get("model_id", "")).lower(): b for b in snap.get("bids") or [] if isinstance(b, dict)}
    config = {str(e.get("modelId", "")).lower(): e for e in snap.get("config_models") or [] if isinstance(e, dict)}
    health = {str(k).lower(): v for k, v in (snap.get("models_health") or {}).items()}
    return bids, config, health


def listing_items(listing, snap):
    """What the checklist says of one published deployment, from its router's last report."""
    bids, config, health = _lined_up(snap or {})
    deployment, model_id = listing.deployment, listing.model_id
    what = f"{deployment.name} ({listing.model_name}, model {short(model_id)})"
    try:
        expected = comparable([entry_for(listing)])[model_id]
    except Refused as exc:
        return [Item(False, "invalid-listing", f"{what} cannot be a models-config entry: {exc}")]
    items = []
    if model_id not in config:
        items.append(Item(False, "apply-pending", f"{what} is published but not in the models-config the router runs "
                                                  "with yet (apply pending)."))
    elif comparable([config[model_id]])[model_id] != expected:
        items.append(Item(False, "apply-pending", f"{what} changed since the router's models-config was written "
                                                  "(apply pending)."))
    elif model_id not in bids:
        items.append(Item(False, "config-without-bid", f"{what} is in models-config without an active bid: nobody "
                                                       "can open a session on it. Post a bid."))
    if not deployment.is_healthy:
        state = deployment.actual_state if deployment.desired_state == deployment.RUNNING else "stopped"
        if model_id in bids:
            items.append(Item(False, "bid-unhealthy", f"Your bid on {what} is active but the deployment is {state}: "
                                                      "sessions opened on it fail."))
        else:
            items.append(Item(False, "endpoint-down", f"{what} is {state}: its endpoint does not answer."))
    elif health.get(model_id) == "unhealthy":
        items.append(Item(False, "endpoint-down", f"The router's probe of {what} fails (unhealthy): consumers skip "
                                                  "it."))
    if not items and model_id in bids:
        items.append(Item(True, "listing-ok", f"{what} is on sale: in the router's config, healthy, bid active."))
    return items


def rig_checklist(node, router, listings):
    """The rig's checklist (RigChecklist): the router, its port, then bids, config entries and published
    deployments lined up by model id."""
    if router is None:
        items = [Item(False, "no-router", f"{len(listings)} deployment(s) published but no proxy-router on this rig: "
                                          "start one on its Marketplace page.")] if listings else []
        return RigChecklist(node, None, items)
    snap = router.snapshot or {}
    items = _router_items(node, router, snap)
    bids, config, _health = _lined_up(snap)
    published = {listing.model_id: listing for listing in listings}
    for model_id in sorted(bids):
        if model_id not in config:
            items.append(Item(False, "bid-without-config", f"Your bid on model {short(model_id)} has no models-config "
                                                           "entry: sessions opened on it fail. Publish a deployment "
                                                           "for that model, or delete the bid."))
    for model_id, entry in sorted(config.items()):
        name = f"{entry.get('modelName')} (model {short(model_id)})"
        if model_id not in published:
            items.append(Item(False, "config-not-published", f"{name} is in the router's models-config but no longer "
                                                             "published (apply pending)."))
    for listing in listings:
        items += listing_items(listing, snap)
    if not listings:
        items.append(Item(False, "nothing-published", "No deployment is published on this rig: publish one from its "
                                                      "deployment page (Sell on Morpheus)."))
    return RigChecklist(node, router, items)


def _listings_by_node(listings):
    found = {}
    for listing in listings:
        found.setdefault(listing.deployment.node_id, []).append(listing)
    return found


def fleet():
    """Every rig's checklist, in three queries."""
    nodes = list(Node.objects.order_by("name"))
    routers = {router.node_id: router for router in Router.objects.all()}
    listings = _listings_by_node(with_recommendation(Listing.objects.all()).order_by("pk"))
    checklists = []
    for node in nodes:
        router = routers.get(node.pk)
        if router is not None:
            router.node = node
        checklists.append(rig_checklist(node, router, listings.get(node.pk, [])))
    return checklists


def for_rig(node, router):
    listings = list(with_recommendation(Listing.objects.filter(deployment__node=node)).order_by("pk"))
    return rig_checklist(node, router, listings)


# Items that say the router does not run with what is published yet.
PENDING = ("apply-pending", "config-not-published")
