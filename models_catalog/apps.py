from django.apps import AppConfig


class ModelsCatalogConfig(AppConfig):
    name = "models_catalog"
    verbose_name = "Model catalogue"

    def ready(self):
        from models_catalog import tasks  # noqa: F401  (registered at start-up, as in nodes.apps)
        from models_catalog.ingest import apply_model_files
        from nodes import ingest

        ingest.register("model_files", apply_model_files)
