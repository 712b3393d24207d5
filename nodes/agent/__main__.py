"""Start the rig agent: `python -m nodes.agent --broker redis://HOST:PORT/0 --node NAME --data-dir DIR`.

The rig's token is read from `DIR/token` (chmod 600), MORPHEUS_NODE_TOKEN_FILE, or MORPHEUS_NODE_TOKEN (containers).
`--log-file PATH` also writes the log to PATH, rotated by size (MORPHEUS_AGENT_LOG_MAX_BYTES, default 10 MiB, 3 kept).
"""

import argparse
import os
import sys

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3


def log_to_file(path, max_bytes):
    """Send Celery's log (the root logger it sets up, and its task logger) to `path` too, rotated by size. Celery's own
    `--logfile` never rotates and replaces stderr; this adds to it."""
    import logging
    from logging.handlers import RotatingFileHandler

    from celery import signals

    handler = None

    def add(logger, **kwargs):
        nonlocal handler
        if handler is None:  # one handler (one file to rotate) for both loggers, in the root logger's format
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            handler = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=LOG_BACKUPS, encoding="utf-8")
            handler.setFormatter(logging.Formatter(kwargs.get("format") or logging.BASIC_FORMAT))
        if handler not in logger.handlers:
            logger.addHandler(handler)

    signals.after_setup_logger.connect(add, weak=False)
    signals.after_setup_task_logger.connect(add, weak=False)


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
    parser.add_argument("--log-file", default=os.environ.get("MORPHEUS_AGENT_LOG_FILE"),
                        help="also log to this file, rotated by size (MORPHEUS_AGENT_LOG_MAX_BYTES, default 10 MiB)")
    args = parser.parse_args(argv)
    try:
        log_max_bytes = int(os.environ.get("MORPHEUS_AGENT_LOG_MAX_BYTES") or LOG_MAX_BYTES)
        if log_max_bytes < 1:
            raise ValueError
    except ValueError:
        parser.error("MORPHEUS_AGENT_LOG_MAX_BYTES must be a positive number of bytes")
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

    from . import brokerloss
    from .transport import WORKER_ARGS
    from .worker import create_app

    if args.log_file:
        log_to_file(args.log_file, log_max_bytes)
    brokerloss.install()  # before any broker connection: a lost connection must not kill the agent
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
