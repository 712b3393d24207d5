from django.apps import AppConfig


class NodesConfig(AppConfig):
    name = "nodes"
    verbose_name = "Rigs"

    def ready(self):
        # Register this app's Celery tasks at Django start-up, before anything can finalize the Celery app:
        # a shared task first imported after that is missing from its registry (NotRegistered).
        from nodes import tasks  # noqa: F401
