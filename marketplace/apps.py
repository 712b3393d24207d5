from django.apps import AppConfig


class MarketplaceConfig(AppConfig):
    name = "marketplace"
    verbose_name = "Proxy-router and marketplace"

    def ready(self):
        from marketplace.ingest import apply_router
        from nodes import ingest

        ingest.register("router", apply_router)
