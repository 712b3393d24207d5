"""Validation of agent reports. A report that fails here writes nothing; the reason is logged.

Plain Python (no Django) so the rules are readable in one place and testable alone.
"""

import math

TiB = 1024**4


class ReportError(ValueError):
    pass


def _number(data, key, lo, hi, required=True, integer=False):
    value = data.get(key) if isinstance(data, dict) else None
    if value is None:
        if required:
            raise ReportError(f"{key} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReportError(f"{key} must be a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ReportError(f"{key} is not finite")
    if integer and not float(value).is_integer():
        raise ReportError(f"{key} must be a whole number")
    if not lo <= value <= hi:
        raise ReportError(f"{key}={value} is outside {lo}..{hi}")
    return int(value) if integer else value


def _text(data, key, max_len=200, required=True):
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise ReportError(f"{key} is missing")
        return ""
    if not isinstance(value, str):
        raise ReportError(f"{key} must be text")
    return value[:max_len]


def _dict(data, key):
    value = data.get(key)
    if not isinstance(value, dict):
        raise ReportError(f"{key} must be an object")
    return value


def _list(data, key, max_len=64):
    value = data.get(key)
    if not isinstance(value, list):
        raise ReportError(f"{key} must be a list")
    if len(value) > max_len:
        raise ReportError(f"{key} has {len(value)} entries, more than {max_len}")
    return value


def _indexes_unique(gpus):
    indexes = [g["index"] for g in gpus]
    if len(indexes) != len(set(indexes)):
        raise ReportError("GPU indexes repeat")


def clean_hardware(payload):
    if not isinstance(payload, dict):
        raise ReportError("payload must be an object")
    clean = {
        "cpu_model": _text(payload, "cpu_model", required=False),
        "cpu_cores_physical": _number(payload, "cpu_cores_physical", 0, 4096, integer=True),
        "cpu_cores_logical": _number(payload, "cpu_cores_logical", 1, 8192, integer=True),
        "ram_total": _number(payload, "ram_total", 1, 64 * TiB, integer=True),
        "disk_total": _number(payload, "disk_total", 0, 10**18, integer=True),
        "disk_free": _number(payload, "disk_free", 0, 10**18, integer=True),
        "data_dir": _text(payload, "data_dir", 500, required=False),
        "os": _text(payload, "os", required=False),
        "kernel": _text(payload, "kernel", required=False),
        "hostname": _text(payload, "hostname", required=False),
        "driver_version": _text(payload, "driver_version", 40, required=False) or None,
        "cuda_version": _text(payload, "cuda_version", 20, required=False) or None,
        "gpu_note": _text(payload, "gpu_note", 300, required=False),
        "telemetry_interval": _number(payload, "telemetry_interval", 0.2, 3600),
        "gpus": [],
    }
    for gpu in _list(payload, "gpus"):
        if not isinstance(gpu, dict):
            raise ReportError("each GPU must be an object")
        clean["gpus"].append(
            {
                "index": _number(gpu, "index", 0, 63, integer=True),
                "name": _text(gpu, "name", 120),
                "uuid": _text(gpu, "uuid", 80),
                "vram_total": _number(gpu, "vram_total", 1, 4 * TiB, integer=True),
                "power_limit_w": _number(gpu, "power_limit_w", 0, 5000, required=False),
                "pcie_gen": _number(gpu, "pcie_gen", 0, 16, required=False, integer=True),
                "pcie_width": _number(gpu, "pcie_width", 0, 64, required=False, integer=True),
                "compute_capability": _text(gpu, "compute_capability", 8, required=False),
            }
        )
    _indexes_unique(clean["gpus"])
    return clean


def clean_telemetry(payload):
    if not isinstance(payload, dict):
        raise ReportError("payload must be an object")
    host = _dict(payload, "host")
    clean = {
        "at": _number(payload, "at", 0, 10**11),
        "host": {
            "cpu_percent": _number(host, "cpu_percent", 0, 100),
            "ram_used": _number(host, "ram_used", 0, 64 * TiB, integer=True),
            "ram_total": _number(host, "ram_total", 1, 64 * TiB, integer=True, required=False),
            "disk_free": _number(host, "disk_free", 0, 10**18, integer=True),
        },
        "gpus": [],
    }
    for gpu in _list(payload, "gpus"):
        if not isinstance(gpu, dict):
            raise ReportError("each GPU reading must be an object")
        clean["gpus"].append(
            {
                "index": _number(gpu, "index", 0, 63, integer=True),
                "util": _number(gpu, "util", 0, 100, required=False),
                "vram_used": _number(gpu, "vram_used", 0, 4 * TiB, integer=True),
                "temp_c": _number(gpu, "temp_c", -50, 150, required=False),
                "power_w": _number(gpu, "power_w", 0, 5000, required=False),
                "fan": _number(gpu, "fan", 0, 100, required=False),
                "sm_clock": _number(gpu, "sm_clock", 0, 10000, required=False, integer=True),
            }
        )
    _indexes_unique(clean["gpus"])
    return clean


OPERATION_STATUSES = ("running", "succeeded", "failed", "cancelled")


def clean_operation(payload):
    if not isinstance(payload, dict):
        raise ReportError("payload must be an object")
    status = payload.get("status")
    if status not in OPERATION_STATUSES:
        raise ReportError(f"operation status {status!r} is not one of {', '.join(OPERATION_STATUSES)}")
    result = payload.get("result") or {}
    if not isinstance(result, dict):
        raise ReportError("result must be an object")
    return {
        "operation": _number(payload, "operation", 1, 2**63 - 1, integer=True),
        "status": status,
        "message": _text(payload, "message", 2000, required=False),
        "result": result,
    }


CLEANERS = {"hardware": clean_hardware, "telemetry": clean_telemetry, "operation": clean_operation}
