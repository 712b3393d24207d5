"""Hardware profile and telemetry of this host through nvidia-ml-py (module `pynvml`) and psutil.

No NVIDIA driver is a normal state: the probe returns zero GPUs and says why.
"""

import logging
import os
import platform
import shutil
import threading
import time

import psutil

log = logging.getLogger(__name__)

# The panel suggests and checks deployment ports against these; a rig running hundreds of services needs no more.
MAX_LISTENING_PORTS = 512
PROC_TCP = ("/proc/net/tcp", "/proc/net/tcp6")
_TCP_LISTEN = "0A"  # the kernel's TCP_LISTEN state, as /proc/net/tcp writes it


def _load_nvml():
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return None, f"no NVIDIA driver ({exc})"
    return pynvml, None


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional(fn, *args, default=None):
    """NVML answers NotSupported for many readings on consumer cards; treat that as unknown."""
    import pynvml

    try:
        return fn(*args)
    except pynvml.NVMLError:
        return default


# Peak memory bandwidth in GB/s of cards NVML cannot tell (bus width or memory clock "not supported"), from the
# makers' data sheets. The first entry whose words all appear in the GPU's name wins: specific names come first.
KNOWN_BANDWIDTH_GBS = (
    (("3090", "ti"), 1008), (("3090",), 936), (("4090",), 1008), (("5090",), 1792),
    (("4080", "super"), 736), (("4080",), 717), (("3080", "ti"), 912), (("3080",), 760),
    (("a100", "80gb"), 2039), (("a100",), 1555), (("h100", "nvl"), 3900), (("h100", "pcie"), 2000),
    (("h100",), 3350), (("h200",), 4800), (("l40s",), 864), (("l40",), 864), (("l4",), 300),
    (("rtx 6000 ada",), 960), (("a6000",), 768), (("a40",), 696), (("a10",), 600), (("t4",), 320),
    (("v100",), 900),
)


def table_bandwidth(name):
    """GB/s of a known card from its NVML name ("NVIDIA GeForce RTX 3090" → 936), or None."""
    words = (name or "").lower()
    for needles, gbs in KNOWN_BANDWIDTH_GBS:
        if all(_has_word(words, needle) for needle in needles):
            return gbs
    return None


def _has_word(text, needle):
    """`needle` in `text` not glued to a longer model number ("l4" is not in "l40s", "a10" not in "a100")."""
    start = text.find(needle)
    while start >= 0:
        end = start + len(needle)
        if (start == 0 or not text[start - 1].isalnum()) and (end == len(text) or not text[end].isalnum()):
            return True
        start = text.find(needle, start + 1)
    return False


def memory_bandwidth(nvml, handle, name):
    """(GB/s, "nvml" | "table") or (None, None): bus width × peak memory clock × 2 (double data rate), else the
    table of known cards. GDDR6X reports its clock so that the same formula holds (RTX 3090: 384 bit × 9751 MHz)."""
    bus_fn = getattr(nvml, "nvmlDeviceGetMemoryBusWidth", None)  # nvidia-ml-py 11.515 and later
    bus_bits = _optional(bus_fn, handle) if bus_fn is not None else None
    clock_mhz = _optional(nvml.nvmlDeviceGetMaxClockInfo, handle, getattr(nvml, "NVML_CLOCK_MEM", 2))
    if bus_bits and clock_mhz:
        return round(bus_bits / 8 * clock_mhz * 2 / 1000, 1), "nvml"
    gbs = table_bandwidth(name)
    return (gbs, "table") if gbs else (None, None)


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _os_name():
    try:
        with open("/etc/os-release", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def _disk(data_dir):
    os.makedirs(data_dir, exist_ok=True)
    usage = shutil.disk_usage(data_dir)
    return usage.total, usage.free


def probe_hardware(data_dir):
    """The rig's detected profile, as a JSON-ready dict."""
    disk_total, disk_free = _disk(data_dir)
    profile = {
        "cpu_model": cpu_model(),
        "cpu_cores_physical": psutil.cpu_count(logical=False) or 0,
        "cpu_cores_logical": psutil.cpu_count(logical=True) or 0,
        "ram_total": psutil.virtual_memory().total,
        "disk_total": disk_total,
        "disk_free": disk_free,
        "data_dir": str(data_dir),
        "os": _os_name(),
        "kernel": platform.release(),
        "hostname": platform.node(),
        "driver_version": None,
        "cuda_version": None,
        "gpus": [],
        "gpu_note": "",
    }
    nvml, note = _load_nvml()
    if nvml is None:
        profile["gpu_note"] = note
        return profile
    try:
        profile["driver_version"] = _text(_optional(nvml.nvmlSystemGetDriverVersion, default="") or "") or None
        cuda = _optional(nvml.nvmlSystemGetCudaDriverVersion_v2) or _optional(nvml.nvmlSystemGetCudaDriverVersion)
        if cuda:
            profile["cuda_version"] = f"{cuda // 1000}.{(cuda % 1000) // 10}"
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            capability = _optional(nvml.nvmlDeviceGetCudaComputeCapability, handle)
            power_limit = _optional(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
            name = _text(nvml.nvmlDeviceGetName(handle))
            bandwidth, bandwidth_source = memory_bandwidth(nvml, handle, name)
            profile["gpus"].append(
                {
                    "index": index,
                    "name": name,
                    "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
                    "vram_total": int(memory.total),
                    "power_limit_w": round(power_limit / 1000, 1) if power_limit else None,
                    "pcie_gen": _optional(nvml.nvmlDeviceGetCurrPcieLinkGeneration, handle),
                    "pcie_width": _optional(nvml.nvmlDeviceGetCurrPcieLinkWidth, handle),
                    "pcie_gen_max": _optional(nvml.nvmlDeviceGetMaxPcieLinkGeneration, handle),
                    "pcie_width_max": _optional(nvml.nvmlDeviceGetMaxPcieLinkWidth, handle),
                    "compute_capability": f"{capability[0]}.{capability[1]}" if capability else None,
                    "mem_bandwidth_gbs": bandwidth,
                    "mem_bandwidth_source": bandwidth_source,
                }
            )
    finally:
        _shutdown(nvml)
    if not profile["gpus"]:
        profile["gpu_note"] = "NVIDIA driver present, no GPUs found"
    return profile


def _shutdown(nvml):
    try:
        nvml.nvmlShutdown()
    except Exception:  # shutdown failures change nothing for the caller
        log.debug("nvmlShutdown failed", exc_info=True)


def listening_ports(proc_files=None, limit=MAX_LISTENING_PORTS):
    """TCP ports something listens on here, sorted, at most `limit`; None when this host will not say.

    /proc/net/tcp{,6} needs no privilege and no walk through every process's file descriptors (psutil's way)."""
    ports, readable = set(), False
    for name in proc_files or PROC_TCP:
        try:
            with open(name, encoding="ascii", errors="replace") as fh:
                readable = True
                next(fh, None)  # the header line
                for line in fh:
                    fields = line.split()
                    if len(fields) > 3 and fields[3] == _TCP_LISTEN:
                        ports.add(_port(fields[1]))
        except OSError:
            continue
    if not readable:
        ports = _psutil_listening_ports()
        if ports is None:
            return None
    return sorted(port for port in ports if port)[:limit]


def _port(address):
    try:
        port = int(address.rsplit(":", 1)[1], 16)
    except (IndexError, ValueError):
        return None
    return port if 1 <= port <= 65535 else None


def _psutil_listening_ports():
    """Hosts without /proc (macOS asks for root here): psutil, or None when it is refused."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError, NotImplementedError):
        return None
    return {c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN and c.laddr}


class TelemetrySampler:
    """Keeps NVML open between samples (init costs milliseconds); re-opens it after an error."""

    def __init__(self, data_dir, clock=time.time):
        self.data_dir = str(data_dir)
        self.clock = clock  # the rig's clock (tests shift it to play a rig whose clock is off)
        self._nvml = None
        self._note = None
        self._handles = []
        psutil.cpu_percent(interval=None)  # primes the counter so the first sample is not 0.0

    def _open(self):
        if self._nvml is not None:
            return self._nvml
        self._nvml, self._note = _load_nvml()
        if self._nvml is not None:
            count = self._nvml.nvmlDeviceGetCount()
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        return self._nvml

    def close(self):
        if self._nvml is not None:
            _shutdown(self._nvml)
        self._nvml, self._handles = None, []

    def sample(self):
        _total, disk_free = _disk(self.data_dir)
        vm = psutil.virtual_memory()
        reading = {
            "at": self.clock(),
            "host": {
                "cpu_percent": psutil.cpu_percent(interval=None),
                "ram_used": vm.total - vm.available,
                "ram_total": vm.total,
                "disk_free": disk_free,
            },
            "gpus": [],
        }
        ports = listening_ports()
        if ports is not None:
            reading["host"]["listening_ports"] = ports
        nvml = self._open()
        if nvml is None:
            return reading
        try:
            for index, handle in enumerate(self._handles):
                reading["gpus"].append(self._gpu(nvml, index, handle))
        except nvml.NVMLError:
            log.warning("NVML sample failed; re-opening next time", exc_info=True)
            self.close()
        return reading

    @staticmethod
    def _gpu(nvml, index, handle):
        util = _optional(nvml.nvmlDeviceGetUtilizationRates, handle)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        power = _optional(nvml.nvmlDeviceGetPowerUsage, handle)
        return {
            "index": index,
            "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
            "util": util.gpu if util is not None else None,
            "vram_used": int(memory.used),
            "vram_total": int(memory.total),
            "temp_c": _optional(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU),
            "power_w": round(power / 1000, 1) if power is not None else None,
            "fan": _optional(nvml.nvmlDeviceGetFanSpeed, handle),
            "sm_clock": _optional(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM),
        }


class PowerMeter:
    """Each GPU's power draw (NVML) sampled in a thread from start() to stop(), averaged in W; a benchmark step
    runs meanwhile. On a rig without NVML, stop() answers None (the panel then uses a configured wattage)."""

    def __init__(self, interval=0.2):
        self.interval = interval
        self._sums, self._counts, self._gpus = {}, {}, []
        self._stop = threading.Event()
        self._thread = None
        self._nvml = None

    def start(self):
        self._nvml, _note = _load_nvml()
        if self._nvml is None:
            return self
        try:
            for index in range(self._nvml.nvmlDeviceGetCount()):
                handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
                self._gpus.append((index, _text(self._nvml.nvmlDeviceGetName(handle)), handle))
        except self._nvml.NVMLError:
            log.warning("NVML failed while listing GPUs for power readings", exc_info=True)
            self._gpus = []
        self._sample()  # one reading even for a step shorter than the interval
        self._thread = threading.Thread(target=self._run, name="power-meter", daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        for index, _name, handle in self._gpus:
            milliwatts = _optional(self._nvml.nvmlDeviceGetPowerUsage, handle)
            if milliwatts is not None:
                self._sums[index] = self._sums.get(index, 0) + milliwatts / 1000
                self._counts[index] = self._counts.get(index, 0) + 1

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self):
        """[{"index", "name", "avg_w", "samples"}] per GPU that answered, or None without NVML."""
        if self._nvml is None:
            return None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sample()
        _shutdown(self._nvml)
        self._nvml = None
        return [{"index": index, "name": name, "avg_w": round(self._sums[index] / self._counts[index], 1),
                 "samples": self._counts[index]} for index, name, _handle in self._gpus if self._counts.get(index)]
