from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from morpheus_admin.sealing import SealedTextField
from nodes.agent import validation


class HubSettings(models.Model):
    """One row: the Hugging Face token for gated or private repos. Sealed at rest; never rendered back nor logged."""

    token = SealedTextField(blank=True)
    updated = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    def __repr__(self):
        return f"<HubSettings token={'set' if self.token else 'unset'}>"

    __str__ = __repr__

    @classmethod
    def current(cls):
        return cls.objects.order_by("pk").first() or cls.objects.create()

    @classmethod
    def token_value(cls):
        row = cls.objects.order_by("pk").first()
        return row.token if row and row.token else None


class CatalogModel(models.Model):
    repo_id = models.CharField(max_length=200, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    revision = models.CharField(max_length=200, default="main")
    curated = models.BooleanField(default=False, help_text="Shipped with the panel")
    downloads = models.BigIntegerField(null=True, blank=True)
    likes = models.IntegerField(null=True, blank=True)
    added_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-curated", "name"]

    def __str__(self):
        return self.name

    def clean(self):
        from django.core.exceptions import ValidationError

        try:
            validation.repo_id(self.repo_id)
            validation.revision(self.revision)
        except validation.InvalidValue as exc:
            raise ValidationError(str(exc)) from None

    @property
    def hub_url(self):
        return f"{settings.HF_ENDPOINT.rstrip('/')}/{self.repo_id}"


class ModelFile(models.Model):
    """One GGUF model in a repo: a single file, or the shards of a split model (`-00001-of-00003.gguf`)."""

    model = models.ForeignKey(CatalogModel, on_delete=models.CASCADE, related_name="files")
    filename = models.CharField(max_length=300, help_text="The file, or the first shard of a split model")
    shards = models.JSONField(default=list, blank=True, help_text="[{filename, size, sha256}] for every file")
    quant = models.CharField(max_length=20, blank=True)
    size = models.BigIntegerField(null=True, blank=True)
    facts = models.JSONField(default=dict, blank=True)
    facts_error = models.TextField(blank=True)
    facts_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["model", "size", "filename"]
        constraints = [models.UniqueConstraint(fields=["model", "filename"], name="modelfile_unique_name")]

    def __str__(self):
        return f"{self.model.repo_id}/{self.filename}"

    def get_absolute_url(self):
        return reverse("model_file_detail", args=[self.pk])

    @property
    def target(self):
        """What an operation on this file names as its target."""
        return f"{self.model.repo_id}:{self.filename}"

    @property
    def shard_count(self):
        return max(1, len(self.shards))

    @property
    def file_type(self):
        """The quant as the GGUF header says (F16 in a file named `-Q8_0`); the file name's only until it is read."""
        return (self.facts or {}).get("file_type") or self.quant

    @property
    def parameters(self):
        return (self.facts or {}).get("parameters")

    @property
    def parameters_label(self):
        """The header's parameter count, short enough for a table: "411 K", "1.1 B", "406 B"."""
        count = self.parameters
        if not count:
            return ""
        for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if count >= scale:
                value = count / scale
                return f"{value:.1f} {unit}" if value < 99.95 else f"{value:.0f} {unit}"
        return str(count)

    @property
    def header_file_size(self):
        """The size of the file whose header was read: the first part of a split model."""
        if self.shards:
            return self.shards[0].get("size")
        return self.size

    @property
    def header_was_whole_file(self):
        """A file smaller than the range read arrives whole: say so rather than "not the whole file"."""
        fetched, size = (self.facts or {}).get("header_fetched"), self.header_file_size
        return fetched is not None and size is not None and fetched >= size

    def download_files(self):
        if self.shards:
            return [{"filename": s["filename"], "size": s.get("size"), "sha256": s.get("sha256")} for s in self.shards]
        return [{"filename": self.filename, "size": self.size, "sha256": None}]


class RigFile(models.Model):
    """A GGUF file on a rig's disk, as its agent last reported it."""

    node = models.ForeignKey("nodes.Node", on_delete=models.CASCADE, related_name="model_files")
    model_file = models.ForeignKey(ModelFile, null=True, blank=True, on_delete=models.SET_NULL, related_name="copies")
    path = models.CharField(max_length=1000)
    repo_id = models.CharField(max_length=200, blank=True)
    filename = models.CharField(max_length=300, blank=True)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64, blank=True)
    verified = models.BooleanField(default=False, help_text="sha256 matched the Hub's LFS metadata")
    facts = models.JSONField(default=dict, blank=True)
    facts_error = models.TextField(blank=True)
    shard_paths = models.JSONField(default=list, blank=True)
    source = models.CharField(max_length=20, default="download", choices=[("download", "downloaded"), ("scan", "found on disk")])
    updated = models.DateTimeField(default=timezone.now)
    # The rig's sequence number of the report this row comes from: an older report never overwrites it.
    report_seq = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["node", "path"]
        constraints = [models.UniqueConstraint(fields=["node", "path"], name="rigfile_unique_path")]

    def __str__(self):
        return f"{self.node_id}:{self.path}"

    @property
    def basename(self):
        return self.path.rsplit("/", 1)[-1]

    def used_by(self):
        """Deployments that use this file; deleting it is refused while there are any (hosting arrives later)."""
        related = getattr(self, "deployments", None)
        return list(related.all()) if related is not None else []

    def blockers(self):
        """(deployment, what to do first) for each deployment that keeps this file from being deleted.

        A deployment meant to run, whose server has not stopped or failed, must be stopped before hosting lets it
        be deleted (hosting.views.deployment_delete); any other needs deleting only.
        """
        return [(d, "stop and delete" if d.desired_state == d.RUNNING and d.actual_state not in ("stopped", "failed")
                 else "delete") for d in self.used_by()]
