import json
from pathlib import Path

from django.db import migrations

from nodes.agent.validation import quant_from_name

CURATED = Path(__file__).resolve().parent.parent / "curated.json"


def load(apps, schema_editor):
    CatalogModel = apps.get_model("models_catalog", "CatalogModel")
    ModelFile = apps.get_model("models_catalog", "ModelFile")
    for entry in json.loads(CURATED.read_text()):
        model, _ = CatalogModel.objects.get_or_create(
            repo_id=entry["repo_id"],
            defaults={"name": entry["name"], "description": entry["description"], "curated": True},
        )
        for spec in entry["files"]:
            shards = [{"filename": name, "size": None, "sha256": None} for name in spec.get("shards", [])]
            ModelFile.objects.get_or_create(
                model=model, filename=spec["filename"],
                defaults={"quant": quant_from_name(spec["filename"]), "shards": shards},
            )


class Migration(migrations.Migration):
    dependencies = [("models_catalog", "0001_initial")]
    operations = [migrations.RunPython(load, migrations.RunPython.noop)]
