"""Commands about llama-server deployments: apply one (launch, stop, restart), forget one, reconcile them all."""

import logging
import threading

from .. import protocol
from ..serverspec import SpecError
from ..serving import ServingWatch, supervised_targets
from ..supervisor import FAILED as SERVER_FAILED, HEALTHY as SERVER_HEALTHY, Supervisor

log = logging.getLogger("morpheus.agent")


def register(agent):
    pending_goal = {}  # deployment id → (operation id, goal state, generation)
    goal_lock = threading.Lock()

    last_state = {}  # deployment id → what its last kept report said

    def deployment_report(report):
        # The operation's outcome first: a provider's click waits on it, the state report can follow.
        with goal_lock:
            pending = pending_goal.get(report["deployment"])
            if pending is not None and report["generation"] >= pending[2]:
                operation_id, goal, _generation = pending
                if report["state"] == goal:
                    del pending_goal[report["deployment"]]
                    agent.operation(operation_id, "succeeded", report["message"] or goal)
                elif report["state"] == SERVER_FAILED:
                    del pending_goal[report["deployment"]]
                    agent.operation(operation_id, "failed", report["message"])
        # A change of state is kept until the panel has it; the periodic repeat of an unchanged one is not.
        state = (report["state"], report["pid"], report["restarts"], report["generation"], report["message"])
        changed = last_state.get(report["deployment"]) != state
        last_state[report["deployment"]] = state
        agent.send(protocol.DEPLOYMENT, report, durable=changed)

    supervisor = agent.supervisor = Supervisor(
        agent.cfg.state_dir, on_report=deployment_report,
        on_exit=lambda event: agent.send(protocol.SERVER_EXIT, event, durable=True))
    agent.on_first_connect.append(supervisor.start)  # re-adopts servers that kept running while the agent was down
    # Each healthy server's /metrics and /slots, read on a thread of their own for the telemetry report.
    agent.serving = ServingWatch(lambda: supervised_targets(supervisor, SERVER_HEALTHY),
                                 interval=agent.cfg.telemetry_interval, clock=agent.clock)
    agent.on_first_connect.append(agent.serving.start)

    def launches_in_flight():
        with goal_lock:
            return [operation_id for operation_id, _goal, _generation in pending_goal.values()]

    agent.in_flight.append(launches_in_flight)

    @agent.command(protocol.AGENT_APPLY_DEPLOYMENT)
    def apply_deployment(operation_id, spec, goal):
        with goal_lock:
            pending_goal[spec["deployment_id"]] = (operation_id, goal, spec.get("generation", 0))
        try:
            supervisor.apply(spec)
        except SpecError as exc:
            with goal_lock:
                pending_goal.pop(spec["deployment_id"], None)
            agent.operation(operation_id, "failed", f"refused on the rig: {exc}")

    @agent.command(protocol.AGENT_FORGET_DEPLOYMENT)
    def forget_deployment(deployment_id):
        supervisor.forget(deployment_id)

    @agent.command(protocol.AGENT_RECONCILE_DEPLOYMENTS)
    def reconcile_deployments(specs):
        """The panel's periodic reminder of every deployment it wants here; anything else is stopped and dropped."""
        wanted = set()
        for spec in specs:
            wanted.add(spec.get("deployment_id"))
            try:
                supervisor.apply(spec)
            except SpecError as exc:
                log.warning("deployment %s refused: %s", spec.get("deployment_id"), exc)
        for report in supervisor.snapshot():
            if report["deployment"] not in wanted:
                supervisor.forget(report["deployment"])
