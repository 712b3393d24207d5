"""Applying an agent's `model_files` report: what GGUF files sit on the rig's disk."""


from models_catalog.models import ModelFile, RigFile


def _catalogue_match(item, model_file_id):
    if model_file_id:
        return ModelFile.objects.filter(pk=model_file_id).first()
    if item["repo_id"] and item["filename"]:
        return ModelFile.objects.filter(model__repo_id=item["repo_id"], filename=item["filename"]).first()
    return None


def apply_model_files(rig, report, now, seq):
    """Each file's row takes only a report newer than the one it came from (reports may arrive out of order, or
    twice when the rig sends one again)."""
    paths = [item["path"] for item in report["files"]]
    older = RigFile.objects.filter(node=rig, report_seq__lt=seq)
    if report["mode"] == "remove":
        _drop(older.filter(path__in=paths))
        return
    if report["mode"] == "replace":
        _drop(older.exclude(path__in=paths))
    for item in report["files"]:
        existing = RigFile.objects.filter(node=rig, path=item["path"]).first()
        if existing is not None and existing.report_seq >= seq:
            continue
        defaults = {
            "size": item["size"],
            "facts": item["facts"],
            "facts_error": item["facts_error"],
            "shard_paths": item["shard_paths"],
            "updated": now,
            "report_seq": seq,
        }
        if report["mode"] == "upsert" or existing is None:
            defaults.update(
                sha256=item["sha256"], verified=item["verified"], repo_id=item["repo_id"], filename=item["filename"],
                model_file=_catalogue_match(item, report["model_file"]),
                source="download" if report["mode"] == "upsert" else "scan",
            )
        elif existing.verified and not item["verified"]:
            # The agent's manifest no longer vouches for it (size or mtime changed): the old check no longer holds.
            defaults.update(verified=False, sha256=item["sha256"])
        RigFile.objects.update_or_create(node=rig, path=item["path"], defaults=defaults)


def _drop(rig_files):
    """Forget files gone from the disk — except those a deployment names: keep them, marked missing."""
    in_use = rig_files.filter(deployments__isnull=False).distinct()
    in_use.update(facts_error="missing on the rig's disk", verified=False)
    rig_files.exclude(pk__in=in_use.values("pk")).delete()
