import logging

from celery import shared_task
from django.utils import timezone

from models_catalog import hub
from models_catalog.models import ModelFile

log = logging.getLogger("morpheus.catalog")


@shared_task(name="panel.read_model_facts", soft_time_limit=120, time_limit=150)
def read_model_facts(model_file_id):
    """Sizes and sha256 from the Hub's metadata, then the GGUF header through range requests."""
    model_file = ModelFile.objects.select_related("model").filter(pk=model_file_id).first()
    if model_file is None:
        return "gone"
    repo = model_file.model
    fields = {"facts_at": timezone.now()}
    try:
        listing = hub.repo_gguf_files(repo.repo_id, repo.revision)
        match = next((f for f in listing["files"] if f["filename"] == model_file.filename), None)
        if match is None:
            raise hub.HubError(f"{model_file.filename} is not in {repo.repo_id} at {repo.revision}")
        fields.update(size=match["size"], shards=match["shards"])
        first_size = match["shards"][0]["size"] if match["shards"] else match["size"]
        fields["facts"] = hub.remote_facts(repo.repo_id, model_file.filename, repo.revision, first_size)
        fields["facts_error"] = ""
    except hub.HubError as exc:
        fields["facts_error"] = str(exc)
    ModelFile.objects.filter(pk=model_file.pk).update(**fields)
    return fields.get("facts_error") or "ok"
