"""Commands about model files: download from the Hub (resumed after a restart), scan the model folders, delete."""

import logging
import threading

from .. import protocol
from ..downloader import DownloadCancelled, DownloadError, Downloader, DownloadRequest, human_size
from ..modelfiles import Manifest, ModelFileError, delete as delete_model_path, describe, scan
from ..validation import InvalidValue

log = logging.getLogger("morpheus.agent")


def register(agent):
    config = agent.cfg
    downloader = agent.downloader = Downloader(config.models_dir, config.state_dir,
                                               max_concurrent=config.max_downloads, disk_margin=config.disk_margin)
    manifest = Manifest(config.state_dir)

    def run_download(operation_id, request_data, model_file=None, resumed=False):
        with agent.claimed(operation_id) as mine:
            if mine:
                _download(operation_id, request_data, model_file, resumed)

    def _download(operation_id, request_data, model_file, resumed):
        try:
            try:
                request = DownloadRequest(**request_data)
            except (InvalidValue, TypeError) as exc:
                agent.operation(operation_id, "failed", f"refused: {exc}")
                return
            names = ", ".join(f.filename for f in request.files)
            agent.operation(operation_id, "running",
                            f"agent restarted; resuming {names}" if resumed else f"downloading {names}")

            def progress(p):
                agent.operation(operation_id, "running", progress=p)

            def waiting():
                agent.operation(operation_id, "running",
                                f"waiting for a download slot ({config.max_downloads} at a time on this rig)")

            result = downloader.download(operation_id, request, progress=progress, on_wait=waiting,
                                         extra={"model_file": model_file})
            first = result["files"][0]
            for item in result["files"]:
                if item["verified"] and not item["already_present"]:
                    manifest.record(item["path"], item["sha256"])
            entry = describe(first["path"], manifest, request.repo_id, first["filename"])
            entry["verified"] = all(item["verified"] for item in result["files"])
            entry["sha256"] = first["sha256"] if len(result["files"]) == 1 else ""
            agent.send(protocol.MODEL_FILES, {"mode": "upsert", "model_file": model_file, "files": [entry]}, durable=True)
            total = sum(item["size"] for item in result["files"])
            verb = "already on the rig" if all(i["already_present"] for i in result["files"]) else "downloaded"
            checked = "verified" if entry["verified"] else "not checked"
            agent.operation(operation_id, "succeeded",
                            f"{verb}: {names} ({human_size(total)}, sha256 {checked})",
                            {k: result[k] for k in ("bytes_fetched", "resumed_from", "seconds", "commit")},
                            progress={"done": total, "total": total, "unit": "B"})
        except DownloadCancelled as exc:
            agent.operation(operation_id, "cancelled", str(exc))
        except DownloadError as exc:
            agent.operation(operation_id, "failed", str(exc))
        except Exception as exc:
            log.exception("download %s failed", operation_id)
            agent.operation(operation_id, "failed", f"unexpected error on the rig: {type(exc).__name__}: {exc}")

    def resume_downloads():
        """Downloads the journal says were in flight when this agent last stopped: continue them."""
        for entry in downloader.in_flight():
            model_file = (entry.get("extra") or {}).get("model_file")
            threading.Thread(target=run_download, args=(entry["operation"], entry["request"], model_file, True),
                             name=f"resume-{entry['operation']}", daemon=True).start()

    agent.on_first_connect.append(resume_downloads)
    agent.in_flight.append(lambda: [entry["operation"] for entry in downloader.in_flight()])
    agent.cancellers.append(downloader.cancel)

    # Downloads run for hours: no soft/hard limit, and a redelivered copy returns early (claimed).
    @agent.command(protocol.AGENT_DOWNLOAD_MODEL, soft_time_limit=None, time_limit=None)
    def download_model(operation_id, request, model_file=None):
        run_download(operation_id, request, model_file)

    @agent.command(protocol.AGENT_SCAN_MODELS, soft_time_limit=600, time_limit=900)
    def scan_models(operation_id):
        with agent.claimed(operation_id) as mine:
            if not mine:
                return
            try:
                agent.operation(operation_id, "running", "scanning " + ", ".join(str(d) for d in config.model_dirs))
                files = scan(config.model_dirs, manifest)
                agent.send(protocol.MODEL_FILES, {"mode": "replace", "files": files}, durable=True)
                agent.operation(operation_id, "succeeded",
                                f"{len(files)} GGUF model{'s' if len(files) != 1 else ''} found", {"count": len(files)})
            except Exception as exc:
                log.exception("scan failed")
                agent.operation(operation_id, "failed", f"scan failed: {exc}")

    @agent.command(protocol.AGENT_DELETE_MODEL_FILE)
    def delete_model_file(operation_id, path):
        with agent.claimed(operation_id) as mine:
            if not mine:
                return
            try:
                removed = delete_model_path(path, config.model_dirs, manifest)
                agent.send(protocol.MODEL_FILES, {"mode": "remove", "files": [{"path": path}]}, durable=True)
                count = f"deleted {len(removed)} file{'s' if len(removed) != 1 else ''}" if removed else "already gone"
                agent.operation(operation_id, "succeeded", count, {"removed": removed})
            except ModelFileError as exc:
                agent.operation(operation_id, "failed", str(exc))
            except OSError as exc:
                agent.operation(operation_id, "failed", f"could not delete {path}: {exc.strerror}")
