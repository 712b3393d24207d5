"""Proxy-router releases installed on a rig by URL and sha256 (the rig's side: nodes/agent/routerrelease.py)."""

import re
from pathlib import PurePosixPath

from hosting.services import Refused
from marketplace.services import check_binary_path
from nodes.agent.routerrelease import installed_name, release_file_name, release_sha256, release_url
from nodes.agent.validation import InvalidValue
from nodes.models import Operation
from nodes.operations import start_operation

RECENT = 5
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def start_install(node, user, url, sha256):
    """Ask the rig to fetch the release and keep it only if its digest matches; the target is the file's name."""
    try:
        url, sha256 = release_url(url), release_sha256(sha256)
    except InvalidValue as exc:
        raise Refused(str(exc)) from None
    return start_operation(node, Operation.ROUTER_INSTALL, user, target=release_file_name(url)[:200],
                           payload={"url": url, "sha256": sha256})


def installed_binary(operation):
    """The binary a succeeded install reported, if the report holds together (the rig is not trusted): an absolute
    plain path to `proxy-router-<first 12 hex of its sha256>`; else None."""
    result = operation.result if isinstance(operation.result, dict) else {}
    binary, sha256 = result.get("binary"), result.get("sha256")
    if operation.status != Operation.SUCCEEDED or not isinstance(sha256, str) or not SHA256_HEX.match(sha256):
        return None
    try:
        binary = check_binary_path(binary if isinstance(binary, str) else "")
    except Refused:
        return None
    return binary if PurePosixPath(binary).name == installed_name(sha256) else None


def recent_installs(node):
    """The last installs on this rig, newest first, each with the binary it left (or None)."""
    operations = Operation.objects.filter(node=node, kind=Operation.ROUTER_INSTALL).order_by("-pk")[:RECENT]
    installs = []
    for op in operations:
        binary = installed_binary(op)
        installs.append({"operation": op, "binary": binary, "sha256": op.result["sha256"] if binary else None})
    return installs
