import logging
import os
from collections.abc import Mapping

from celery import Celery, signals

from nodes.agent import brokerloss

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "morpheus_admin.settings")

# The panel worker uses remote control (a second channel on its broker connection): without this a Redis restart
# during one of its tasks kills it, as it would an agent (nodes/agent/brokerloss.py).
brokerloss.install()

app = Celery("morpheus_admin")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.task_prerun.connect
@signals.task_postrun.connect
def close_old_connections(task=None, **kwargs):
    """Around each task, as Django does around each request: drop a connection that broke or outlived CONN_MAX_AGE."""
    if task is not None and getattr(task.request, "is_eager", False):
        return  # an eager task runs inside its caller's transaction
    from django.db import close_old_connections as close_old

    close_old()


# Tasks too frequent for a log line each: a rig reports telemetry every few seconds, and what a report changes is
# logged by the ingest itself (one line per change). MORPHEUS_LOG_REPORTS=1 logs every one again (troubleshooting).
QUIET_TASKS = frozenset({"panel.report"})


class QuietTasks(logging.Filter):
    """Drops Celery's per-task INFO lines ("received", "succeeded in", "Discarding revoked task") for QUIET_TASKS;
    warnings and errors about them stay."""

    def filter(self, record):
        if record.levelno > logging.INFO:
            return True
        args = record.args
        if isinstance(args, Mapping):
            name = args.get("name")
        elif isinstance(args, tuple) and args:
            name = args[0]
        else:
            return True
        return name not in QUIET_TASKS


if os.environ.get("MORPHEUS_LOG_REPORTS", "") not in ("1", "true", "yes"):
    for _logger in ("celery.app.trace", "celery.worker.strategy", "celery.worker.request"):
        logging.getLogger(_logger).addFilter(QuietTasks())
