import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "morpheus_admin.settings")

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
