from django.conf import settings
from django.http import HttpResponse
from django.views.decorators.gzip import gzip_page
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from metrics import access
from metrics.collector import FleetCollector


@require_GET
@gzip_page  # Prometheus asks for gzip: 200 rigs × 8 GPUs are ~2.5 MB of text, a tenth of it compressed
def scrape(request):
    """Prometheus's scrape: refused unless the bearer token is right or the client's network is allowed."""
    status, reason = access.decide(request.headers.get("Authorization", ""), request.META.get("REMOTE_ADDR", ""),
                                   settings.METRICS_TOKEN, settings.METRICS_ALLOW)
    if status != 200:
        response = HttpResponse(reason + "\n", status=status, content_type="text/plain; charset=utf-8")
        if status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector())
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = HttpResponse(encoder(registry), content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response
