"""Publishing a deployment on the Morpheus marketplace: the Listing row, and the models-config entry it becomes on its
rig's proxy-router (the router sends consumers' chats to the entry's apiUrl with `model` set to its modelName)."""

import re

from django.db.models import OuterRef, Subquery

from hosting.models import Benchmark
from hosting.services import Refused
from marketplace.models import Listing
from nodes.agent.router import ModelsConfigError, models_config_entry, validate_models_config
from nodes.agent.routermodels import reported_models
from nodes.agent.validation import InvalidValue

MODEL_ID_RE = re.compile(r"^0x[0-9a-fA-F]{64}$")
# What the panel compares between the entries it publishes and the ones the rig reports in force.
ENTRY_KEYS = ("modelId", "modelName", "apiType", "apiUrl", "concurrentSlots", "capacityPolicy", "apiKey")


def api_url(deployment):
    """The deployment's full chat-completions URL as the proxy-router on the same rig reaches it: loopback when the
    server listens on loopback or on every address, else the one address it listens on."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(deployment.host, deployment.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{deployment.port}/v1/chat/completions"


def _latest_recommendation():
    latest = Benchmark.objects.filter(deployment=OuterRef("deployment")).order_by("-created", "-id")
    return Subquery(latest.values("recommended_sessions")[:1])


def with_recommendation(listings):
    """Listings with their deployment, rig and the deployment's latest benchmark recommendation, in one query."""
    return listings.select_related("deployment__node").annotate(recommended=_latest_recommendation())


def recommended_slots(deployment):
    """Concurrent slots to offer: the latest benchmark's recommended sessions, else the server's parallel slots."""
    latest = deployment.benchmarks.order_by("-created", "-id").values_list("recommended_sessions", flat=True).first()
    return latest or deployment.parallel


def slots_of(listing):
    if listing.concurrent_slots:
        return listing.concurrent_slots
    if hasattr(listing, "recommended"):  # loaded by with_recommendation: no query per listing
        return listing.recommended or listing.deployment.parallel
    return recommended_slots(listing.deployment)


def entry_for(listing):
    """The listing's models-config entry. It holds the deployment's API key (llama-server refuses requests without
    it): the channel seals it for its rig alone (protocol.SECRET_FIELDS), and it is never shown."""
    deployment = listing.deployment
    try:
        entry = models_config_entry(listing.model_id, listing.model_name, api_url(deployment), slots_of(listing),
                                    listing.capacity_policy)
    except InvalidValue as exc:
        raise Refused(f"{deployment.name} cannot be published: {exc}") from None
    if deployment.api_key:
        entry["apiKey"] = deployment.api_key
    return entry


def config_entries(node):
    """Every published deployment of the rig as models-config entries, checked against the router's schema."""
    listings = with_recommendation(Listing.objects.filter(deployment__node=node)).order_by("pk")
    entries = [entry_for(listing) for listing in listings]
    try:
        validate_models_config({"models": entries})
    except ModelsConfigError as exc:
        raise Refused(f"the published deployments do not make a valid models-config.json: {exc}") from None
    return entries


def comparable(entries):
    """Entries as the rig reports them (an apiKey only as "set"), by model id, for comparison."""
    return {e.get("modelId", "").lower(): {k: e[k] for k in ENTRY_KEYS if k in e}
            for e in reported_models(entries) if isinstance(e, dict)}


def in_force(router, entries):
    """Whether the router reports exactly these entries as the models-config it runs with."""
    return comparable(entries) == comparable((router.snapshot or {}).get("config_models") or [])


def restart_needed(router):
    """Applying a new models list to this router cuts its open sessions: it is running, and it has not shown that it
    reloads its models without a restart."""
    return router is not None and router.is_running and (router.snapshot or {}).get("reload_supported") is not True


def check_model_id(value):
    value = (value or "").strip()
    if not MODEL_ID_RE.match(value):
        raise Refused(f"{value!r} is not an on-chain model id: 0x and 64 hex digits")
    return value.lower()


def default_model_name(deployment):
    if deployment.alias:
        return deployment.alias
    name = deployment.model_file.path.rsplit("/", 1)[-1]
    return name[:-5] if name.lower().endswith(".gguf") else name


def check_router(node, router):
    if router is None:
        raise Refused(f"{node.name} has no proxy-router yet: start one on the rig's Marketplace page "
                      f"(/rigs/{node.name}/marketplace/), then publish")


def save_listing(deployment, user, router, model_id, model_name, concurrent_slots=None, capacity_policy="simple"):
    """Create or change the deployment's Listing, every value checked first; nothing is sent to the rig here."""
    node = deployment.node
    check_router(node, router)
    model_id = check_model_id(model_id)
    model_name = (model_name or "").strip()
    if not model_name or len(model_name) > 200 or any(c < " " for c in model_name):
        raise Refused("the model name must be 1 to 200 characters on one line")
    if concurrent_slots is not None and not 1 <= concurrent_slots <= deployment.parallel:
        raise Refused(f"concurrent slots must be between 1 and the server's {deployment.parallel} parallel slots")
    if capacity_policy not in Listing.CAPACITY_POLICIES:
        raise Refused(f"capacity policy must be one of {', '.join(Listing.CAPACITY_POLICIES)}")
    other = Listing.objects.filter(deployment__node=node, model_id=model_id).exclude(deployment=deployment).first()
    if other is not None:
        raise Refused(f"model {model_id} is already served by {other.deployment.name} on {node.name}: a router keeps "
                      "one entry per model")
    listing = Listing.objects.filter(deployment=deployment).first() or Listing(deployment=deployment, created_by=user)
    listing.model_id, listing.model_name = model_id, model_name
    listing.concurrent_slots, listing.capacity_policy = concurrent_slots, capacity_policy
    entry_for(listing)  # refused here, before it is saved, if it cannot be an entry
    listing.save()
    return listing
