import hmac
import secrets
from datetime import timedelta

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.urls import reverse
from django.utils import timezone

from morpheus_admin.sealing import SealedTextField
from nodes.agent import envelope, protocol, supervisor
from nodes.agent.protocol import NODE_NAME_RE, node_queue

STALE_AFTER_INTERVALS = 2
OFFLINE_AFTER_INTERVALS = 5
CLOCK_WARNING = 2.0  # seconds of clock difference the rig page warns about

# Called with an Operation after its status or progress changed; apps add theirs in AppConfig.ready().
OPERATION_LISTENERS = []


class Node(models.Model):
    NEW, ONLINE, STALE, OFFLINE = "new", "online", "stale", "offline"
    STATUS_CHOICES = [(NEW, "waiting for agent"), (ONLINE, "online"), (STALE, "stale"), (OFFLINE, "offline")]

    name = models.CharField(
        max_length=40,
        unique=True,
        validators=[RegexValidator(NODE_NAME_RE, "Use lowercase letters, digits and '-' (e.g. rig-01).")],
        help_text="Lowercase letters, digits and '-'; it names the rig's queue.",
    )
    notes = models.TextField(blank=True)
    # The rig's token, sealed: its broker password, message key and sealing key derive from it (envelope.py).
    token = SealedTextField(editable=False, blank=True)
    created = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(null=True, blank=True)
    telemetry_interval = models.FloatField(default=5.0)
    # The last status written as a StatusChange; `status` below is always computed fresh.
    last_status = models.CharField(max_length=10, choices=STATUS_CHOICES, default=NEW)
    hardware = models.JSONField(default=dict, blank=True)
    hardware_at = models.DateTimeField(null=True, blank=True)
    host_reading = models.JSONField(default=dict, blank=True)
    token_rejected_at = models.DateTimeField(null=True, blank=True)
    # The last command this rig's agent refused (bad signature, wrong rig or task, expired, replayed).
    command_rejected_at = models.DateTimeField(null=True, blank=True)
    command_rejected_reason = models.CharField(max_length=300, blank=True)
    # From the last authenticated report: its sequence number and the rig's clock minus the panel's, seconds.
    report_seq = models.BigIntegerField(default=0)
    clock_offset = models.FloatField(null=True, blank=True)
    profile = models.ForeignKey(
        "nodes.HardwareProfile", null=True, blank=True, on_delete=models.SET_NULL, related_name="nodes"
    )

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("node_detail", args=[self.name])

    @property
    def queue(self):
        return node_queue(self.name)

    # --- token ------------------------------------------------------------------------------
    def set_new_token(self):
        self.token = secrets.token_urlsafe(32)
        return self.token

    def check_token(self, token):
        if not self.token or not isinstance(token, str):
            return False
        return hmac.compare_digest(self.token.encode(), token.encode())

    @property
    def keys(self):
        """The rig's keys (broker password, message MAC, sealing), or None for a rig enrolled before they existed."""
        return envelope.derive_keys(self.token) if self.token else None

    # --- status -----------------------------------------------------------------------------
    def status_at(self, now):
        if self.last_seen is None:
            return self.NEW
        age = (now - self.last_seen).total_seconds()
        if age <= STALE_AFTER_INTERVALS * self.telemetry_interval:
            return self.ONLINE
        if age <= OFFLINE_AFTER_INTERVALS * self.telemetry_interval:
            return self.STALE
        return self.OFFLINE

    @property
    def status(self):
        return self.status_at(timezone.now())

    def record_status(self, now=None):
        """Store a StatusChange when the computed status differs from the last one written.

        The conditional update makes two concurrent callers write one row, not two.
        """
        now = now or timezone.now()
        new = self.status_at(now)
        old = self.last_status
        if new == old:
            return None
        if not Node.objects.filter(pk=self.pk, last_status=old).update(last_status=new):
            return None
        self.last_status = new
        return StatusChange.objects.create(node=self, old=old, new=new, at=now)

    @property
    def token_rejected(self):
        """An agent is knocking with a token that no longer (or never did) match."""
        if self.token_rejected_at is None:
            return False
        return self.last_seen is None or self.token_rejected_at > self.last_seen

    @property
    def clock_off(self):
        """The rig's clock is more than CLOCK_WARNING seconds from the panel's (as its last report showed)."""
        return self.clock_offset is not None and abs(self.clock_offset) > CLOCK_WARNING

    def login_refused(self, account, now=None):
        """The broker refused a login as this rig since its agent was last heard (`account` from
        broker.account_state): an agent holds an old or a wrong token."""
        ago = account.get("refused_ago")
        if not account.get("refused_logins") or ago is None:
            return False
        refused_at = (now or timezone.now()) - timedelta(seconds=ago)
        return self.last_seen is None or refused_at > self.last_seen

    @property
    def gpu_note(self):
        return (self.hardware or {}).get("gpu_note", "")

    def profile_mismatches(self):
        if self.profile is None or not self.hardware:
            return []
        return self.profile.mismatches(self.hardware)


class StatusChange(models.Model):
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="status_changes")
    old = models.CharField(max_length=10, choices=Node.STATUS_CHOICES)
    new = models.CharField(max_length=10, choices=Node.STATUS_CHOICES)
    at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self):
        return f"{self.node_id}: {self.old} → {self.new}"


class GPU(models.Model):
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="gpus")
    index = models.PositiveSmallIntegerField()
    uuid = models.CharField(max_length=80)
    name = models.CharField(max_length=120)
    vram_total = models.BigIntegerField()
    power_limit_w = models.FloatField(null=True)
    pcie_gen = models.PositiveSmallIntegerField(null=True)
    pcie_width = models.PositiveSmallIntegerField(null=True)
    compute_capability = models.CharField(max_length=8, blank=True)
    # Latest reading, overwritten in place so the dashboard reads one row per GPU.
    reading_at = models.DateTimeField(null=True)
    util = models.FloatField(null=True)
    vram_used = models.BigIntegerField(null=True)
    temp_c = models.FloatField(null=True)
    power_w = models.FloatField(null=True)
    fan = models.FloatField(null=True)
    sm_clock = models.IntegerField(null=True)

    class Meta:
        ordering = ["node", "index"]
        constraints = [models.UniqueConstraint(fields=["node", "index"], name="gpu_unique_index")]

    def __str__(self):
        return f"{self.node_id} GPU{self.index} {self.name}"

    @staticmethod
    def percent(value, total):
        if value is None or not total:
            return 0
        return max(0, min(100, round(100 * value / total)))

    @property
    def vram_percent(self):
        return self.percent(self.vram_used, self.vram_total)

    @property
    def power_percent(self):
        return self.percent(self.power_w, self.power_limit_w)

    @property
    def temp_percent(self):
        return self.percent(self.temp_c, 100)

    @property
    def util_percent(self):
        return self.percent(self.util, 100)

    @staticmethod
    def _fmt(value, unit, digits=0):
        return "–" if value is None else f"{value:.{digits}f}{unit}"

    @classmethod
    def _vram_text(cls, used, total):
        return f"{cls._fmt(None if used is None else used / 1024**3, '', 1)} / {total / 1024**3:.0f} GiB"

    @classmethod
    def _power_text(cls, power, limit):
        return f"{cls._fmt(power, '')} / {cls._fmt(limit, ' W')}"

    @property
    def util_text(self):
        return self._fmt(self.util, "%")

    @property
    def vram_text(self):
        return self._vram_text(self.vram_used, self.vram_total)

    @property
    def temp_text(self):
        return self._fmt(self.temp_c, " °C")

    @property
    def power_text(self):
        return self._power_text(self.power_w, self.power_limit_w)

    BAR_FIELDS = ("util", "vram_used", "vram_total", "temp_c", "power_w", "power_limit_w")

    @classmethod
    def bars_for(cls, util, vram_used, vram_total, temp_c, power_w, power_limit_w):
        """(label, percent, text) of the four dashboard bars, from the readings (BAR_FIELDS) alone: the dashboard
        fingerprints cards from rows without building a model per GPU."""
        fmt, pct = cls._fmt, cls.percent
        return (("util", pct(util, 100), fmt(util, "%")),
                ("VRAM", pct(vram_used, vram_total), cls._vram_text(vram_used, vram_total)),
                ("temp", pct(temp_c, 100), fmt(temp_c, " °C")),
                ("power", pct(power_w, power_limit_w), cls._power_text(power_w, power_limit_w)))

    @property
    def bars(self):
        return self.bars_for(*(getattr(self, name) for name in self.BAR_FIELDS))


class GpuSample(models.Model):
    """One row per GPU per minute (the last reading of that minute): 1,440 rows a day at most."""

    gpu = models.ForeignKey(GPU, on_delete=models.CASCADE, related_name="samples")
    minute = models.DateTimeField()
    util = models.FloatField(null=True)
    vram_used = models.BigIntegerField(null=True)
    temp_c = models.FloatField(null=True)
    power_w = models.FloatField(null=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["gpu", "minute"], name="gpusample_unique_minute")]
        indexes = [models.Index(fields=["minute"])]


class HostSample(models.Model):
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="host_samples")
    minute = models.DateTimeField()
    cpu_percent = models.FloatField()
    ram_used = models.BigIntegerField()
    disk_free = models.BigIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["node", "minute"], name="hostsample_unique_minute")]
        indexes = [models.Index(fields=["minute"])]


class Operation(models.Model):
    REFRESH_HARDWARE, PING = "refresh_hardware", "ping"
    DOWNLOAD_MODEL, SCAN_MODELS, DELETE_MODEL_FILE = "download_model", "scan_models", "delete_model_file"
    BUILD_LLAMA, ADOPT_BUILD, DELETE_BUILD = "build_llama", "adopt_build", "delete_build"
    LAUNCH, STOP, RESTART = "launch", "stop", "restart"
    BENCHMARK, CHAT = "benchmark", "chat"
    ROUTER_APPLY, ROUTER_REFRESH = "router_apply", "router_refresh"
    ROUTER_CHAIN, ROUTER_INSTALL = "router_chain", "router_install"
    KIND_CHOICES = [
        (REFRESH_HARDWARE, "refresh hardware"),
        (PING, "ping agent"),
        (DOWNLOAD_MODEL, "download model"),
        (SCAN_MODELS, "scan models folder"),
        (DELETE_MODEL_FILE, "delete model file"),
        (BUILD_LLAMA, "build llama.cpp"),
        (ADOPT_BUILD, "adopt llama-server"),
        (DELETE_BUILD, "delete build"),
        (LAUNCH, "launch server"),
        (STOP, "stop server"),
        (RESTART, "restart server"),
        (BENCHMARK, "benchmark server"),
        (CHAT, "try a prompt"),
        (ROUTER_APPLY, "apply proxy-router settings"),
        (ROUTER_REFRESH, "read proxy-router"),
        (ROUTER_CHAIN, "on-chain action"),
        (ROUTER_INSTALL, "install proxy-router"),
    ]
    # Kinds a provider may start from the rig page with no further input.
    SIMPLE_KINDS = (REFRESH_HARDWARE, PING, SCAN_MODELS)
    CANCELLABLE_KINDS = (DOWNLOAD_MODEL, BUILD_LLAMA, CHAT, ROUTER_INSTALL)
    QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (protocol.QUEUED, protocol.RUNNING, protocol.SUCCEEDED,
                                                     protocol.FAILED, protocol.CANCELLED)
    STATUS_CHOICES = [(s, s) for s in protocol.OPERATION_STATES]
    TERMINAL = (SUCCEEDED, FAILED, CANCELLED)

    kind = models.CharField(max_length=30, choices=KIND_CHOICES)
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="operations")
    target = models.CharField(max_length=200, blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    # Where the request came from, for the audit log: the client's address and "web", "api" or "system" (the panel's
    # own work, no request); blank on rows from before they were kept.
    requested_from = models.GenericIPAddressField(null=True, blank=True)
    requested_via = models.CharField(max_length=10, blank=True)
    status = models.CharField(max_length=10, choices=STATUS_CHOICES, default=QUEUED, db_index=True)
    progress_done = models.BigIntegerField(null=True, blank=True)
    progress_total = models.BigIntegerField(null=True, blank=True)
    progress_unit = models.CharField(max_length=10, blank=True)
    progress_rate = models.FloatField(null=True, blank=True, help_text="units per second")
    progress_eta = models.FloatField(null=True, blank=True, help_text="seconds left")
    message = models.TextField(blank=True)
    log_tail = models.TextField(blank=True)
    result = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(default=timezone.now, db_index=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    # The rig's sequence number of the last report applied to it: an older one (late, or sent again) is ignored.
    report_seq = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-created", "-id"]

    def __str__(self):
        return f"{self.get_kind_display()} on {self.node_id} ({self.status})"

    def get_absolute_url(self):
        return reverse("operation_detail", args=[self.pk])

    def run_limit(self):
        """(seconds, the setting that sets it) this operation may run once picked up; None for downloads."""
        if self.kind == self.DOWNLOAD_MODEL:
            return None
        if self.kind in (self.LAUNCH, self.STOP, self.RESTART):
            return settings.RUN_TIMEOUTS["launch"], "MORPHEUS_LAUNCH_TIMEOUT"
        if self.kind == self.BUILD_LLAMA:
            return settings.RUN_TIMEOUTS["build"], "MORPHEUS_BUILD_TIMEOUT"
        return settings.RUN_TIMEOUTS["other"], "MORPHEUS_RUN_TIMEOUT"

    @property
    def is_terminal(self):
        return self.status in self.TERMINAL

    @property
    def duration(self):
        if self.started and self.finished:
            return self.finished - self.started
        return None

    @property
    def is_cancellable(self):
        return self.kind in self.CANCELLABLE_KINDS and not self.is_terminal

    @property
    def progress_percent(self):
        if not self.progress_total:
            return None
        return min(100, int(100 * (self.progress_done or 0) / self.progress_total))

    @property
    def eta_text(self):
        return "" if self.progress_eta is None else supervisor.duration_text(self.progress_eta)

    def apply_report(self, status, message="", result=None, now=None, progress=None, log_tail=None, seq=None):
        """Move along queued → running → terminal; never backwards, never out of a terminal state.

        The one exit for every status change (a rig's report, a cancel, expiry, an interruption): after a change it
        tells whoever mirrors operations (OPERATION_LISTENERS, e.g. a Build's own status), so nothing stays stuck.
        A running operation takes further running reports: they carry progress and the log tail. `seq` (a rig's
        report) must be above the last applied one: a late progress report never overwrites a newer one, and a
        copy of an outcome sent again changes nothing.
        """
        now = now or timezone.now()
        allowed_from = {
            self.RUNNING: [self.QUEUED, self.RUNNING],
            self.SUCCEEDED: [self.QUEUED, self.RUNNING],
            self.FAILED: [self.QUEUED, self.RUNNING],
            self.CANCELLED: [self.QUEUED, self.RUNNING],
        }[status]
        fields = {"status": status}
        if message:
            fields["message"] = message[:2000]
        if progress:
            fields.update(progress_done=progress["done"], progress_total=progress["total"],
                          progress_unit=progress["unit"], progress_rate=progress.get("rate"),
                          progress_eta=progress.get("eta"))
        if log_tail is not None:
            fields["log_tail"] = log_tail
        if status == self.RUNNING:
            if self.started is None:
                fields["started"] = now
            if result:  # what a running operation has so far (a streamed answer, the benchmark steps done)
                fields["result"] = result
        else:
            fields["finished"] = now
            if self.started is None:
                fields["started"] = now
            if result:
                fields["result"] = result
        rows = Operation.objects.filter(pk=self.pk, status__in=allowed_from)
        if seq is not None:
            rows = rows.filter(report_seq__lt=seq)
            fields["report_seq"] = seq
        updated = rows.update(**fields)
        if updated:
            for key, value in fields.items():
                setattr(self, key, value)
            for listener in OPERATION_LISTENERS:
                listener(self)
        return bool(updated)


class HardwareProfile(models.Model):
    """A planned build: a parts list with prices, attachable to rigs to compare with what they report."""

    name = models.CharField(max_length=100, unique=True)
    notes = models.TextField(blank=True)
    is_template = models.BooleanField(default=False)
    planned_ram_gb = models.PositiveIntegerField(null=True, blank=True, help_text="System RAM in GB")
    planned_vram_gb = models.PositiveIntegerField(null=True, blank=True, help_text="VRAM per GPU in GB")
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-is_template", "name"]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("profile_detail", args=[self.pk])

    @property
    def total_cost(self):
        return sum((part.line_total for part in self.parts.all()), 0)

    @property
    def planned_gpu_count(self):
        return sum(part.quantity for part in self.parts.all() if part.category == Part.GPU)

    @property
    def planned_cpu(self):
        return next((part.description for part in self.parts.all() if part.category == Part.CPU), "")

    def mismatches(self, hardware):
        problems = []
        gpus = hardware.get("gpus") or []
        planned_gpus = self.planned_gpu_count
        if planned_gpus != len(gpus):
            problems.append(f"planned {planned_gpus} GPU{'s' if planned_gpus != 1 else ''}, detected {len(gpus)}")
        if self.planned_vram_gb:
            for gpu in gpus:
                vram_gb = gpu.get("vram_total", 0) / 1024**3
                if vram_gb < self.planned_vram_gb * 0.95:
                    problems.append(
                        f"GPU {gpu.get('index')} has {vram_gb:.0f} GB VRAM, planned {self.planned_vram_gb} GB"
                    )
        if self.planned_ram_gb:
            ram_gb = hardware.get("ram_total", 0) / 1024**3
            # The kernel reserves a little: allow 10% below the nominal size.
            if ram_gb < self.planned_ram_gb * 0.9:
                problems.append(f"planned {self.planned_ram_gb} GB RAM, detected {ram_gb:.0f} GB")
        return problems


class Part(models.Model):
    CPU, COOLER, MOTHERBOARD, RAM, SSD, GPU, CASE, PSU, FANS, OTHER = (
        "cpu", "cooler", "motherboard", "ram", "ssd", "gpu", "case", "psu", "fans", "other",
    )
    CATEGORY_CHOICES = [
        (CPU, "CPU"), (COOLER, "CPU cooler"), (MOTHERBOARD, "Motherboard"), (RAM, "RAM"), (SSD, "SSD"),
        (GPU, "GPU"), (CASE, "Case"), (PSU, "Power supply"), (FANS, "Case fans"), (OTHER, "Other"),
    ]
    profile = models.ForeignKey(HardwareProfile, on_delete=models.CASCADE, related_name="parts")
    category = models.CharField(max_length=12, choices=CATEGORY_CHOICES)
    description = models.CharField(max_length=200)
    quantity = models.PositiveSmallIntegerField(default=1)
    unit_price = models.DecimalField(max_digits=10, decimal_places=2, default=0)

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return f"{self.get_category_display()}: {self.description}"

    @property
    def line_total(self):
        return self.unit_price * self.quantity


def history_cutoff(now=None):
    return (now or timezone.now()) - settings.TELEMETRY_RETENTION


def minute_floor(moment):
    return moment.replace(second=0, microsecond=0)


def recent_window(minutes=60, now=None):
    return minute_floor(now or timezone.now()) - timedelta(minutes=minutes)
