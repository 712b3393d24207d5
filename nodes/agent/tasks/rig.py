"""Commands about the rig itself: ping, hardware refresh, and cancelling whatever an operation runs."""

import time

from .. import protocol


def register(agent):
    agent.cancellers = []  # each purpose adds a callable that stops its work for an operation id

    @agent.command(protocol.AGENT_PING)
    def ping(operation_id):
        agent.operation(operation_id, "succeeded", "agent answered", {"agent_time": time.time(), "node": agent.cfg.node})

    @agent.command(protocol.AGENT_REFRESH_HARDWARE)
    def refresh_hardware(operation_id):
        agent.operation(operation_id, "running", "probing hardware")
        try:
            profile = agent.publish_hardware()
        except Exception as exc:
            agent.operation(operation_id, "failed", f"hardware probe failed: {exc}")
            raise
        gpus = len(profile["gpus"])
        agent.operation(operation_id, "succeeded", f"{gpus} GPU{'s' if gpus != 1 else ''} detected", {"gpus": gpus})

    @agent.command(protocol.AGENT_ACK)
    def ack(seqs):
        """The panel applied these reports: they leave the outbox."""
        if isinstance(seqs, list) and len(seqs) <= 10_000:
            agent.outbox.acked([s for s in seqs if isinstance(s, int) and not isinstance(s, bool)])

    @agent.command(protocol.AGENT_CANCEL)
    def cancel(operation_id):
        for canceller in agent.cancellers:
            canceller(operation_id)
