"""Commands about llama.cpp builds: build from source, adopt a binary, delete a build folder."""

import logging
import shutil
from pathlib import Path

from .. import builder as builds, protocol
from ..probe import probe_hardware

log = logging.getLogger("morpheus.agent")


def register(agent):
    config = agent.cfg
    builder = agent.builder = builds.Builder(config.data_dir / "builds", ccache_dir=config.ccache_dir)
    build_of_operation = {}

    def cancel(operation_id):
        build_id = build_of_operation.get(operation_id)
        if build_id is not None:  # a running llama.cpp build: kill its process group
            builder.cancel(build_id)

    agent.cancellers.append(cancel)

    @agent.command(protocol.AGENT_BUILD_LLAMA, soft_time_limit=None, time_limit=None)
    def build_llama(operation_id, build_id, request, hardware=None):
        with agent.claimed(operation_id) as mine:
            if not mine:
                return
            build_of_operation[operation_id] = build_id
            try:
                _build(operation_id, build_id, request)
            finally:
                build_of_operation.pop(operation_id, None)

    def _build(operation_id, build_id, request):
        try:
            try:
                build_request = builds.BuildRequest(**request)
            except (builds.BuildError, TypeError) as exc:
                agent.operation(operation_id, "failed", f"refused: {exc}")
                return
            # The rig's own view of its GPUs decides the backend, not what the panel last saw.
            hardware = probe_hardware(config.data_dir)
            agent.operation(operation_id, "running", f"building {build_request.ref} from {build_request.source}")

            def progress(p):
                agent.operation(operation_id, "running", f"{p['stage']} {p['percent']}%",
                                progress={"done": p["percent"], "total": 100, "unit": "%"}, log_tail=p["log"])

            result = builder.build(build_request, hardware, progress=progress)
            log_tail = result.pop("log")
            agent.operation(operation_id, "succeeded",
                            f"built llama-server {result['version']} ({result['backend']}) in {result['seconds']:.0f} s",
                            result, progress={"done": 100, "total": 100, "unit": "%"}, log_tail=log_tail)
        except builds.BuildCancelled as exc:
            agent.operation(operation_id, "cancelled", str(exc))
        except builds.BuildError as exc:
            agent.operation(operation_id, "failed", str(exc))
        except Exception as exc:
            log.exception("build %s failed", build_id)
            agent.operation(operation_id, "failed", f"unexpected error on the rig: {type(exc).__name__}: {exc}")

    @agent.command(protocol.AGENT_ADOPT_BUILD)
    def adopt_build(operation_id, build_id, path):
        with agent.claimed(operation_id) as mine:
            if not mine:
                return
            try:
                path = builds.check_server_path(path)  # the rig checks again what the panel's form checked
                version = builds.server_version(path)
                backend = "cuda" if "cuda" in version["version_text"].lower() else "cpu"
                agent.operation(operation_id, "succeeded", f"llama-server {version['version']} runs; adopted",
                                {"binary": path, "backend": backend, "seconds": 0, **version})
            except builds.BuildError as exc:
                agent.operation(operation_id, "failed", str(exc))

    @agent.command(protocol.AGENT_DELETE_BUILD)
    def delete_build(operation_id, build_id):
        with agent.claimed(operation_id) as mine:
            if not mine:
                return
            folder = (config.data_dir / "builds" / str(int(build_id))).resolve()
            # Exact paths: build 1's folder is not a prefix of build 12's.
            in_use = [s for s in agent.supervisor.snapshot()
                      if s["pid"] and s.get("binary") and Path(s["binary"]).resolve().is_relative_to(folder)]
            if in_use:
                agent.operation(operation_id, "failed", "a running server uses this build",
                                {"build_id": int(build_id)})
                return
            shutil.rmtree(folder, ignore_errors=True)
            if folder.exists():
                agent.operation(operation_id, "failed", f"could not remove {folder}", {"build_id": int(build_id)})
                return
            agent.operation(operation_id, "succeeded", f"removed {folder}", {"build_id": int(build_id)})
