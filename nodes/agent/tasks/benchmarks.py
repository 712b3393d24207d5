"""The benchmark command: a throughput sweep against one of this rig's healthy servers (nodes/agent/benchmark.py)."""

import logging
import time

from .. import protocol
from ..benchmark import BenchmarkError, check_request, run_sweep
from ..probe import PowerMeter
from ..supervisor import HEALTHY

log = logging.getLogger("morpheus.agent")
LIMIT = 570  # seconds: inside the panel's default run limit (600 s), so the rig's reason lands first


def server_address(host, port):
    """Where the agent reaches its own server: a server on every address is reached on loopback."""
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def register(agent):
    @agent.command(protocol.AGENT_BENCHMARK_DEPLOYMENT)
    def benchmark_deployment(operation_id, deployment_id, request):
        with agent.claimed(operation_id) as mine:
            if mine:
                benchmark(operation_id, deployment_id, request)

    def benchmark(operation_id, deployment_id, request):
        servers = agent.supervisor.servers if hasattr(agent, "supervisor") else {}
        server = servers.get(deployment_id) if isinstance(deployment_id, int) else None
        if server is None:
            agent.operation(operation_id, protocol.FAILED, f"deployment {deployment_id} is not on this rig")
            return
        if server.state != HEALTHY or not server.is_running():
            why = f": {server.message}" if server.message else ""
            agent.operation(operation_id, protocol.FAILED, f"the server is {server.state}{why}; not benchmarked")
            return
        spec = server.spec
        try:
            clean = check_request(request, spec.parallel, spec.ctx_size)
        except BenchmarkError as exc:
            agent.operation(operation_id, protocol.FAILED, f"refused on the rig: {exc}")
            return

        def on_step(done, total, partial):
            last = partial["steps"][-1]
            agent.operation(operation_id, protocol.RUNNING,
                            f"{last['concurrency']} stream(s): {last['aggregate_tps']:.1f} tok/s together",
                            result=partial, progress={"done": done, "total": total, "unit": "steps"})

        # The agent runs commands on threads, where Celery's time limits are not enforced: the sweep keeps its own.
        deadline = time.monotonic() + LIMIT
        try:
            result = run_sweep(server_address(spec.host, spec.port), spec.api_key, clean, spec.parallel,
                               power_meter=PowerMeter, on_step=on_step, deadline=deadline)
        except (BenchmarkError, OSError, ValueError) as exc:
            log.warning("benchmark of deployment %s failed: %s", deployment_id, exc)
            agent.operation(operation_id, protocol.FAILED, f"benchmark failed (server {server.state}): {exc}")
            return
        result["deployment_id"] = deployment_id
        result["generation"] = spec.generation
        top = max(result["steps"], key=lambda s: s["aggregate_tps"])
        agent.operation(operation_id, protocol.SUCCEEDED,
                        f"{result['steps'][0]['per_stream_tps']:.1f} tok/s single stream, {top['aggregate_tps']:.1f} "
                        f"tok/s at {top['concurrency']} streams; recommended {result['recommended_sessions']} sessions",
                        result=result)
