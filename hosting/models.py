import signal as signal_module
from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.urls import reverse
from django.utils import timezone

from morpheus_admin.sealing import SealedTextField
from nodes.agent import builder, protocol, serverspec, supervisor


class Build(models.Model):
    """A llama.cpp build on one rig (or a llama-server binary the provider already had, adopted)."""

    QUEUED, BUILDING, READY, FAILED, CANCELLED = "queued", "building", "ready", "failed", "cancelled"
    STATUS_CHOICES = [(s, s) for s in (QUEUED, BUILDING, READY, FAILED, CANCELLED)]
    BACKENDS = [("auto", "auto (from the rig's GPUs)"), ("cpu", "CPU"), ("cuda", "CUDA")]

    node = models.ForeignKey("nodes.Node", on_delete=models.CASCADE, related_name="builds")
    source = models.CharField(max_length=500, default=builder.DEFAULT_SOURCE)
    ref = models.CharField(max_length=100, default=builder.DEFAULT_REF)
    backend = models.CharField(max_length=10, choices=BACKENDS, default="auto")
    options = models.JSONField(default=dict, blank=True)
    adopted = models.BooleanField(default=False)
    status = models.CharField(max_length=10, choices=STATUS_CHOICES, default=QUEUED)
    is_default = models.BooleanField(default=False)
    binary_path = models.CharField(max_length=1000, blank=True)
    version = models.CharField(max_length=100, blank=True)
    commit = models.CharField(max_length=40, blank=True)
    cuda_architectures = models.CharField(max_length=100, blank=True)
    duration = models.FloatField(null=True, blank=True, help_text="seconds")
    message = models.TextField(blank=True)
    operation = models.ForeignKey("nodes.Operation", null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="builds")
    created = models.DateTimeField(default=timezone.now)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]

    def __str__(self):
        what = "adopted" if self.adopted else f"{self.ref}"
        return f"#{self.pk} {what} {self.backend_label}".strip()

    def get_absolute_url(self):
        return reverse("build_detail", args=[self.pk])

    @property
    def backend_label(self):
        return {"cuda": "CUDA", "cpu": "CPU"}.get(self.backend, self.backend)

    @property
    def is_ready(self):
        return self.status == self.READY


SERVING_FRESH_INTERVALS = 3  # serving metrics older than this many telemetry intervals are not shown as live
_slug = RegexValidator(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$", "Lowercase letters, digits and '-'.")


class Deployment(models.Model):
    """A hosted model: llama-server on one rig, with a desired state the agent converges to."""

    RUNNING, STOPPED = "running", "stopped"
    DESIRED = [(RUNNING, "running"), (STOPPED, "stopped")]
    ACTUAL = [(s, s) for s in ("pending", *protocol.SERVER_STATES)]  # pending: no report from the rig yet

    node = models.ForeignKey("nodes.Node", on_delete=models.CASCADE, related_name="deployments")
    name = models.CharField(max_length=40, validators=[_slug])
    model_file = models.ForeignKey("models_catalog.RigFile", on_delete=models.RESTRICT, related_name="deployments")
    build = models.ForeignKey(Build, on_delete=models.RESTRICT, related_name="deployments")
    host = models.GenericIPAddressField(default="127.0.0.1", help_text="0.0.0.0 to serve other machines")
    port = models.PositiveIntegerField(validators=[MinValueValidator(1024), MaxValueValidator(65535)])
    ctx_size = models.PositiveIntegerField(default=8192, validators=[MinValueValidator(256), MaxValueValidator(1_048_576)])
    n_gpu_layers = models.PositiveIntegerField(default=99, validators=[MaxValueValidator(999)])
    parallel = models.PositiveIntegerField(default=4, validators=[MinValueValidator(1), MaxValueValidator(256)])
    threads = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(1024)])
    tensor_split = models.CharField(max_length=100, blank=True)
    flash_attn = models.CharField(max_length=4, default="auto", choices=[(v, v) for v in serverspec.FLASH_ATTN])
    cache_type_k = models.CharField(max_length=8, default="f16", choices=[(v, v) for v in serverspec.CACHE_TYPES])
    cache_type_v = models.CharField(max_length=8, default="f16", choices=[(v, v) for v in serverspec.CACHE_TYPES])
    alias = models.CharField(max_length=100, blank=True)
    api_key = SealedTextField(blank=True)  # sealed at rest; never rendered back (see DeploymentForm)
    extra_flags = models.JSONField(default=list, blank=True)
    desired_state = models.CharField(max_length=10, choices=DESIRED, default=RUNNING)
    generation = models.PositiveIntegerField(default=1)
    # What the agent last reported.
    actual_state = models.CharField(max_length=10, choices=ACTUAL, default="pending")
    pid = models.PositiveIntegerField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    restarts = models.PositiveIntegerField(default=0)
    message = models.TextField(blank=True)
    log_tail = models.TextField(blank=True)
    reported_at = models.DateTimeField(null=True, blank=True)
    # The rig's sequence number of the report these came from: an older report never overwrites them.
    report_seq = models.BigIntegerField(default=0)
    # Live serving metrics the agent read from the server's /metrics and /slots (tokens/s, busy slots, requests, KV).
    serving = models.JSONField(default=dict, blank=True)
    serving_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey("auth.User", null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["node", "name"]
        constraints = [
            models.UniqueConstraint(fields=["node", "name"], name="deployment_unique_name"),
            models.UniqueConstraint(fields=["node", "port"], name="deployment_unique_port"),
        ]

    def __str__(self):
        return f"{self.node_id}/{self.name}"

    def get_absolute_url(self):
        return reverse("deployment_detail", args=[self.pk])

    @property
    def is_healthy(self):
        return self.desired_state == self.RUNNING and self.actual_state == "healthy" and self.node.status == "online"

    @property
    def live_serving(self):
        """What the server is doing now (tokens/s, slots, requests, KV cache): its last serving metrics while it is
        healthy and they are recent (three telemetry intervals), else None."""
        if not self.serving or self.serving_at is None or not self.is_healthy:
            return None
        if (timezone.now() - self.serving_at).total_seconds() > SERVING_FRESH_INTERVALS * self.node.telemetry_interval:
            return None
        return self.serving

    @property
    def uptime(self):
        if self.actual_state in ("healthy", "loading", "starting") and self.started_at:
            return timezone.now() - self.started_at
        return None

    @property
    def endpoint_url(self):
        host = self.host
        if host in ("0.0.0.0", "::"):
            host = (self.node.hardware or {}).get("hostname") or self.node.name
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"

    def spec(self):
        """What the agent needs to run it (the API key included: it travels to the rig only)."""
        return serverspec.ServerSpec(
            deployment_id=self.pk, binary=self.build.binary_path, model_path=self.model_file.path, port=self.port,
            host=self.host, ctx_size=self.ctx_size, n_gpu_layers=self.n_gpu_layers, parallel=self.parallel,
            threads=self.threads, tensor_split=self.tensor_split, flash_attn=self.flash_attn,
            cache_type_k=self.cache_type_k, cache_type_v=self.cache_type_v, alias=self.alias, api_key=self.api_key,
            extra_flags=list(self.extra_flags or []), desired=self.desired_state, generation=self.generation,
        )

    def command_line(self):
        """The launch command a provider would type (API key hidden)."""
        try:
            spec = self.spec()
        except serverspec.SpecError as exc:  # e.g. saved on 0.0.0.0 without a key, before that was refused
            return f"not launchable: {exc}"
        args = serverspec.launch_args(spec, "<api-key-file>" if spec.api_key else None)
        return " ".join(args)


class ServerExit(models.Model):
    """A llama-server that died by itself (not stopped by the panel): what the rig saw, kept as history."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="exits")
    at = models.DateTimeField(db_index=True)
    exit_code = models.PositiveSmallIntegerField(null=True, blank=True)
    signal = models.PositiveSmallIntegerField(null=True, blank=True)
    uptime = models.FloatField(null=True, blank=True)  # seconds it had run
    restart_in = models.FloatField(null=True, blank=True)  # None: the rig gave up restarting it
    log_tail = models.TextField(blank=True)
    # The report's sequence number on its rig: the same exit sent again is one row.
    report_seq = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        constraints = [models.UniqueConstraint(fields=["deployment", "report_seq"], name="serverexit_once")]

    def __str__(self):
        return f"{self.deployment_id} {self.summary}"

    @property
    def how(self):
        if self.signal is not None:
            try:
                return signal_module.Signals(self.signal).name
            except ValueError:
                return f"signal {self.signal}"
        if self.exit_code is not None:
            return f"exit code {self.exit_code}"
        return "exit status unknown"

    @property
    def summary(self):
        """"crashed (SIGKILL) after 3 h 12 min; restarted 1 s later" (or "; not restarted: it kept crashing")."""
        after = f" after {supervisor.duration_text(self.uptime)}" if self.uptime is not None else ""
        if self.restart_in is None:
            return f"crashed ({self.how}){after}; not restarted: it kept crashing"
        return f"crashed ({self.how}){after}; restarted {supervisor.duration_text(self.restart_in)} later"


class Benchmark(models.Model):
    """One throughput sweep of a deployment (nodes/agent/benchmark.py): its steps, parameters, build and power."""

    NVML, CONFIGURED = "nvml", "configured"

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="benchmarks")
    node = models.ForeignKey("nodes.Node", on_delete=models.CASCADE, related_name="benchmarks")
    operation = models.OneToOneField("nodes.Operation", null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="benchmark")
    build = models.ForeignKey(Build, null=True, blank=True, on_delete=models.SET_NULL, related_name="benchmarks")
    build_version = models.CharField(max_length=200, blank=True)  # kept when the build row goes
    created = models.DateTimeField(default=timezone.now, db_index=True)
    parameters = models.JSONField(default=dict)  # the request, the server's slots and settings at the time
    steps = models.JSONField(default=list)  # per concurrency: aggregate, per stream, TTFT, prompt tok/s, power
    single_tps = models.FloatField(help_text="generation tok/s, one stream")
    prompt_tps = models.FloatField(help_text="prompt processing tok/s, one stream")
    ttft_ms = models.FloatField(help_text="time to first token, one stream, ms")
    best_aggregate_tps = models.FloatField(help_text="highest generation tok/s over all streams together")
    best_concurrency = models.PositiveIntegerField()
    recommended_sessions = models.PositiveIntegerField()
    recommended_tps = models.FloatField(help_text="aggregate generation tok/s at the recommended sessions")
    power_w = models.FloatField(null=True, blank=True, help_text="average draw at the recommended sessions, W")
    power_source = models.CharField(max_length=10, blank=True,
                                    choices=[(NVML, "measured (NVML)"), (CONFIGURED, "configured wattage")])

    class Meta:
        ordering = ["-created", "-id"]

    def __str__(self):
        return f"benchmark #{self.pk} of {self.deployment_id}"


class EconomicsSettings(models.Model):
    """One row: the prices that turn a benchmark into cost per hour, per million tokens and a minimum bid."""

    electricity_usd_per_kwh = models.DecimalField(max_digits=8, decimal_places=4, default=Decimal("0.15"),
                                                  validators=[MinValueValidator(Decimal("0"))])
    mor_usd = models.DecimalField("MOR price ($)", max_digits=14, decimal_places=6, default=Decimal("10"),
                                  validators=[MinValueValidator(Decimal("0.000001"))])
    amortisation_months = models.PositiveIntegerField(
        default=24, validators=[MinValueValidator(1), MaxValueValidator(240)])
    cpu_rig_watts = models.PositiveIntegerField(
        "wattage of a CPU-only rig (W)", default=150, validators=[MinValueValidator(1), MaxValueValidator(100_000)])
    updated = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey("auth.User", null=True, blank=True, on_delete=models.SET_NULL)

    @classmethod
    def current(cls):
        if not cls.objects.exists():
            cls.objects.create()
        return cls.objects.order_by("pk").first()  # read back: the prices as stored (0.1500), not as typed

    @property
    def electricity_text(self):
        return _plain(self.electricity_usd_per_kwh, 4)

    @property
    def mor_usd_text(self):
        return _plain(self.mor_usd, 2)


def _plain(value, places):
    """A Decimal with at least `places` decimals and no exponent: 10 → '10.00', 0.000001 → '0.000001'."""
    value = Decimal(value).normalize()
    exponent = value.as_tuple().exponent
    return format(value.quantize(Decimal(1).scaleb(min(-places, exponent))), "f")
