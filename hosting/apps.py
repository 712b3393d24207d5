from django.apps import AppConfig


class HostingConfig(AppConfig):
    name = "hosting"
    verbose_name = "Builds and deployments"

    def ready(self):
        from hosting import tasks  # noqa: F401  (registered at start-up, as in nodes.apps)
        from hosting.ingest import apply_deployment, apply_server_exit, apply_serving, operation_changed
        from nodes import ingest, models

        ingest.register("deployment", apply_deployment)
        ingest.register("server_exit", apply_server_exit)
        if apply_deployment not in ingest.INVENTORY_PARTS:
            ingest.INVENTORY_PARTS.append(apply_deployment)
        if apply_serving not in ingest.TELEMETRY_PARTS:
            ingest.TELEMETRY_PARTS.append(apply_serving)
        if operation_changed not in models.OPERATION_LISTENERS:
            models.OPERATION_LISTENERS.append(operation_changed)
        from hosting import benchmarks

        if benchmarks.operation_changed not in models.OPERATION_LISTENERS:
            models.OPERATION_LISTENERS.append(benchmarks.operation_changed)
