"""Installing a proxy-router release on the rig (nodes/agent/routerrelease.py): the panel sends a URL and the
sha256 the provider copied from the release page; the operation's result names the binary to start."""

import logging
import threading

from .. import protocol
from ..downloader import human_size
from ..routerrelease import ReleaseCancelled, ReleaseError, install, release_file_name
from ..validation import InvalidValue

log = logging.getLogger("morpheus.agent")


def register(agent):
    cancels = {}
    lock = threading.Lock()

    def cancel(operation_id):
        with lock:
            event = cancels.get(operation_id)
        if event is not None:
            event.set()

    agent.cancellers.append(cancel)

    # A release is tens of MB: no Celery limit; a stalled read times out on its own (routerrelease.READ_TIMEOUT).
    @agent.command(protocol.AGENT_ROUTER_INSTALL, soft_time_limit=None, time_limit=None)
    def router_install(operation_id, url, sha256):
        with agent.claimed(operation_id) as mine:
            if not mine:
                return
            event = threading.Event()
            with lock:
                cancels[operation_id] = event
            try:
                run(operation_id, url, sha256, event)
            finally:
                with lock:
                    cancels.pop(operation_id, None)

    def run(operation_id, url, sha256, event):
        name = release_file_name(url) if isinstance(url, str) else ""
        try:
            agent.operation(operation_id, protocol.RUNNING, f"downloading {name}")
            result = install(url, sha256, agent.cfg.router_dir, cancel=event,
                             progress=lambda p: agent.operation(operation_id, protocol.RUNNING, progress=p))
        except InvalidValue as exc:
            agent.operation(operation_id, protocol.FAILED, f"refused on the rig: {exc}")
        except ReleaseCancelled as exc:
            agent.operation(operation_id, protocol.CANCELLED, str(exc))
        except ReleaseError as exc:
            agent.operation(operation_id, protocol.FAILED, str(exc))
        except Exception as exc:
            log.exception("proxy-router install %s failed", operation_id)
            agent.operation(operation_id, protocol.FAILED, f"unexpected error on the rig: {type(exc).__name__}")
        else:
            verb = "already installed" if result["already"] else "installed"
            agent.operation(operation_id, protocol.SUCCEEDED,
                            f"{verb}: {result['binary']} ({human_size(result['bytes'])}, sha256 verified)", result,
                            progress={"done": result["bytes"], "total": result["bytes"], "unit": "B"})
