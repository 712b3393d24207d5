"""Asking rigs to download a catalogue file, with the checks that keep a provider from wasting a rig's time."""

from django.conf import settings
from django.template.defaultfilters import filesizeformat

from models_catalog.models import HubSettings, RigFile
from nodes.models import Operation
from nodes.operations import start_operation


class Refused(Exception):
    pass


def check_download(model_file, node):
    """Raise Refused with the reason a provider should read, or return None."""
    if RigFile.objects.filter(node=node, model_file=model_file).exists():
        raise Refused(f"{node.name} already has {model_file.filename}")
    active = Operation.objects.filter(node=node, kind=Operation.DOWNLOAD_MODEL, target=model_file.target,
                                      status__in=[Operation.QUEUED, Operation.RUNNING]).first()
    if active is not None:
        raise Refused(f"{node.name} is already downloading {model_file.filename} (operation {active.pk})")
    free = (node.host_reading or {}).get("disk_free")
    if model_file.size and free is not None and free < model_file.size + settings.DOWNLOAD_DISK_MARGIN:
        raise Refused(f"{node.name} has {filesizeformat(free)} free; {model_file.filename} needs "
                      f"{filesizeformat(model_file.size)} plus a "
                      f"{filesizeformat(settings.DOWNLOAD_DISK_MARGIN)} margin")


def request_download(model_file, node, user):
    check_download(model_file, node)
    repo = model_file.model
    payload = {
        "request": {
            "repo_id": repo.repo_id,
            "revision": repo.revision,
            "files": model_file.download_files(),
            "endpoint": settings.HF_ENDPOINT,
            "token": HubSettings.token_value(),
        },
        "model_file": model_file.pk,
    }
    return start_operation(node, Operation.DOWNLOAD_MODEL, user, target=model_file.target, payload=payload)
