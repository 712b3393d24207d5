"""Starting the proxy-router on a rig: the config the agent applies (nodes/agent/tasks/router.py)."""

from pathlib import PurePosixPath

from django.db import transaction

from hosting.services import Refused
from marketplace.models import Router
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


def router_config(router):
    """What the rig is sent. The models list comes from published deployments (issue 11, part 2): empty until
    deployments can be published. Never the wallet key: it stays in the .env the provider wrote on the rig."""
    return {"network": router.network, "binary": router.binary_path,
            "env": {"PROXY_ADDRESS": f"0.0.0.0:{router.proxy_port}", "WEB_ADDRESS": f"127.0.0.1:{router.web_port}"},
            "models": []}


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
