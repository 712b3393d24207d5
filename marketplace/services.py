"""Starting the proxy-router on a rig: the config the agent applies (nodes/agent/tasks/router.py)."""

from pathlib import PurePosixPath

from django.db import transaction

from hosting.services import Refused
from marketplace import publishing
from marketplace.models import Listing, Router
from nodes.agent.protocol import ROUTER_NETWORKS
from nodes.models import Operation
from nodes.operations import start_operation


def check_binary_path(path):
    """The router binary's absolute path on the rig, as far as it can be told without looking at the rig."""
    path = (path or "").strip()
    if (not path.startswith("/") or len(path) > 4096 or any(c < " " for c in path)
            or ".." in PurePosixPath(path).parts or path.endswith("/")):
        raise Refused(f"{path!r} is not a plain absolute path: give the full path of the proxy-router binary "
                      "on the rig")
    return path


def check_port(value, what):
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise Refused(f"{what} must be a port between 1 and 65535")
    return value


class RestartNeeded(Refused):
    """Applying would restart a running router and cut its open sessions: the provider has to agree first."""

    def __init__(self, router):
        self.open_sessions = router.open_sessions
        super().__init__(f"the proxy-router on {router.node.name} is {router.state}: applying restarts it and cuts its "
                         f"{router.open_sessions} open session(s)")


def router_config(router):
    """What the rig is sent: the managed settings and one models-config entry per published deployment (API keys
    sealed for the rig by the channel). Never the wallet key: it stays in the .env the provider wrote on the rig."""
    return {"network": router.network, "binary": router.binary_path,
            "env": {"PROXY_ADDRESS": f"0.0.0.0:{router.proxy_port}", "WEB_ADDRESS": f"127.0.0.1:{router.web_port}"},
            "models": publishing.config_entries(router.node)}


def apply_listings(router, user, confirm_restart=False):
    """Send the rig's published deployments to its router: None when they are in force already. A router that
    reloads its models is told to apply them without a restart only; one that restarts needs `confirm_restart`."""
    config = router_config(router)
    if publishing.in_force(router, config["models"]):
        return None
    payload = {"config": config}
    if router.is_running and router.snapshot.get("reload_supported") is True:
        payload["reload_only"] = True
    elif publishing.restart_needed(router) and not confirm_restart:
        raise RestartNeeded(router)
    return start_operation(router.node, Operation.ROUTER_APPLY, user, target="models-config", payload=payload)


def publish_deployment(deployment, user, model_id, model_name, concurrent_slots=None, capacity_policy="simple",
                       confirm_restart=False, later=False):
    """Save the deployment's listing and (unless `later`) apply it: (listing, operation or None). Nothing is saved
    when it is refused, a restart not agreed to included."""
    with transaction.atomic():
        router = Router.objects.select_for_update().select_related("node").filter(node=deployment.node).first()
        listing = publishing.save_listing(deployment, user, router, model_id, model_name, concurrent_slots,
                                          capacity_policy)
        operation = None if later else apply_listings(router, user, confirm_restart)
    return listing, operation


def unpublish_deployment(listing, user, confirm_restart=False, later=False):
    """Remove the listing and (unless `later`) apply the rig's models without it: the operation or None."""
    with transaction.atomic():
        router = Router.objects.select_for_update().select_related("node").filter(
            node=listing.deployment.node).first()
        Listing.objects.filter(pk=listing.pk).delete()
        return None if later or router is None else apply_listings(router, user, confirm_restart)


def apply_published(router, user, confirm_restart=False):
    with transaction.atomic():
        router = Router.objects.select_for_update().select_related("node").get(pk=router.pk)
        return apply_listings(router, user, confirm_restart)


def apply_router(node, user, network, binary, proxy_port=None, web_port=None, restart=False):
    if network not in ROUTER_NETWORKS:
        raise Refused(f"network must be one of {', '.join(ROUTER_NETWORKS)}")
    binary = check_binary_path(binary)
    with transaction.atomic():
        router, _ = Router.objects.select_for_update().get_or_create(node=node, defaults={"binary_path": binary})
        router.network, router.binary_path = network, binary
        if proxy_port is not None:
            router.proxy_port = check_port(proxy_port, "the proxy port")
        if web_port is not None:
            router.web_port = check_port(web_port, "the admin API port")
        if router.proxy_port == router.web_port:
            raise Refused("the proxy port and the admin API port must differ")
        router.save()
        payload = {"config": router_config(router)}
        if restart:
            payload["restart"] = True
        return start_operation(node, Operation.ROUTER_APPLY, user, target=binary, payload=payload)


def refresh_router(node, user):
    return start_operation(node, Operation.ROUTER_REFRESH, user, target="proxy-router")
