"""Start the rig agent: `python -m nodes.agent --broker redis://HOST:6379/0 --node NAME` (token in env)."""

import argparse
import os
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nodes.agent", description=__doc__)
    parser.add_argument("--broker", default=os.environ.get("MORPHEUS_BROKER_URL"), help="panel's Redis URL")
    parser.add_argument("--node", default=os.environ.get("MORPHEUS_NODE"), help="rig name from the panel")
    parser.add_argument("--data-dir", default=os.environ.get("MORPHEUS_AGENT_DATA_DIR"), help="state and models")
    parser.add_argument("--interval", default=os.environ.get("MORPHEUS_TELEMETRY_INTERVAL"), help="seconds")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="worker threads (default: max downloads + 4, so pings never wait behind downloads)")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    for key, value in (
        ("MORPHEUS_BROKER_URL", args.broker),
        ("MORPHEUS_NODE", args.node),
        ("MORPHEUS_AGENT_DATA_DIR", args.data_dir),
        ("MORPHEUS_TELEMETRY_INTERVAL", args.interval),
    ):
        if value:
            os.environ[key] = str(value)
    if "MORPHEUS_NODE_TOKEN" not in os.environ:
        parser.error("set MORPHEUS_NODE_TOKEN in the environment (kept out of the process list)")

    from .config import AgentConfigError

    try:
        from .worker import app, config
    except AgentConfigError as exc:
        parser.error(str(exc))
    from .protocol import node_queue

    app.worker_main(
        [
            "worker",
            "--queues", node_queue(config.node),
            "--hostname", f"{config.node}@%h",
            "--pool", "threads",
            "--concurrency", str(args.concurrency or config.max_downloads + 4),
            "--without-gossip",
            "--without-mingle",
            "--loglevel", args.loglevel,
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
