"""Start the rig agent: `python -m nodes.agent --broker redis://HOST:PORT/0 --node NAME --data-dir DIR`.

The rig's token is read from `DIR/token` (chmod 600), MORPHEUS_NODE_TOKEN_FILE, or MORPHEUS_NODE_TOKEN (containers).
"""

import argparse
import os
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nodes.agent", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", default=os.environ.get("MORPHEUS_BROKER_URL"),
                        help="the panel's Redis URL, without credentials (the agent logs in as its own rig)")
    parser.add_argument("--node", default=os.environ.get("MORPHEUS_NODE"), help="rig name from the panel")
    parser.add_argument("--data-dir", default=os.environ.get("MORPHEUS_AGENT_DATA_DIR"), help="state and models")
    parser.add_argument("--token-file", default=os.environ.get("MORPHEUS_NODE_TOKEN_FILE"),
                        help="file holding the rig's token (default: DATA_DIR/token)")
    parser.add_argument("--interval", default=os.environ.get("MORPHEUS_TELEMETRY_INTERVAL"), help="seconds")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="worker threads (default: max downloads + 4, so pings never wait behind downloads)")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    for key, value in (
        ("MORPHEUS_BROKER_URL", args.broker),
        ("MORPHEUS_NODE", args.node),
        ("MORPHEUS_AGENT_DATA_DIR", args.data_dir),
        ("MORPHEUS_NODE_TOKEN_FILE", args.token_file),
        ("MORPHEUS_TELEMETRY_INTERVAL", args.interval),
    ):
        if value:
            os.environ[key] = str(value)

    from .config import AgentConfig, AgentConfigError
    from .protocol import node_queue

    try:
        config = AgentConfig.from_env()
    except AgentConfigError as exc:
        parser.error(str(exc))
    # Nothing this agent starts (a build's CMake, llama-server) may inherit the credentials.
    for key in ("MORPHEUS_NODE_TOKEN", "MORPHEUS_BROKER_URL"):
        os.environ.pop(key, None)

    from .transport import WORKER_ARGS
    from .worker import create_app

    app = create_app(config)
    app.worker_main(
        [
            "worker",
            "--queues", node_queue(config.node),
            "--hostname", f"{config.node}@%h",
            "--pool", "threads",
            "--concurrency", str(args.concurrency or config.max_downloads + 4),
            *WORKER_ARGS,
            "--loglevel", args.loglevel,
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
