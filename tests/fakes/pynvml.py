"""A fake NVML at the `pynvml` boundary, for tests: put this folder first on PYTHONPATH.

FAKE_NVML tells what the host has: "nodriver" (nvmlInit raises NVMLError_LibraryNotFound, as on a
machine without the NVIDIA driver), or a JSON list of GPUs, e.g. [{"name": "NVIDIA GeForce RTX 3090",
"vram_gib": 24, "power_limit_w": 350, "cc": [8, 6], "bus_width": 384, "mem_clock_mhz": 9751}] (without
bus_width or mem_clock_mhz the memory bandwidth calls answer NotSupported). Readings change with time so dashboards move.
"""

import json
import math
import os
import time
from types import SimpleNamespace

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_SUCCESS = 0
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_LIBRARY_NOT_FOUND = 12


class NVMLError(Exception):
    def __init__(self, value=None):
        self.value = value

    def __str__(self):
        return {12: "NVML Shared Library Not Found", 3: "Not Supported"}.get(self.value, f"NVML error {self.value}")


class NVMLError_LibraryNotFound(NVMLError):
    def __init__(self):
        super().__init__(NVML_ERROR_LIBRARY_NOT_FOUND)


class NVMLError_NotSupported(NVMLError):
    def __init__(self):
        super().__init__(NVML_ERROR_NOT_SUPPORTED)


RTX_3090 = {"name": "NVIDIA GeForce RTX 3090", "vram_gib": 24, "power_limit_w": 350, "cc": [8, 6],
            "pcie": [4, 16], "bus_width": 384, "mem_clock_mhz": 9751}

_state = {"init": 0}


def _spec():
    raw = os.environ.get("FAKE_NVML", "nodriver")
    if raw == "nodriver":
        return None
    if raw == "2x3090":
        return [dict(RTX_3090), dict(RTX_3090)]
    return json.loads(raw)


def _gpus():
    spec = _spec()
    if spec is None:
        raise NVMLError_LibraryNotFound()
    return spec


def nvmlInit():
    _gpus()
    _state["init"] += 1


def nvmlShutdown():
    _state["init"] = max(0, _state["init"] - 1)


def _require_init():
    if _state["init"] <= 0:
        raise NVMLError(1)  # NVML_ERROR_UNINITIALIZED


def nvmlSystemGetDriverVersion():
    _require_init()
    return "550.54.14"


def nvmlSystemGetCudaDriverVersion():
    _require_init()
    return 12040


def nvmlSystemGetCudaDriverVersion_v2():
    return nvmlSystemGetCudaDriverVersion()


def nvmlDeviceGetCount():
    _require_init()
    return len(_gpus())


def nvmlDeviceGetHandleByIndex(index):
    _require_init()
    gpus = _gpus()
    if not 0 <= index < len(gpus):
        raise NVMLError(2)  # NVML_ERROR_INVALID_ARGUMENT
    return SimpleNamespace(index=index, spec=gpus[index])


def nvmlDeviceGetName(handle):
    return handle.spec["name"]


def nvmlDeviceGetUUID(handle):
    return handle.spec.get("uuid", f"GPU-fake0000-0000-0000-0000-{handle.index:012d}")


def _wave(handle, period=7.0):
    return 0.5 + 0.5 * math.sin(time.time() / period + handle.index)


def nvmlDeviceGetMemoryInfo(handle):
    total = int(handle.spec["vram_gib"] * 1024**3)
    used = int(total * (0.2 + 0.6 * _wave(handle, 11.0)))
    return SimpleNamespace(total=total, used=used, free=total - used)


def nvmlDeviceGetUtilizationRates(handle):
    return SimpleNamespace(gpu=int(100 * _wave(handle)), memory=int(50 * _wave(handle)))


def nvmlDeviceGetTemperature(handle, sensor):
    return int(40 + 35 * _wave(handle, 13.0))


def nvmlDeviceGetPowerUsage(handle):
    return int(1000 * (30 + (handle.spec["power_limit_w"] - 30) * _wave(handle)))


def nvmlDeviceGetEnforcedPowerLimit(handle):
    return int(handle.spec["power_limit_w"] * 1000)


def nvmlDeviceGetFanSpeed(handle):
    if handle.spec.get("fanless"):
        raise NVMLError_NotSupported()
    return int(30 + 60 * _wave(handle, 17.0))


def nvmlDeviceGetMemoryBusWidth(handle):
    """Bits; a GPU spec without "bus_width" answers NotSupported, as some boards do."""
    if "bus_width" not in handle.spec:
        raise NVMLError_NotSupported()
    return handle.spec["bus_width"]


def nvmlDeviceGetMaxClockInfo(handle, clock):
    if clock == NVML_CLOCK_MEM:
        if "mem_clock_mhz" not in handle.spec:
            raise NVMLError_NotSupported()
        return handle.spec["mem_clock_mhz"]
    return 1695 if clock == NVML_CLOCK_SM else 1395


def nvmlDeviceGetClockInfo(handle, clock):
    return int(210 + 1500 * _wave(handle))


def nvmlDeviceGetCudaComputeCapability(handle):
    major, minor = handle.spec.get("cc", [8, 6])
    return major, minor


def nvmlDeviceGetCurrPcieLinkGeneration(handle):
    return handle.spec.get("pcie", [4, 16])[0]


def nvmlDeviceGetCurrPcieLinkWidth(handle):
    return handle.spec.get("pcie", [4, 16])[1]


def nvmlDeviceGetMaxPcieLinkGeneration(handle):
    return handle.spec.get("pcie", [4, 16])[0]


def nvmlDeviceGetMaxPcieLinkWidth(handle):
    return handle.spec.get("pcie", [4, 16])[1]
