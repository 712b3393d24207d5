from django import forms
from django.urls import reverse

from hosting.models import Build, Deployment
from models_catalog import fit, planner
from models_catalog.models import RigFile
from nodes.agent import builder, serverspec


class BuildForm(forms.Form):
    source = forms.CharField(max_length=500, initial=builder.DEFAULT_SOURCE,
                             help_text="A git URL, or the absolute path of a git folder on the rig")
    ref = forms.CharField(max_length=100, required=False,
                          widget=forms.TextInput(attrs={"placeholder": f"{builder.DEFAULT_REF}, or HEAD for a folder"}),
                          help_text=f"Tag, branch or commit. Empty: {builder.DEFAULT_REF} (the tested release) from a "
                                    "git URL; HEAD (the commit the folder has checked out) from a local folder")
    backend = forms.ChoiceField(choices=Build.BACKENDS, initial="auto")
    options = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}),
                              help_text="Extra CMake options, one NAME=VALUE per line, from: "
                                        + ", ".join(sorted(builder.ALLOWED_OPTIONS)))

    def clean_source(self):
        return _check(builder.check_source, self.cleaned_data["source"])

    def clean_ref(self):
        ref = self.cleaned_data["ref"].strip()
        return _check(builder.check_ref, ref) if ref else ""

    def clean(self):
        data = super().clean()
        if data.get("source") and "ref" in data and not data["ref"]:
            data["ref"] = builder.default_ref(data["source"])  # a local folder rarely holds the official tag
        return data

    def clean_options(self):
        options = {}
        for line in self.cleaned_data["options"].splitlines():
            if not line.strip():
                continue
            name, _, value = line.strip().removeprefix("-D").partition("=")
            options[name.strip()] = value.strip()
        _check(builder.check_options, options)
        return options


def _check(fn, value):
    try:
        return fn(value)
    except builder.BuildError as exc:
        raise forms.ValidationError(str(exc)) from None


class AdoptForm(forms.Form):
    path = forms.CharField(max_length=1000, label="llama-server path",
                           help_text="e.g. /home/me/llama.cpp/build/bin/llama-server")

    def clean_path(self):
        return _check(builder.check_server_path, self.cleaned_data["path"])


CTX_HELP = "Shared by the parallel slots: each slot gets context ÷ parallel tokens"
API_KEY_HELP = ("Needed on any host but 127.0.0.1; clients send it as a Bearer token. It is kept in a file on the rig, "
                "not on the command line.")


class DeploymentForm(forms.ModelForm):
    remove_api_key = forms.BooleanField(required=False, label="remove the API key")
    preset = forms.ChoiceField(required=False, choices=[("", "— none —")] + [
        (key, value["label"]) for key, value in serverspec.PRESETS.items()])
    extra_flags_text = forms.CharField(required=False, label="Extra flags", widget=forms.Textarea(attrs={"rows": 2}),
                                       help_text="One per line, e.g. --mlock or --batch-size=512. Allowed: "
                                                 + ", ".join(sorted(serverspec.EXTRA_FLAGS)))

    class Meta:
        model = Deployment
        fields = ["name", "model_file", "build", "host", "port", "ctx_size", "n_gpu_layers", "parallel", "threads",
                  "tensor_split", "flash_attn", "cache_type_k", "cache_type_v", "alias", "api_key"]
        widgets = {"api_key": forms.PasswordInput(render_value=False)}  # a stored key is never sent back

    def __init__(self, *args, node, **kwargs):
        super().__init__(*args, **kwargs)
        self.node = node
        self.warnings = []  # saved anyway; the view shows them
        self.plan = None  # the fit planner's verdict on what was submitted
        self.fields["model_file"].queryset = RigFile.objects.filter(node=node)
        self.fields["build"].queryset = Build.objects.filter(node=node, status=Build.READY)
        self.fields["model_file"].label = "Model file on this rig"
        self.fields["model_file"].label_from_instance = lambda rig_file: rig_file.path  # not "<node id>:<path>"
        if not self.instance.pk:
            # A new deployment: choosing a file shows the planner's verdict and flags for it, with a link that fills
            # the form with them; nothing the provider typed is overwritten by the choice itself.
            self.fields["model_file"].widget.attrs.update({
                "hx-get": reverse("deployment_new", args=[node.name]), "hx-trigger": "change",
                "hx-target": "#plan-summary", "hx-select": "#plan-summary", "hx-swap": "outerHTML"})
        self.fields["ctx_size"].help_text = CTX_HELP
        chosen = self.instance.model_file if self.instance.pk else self.initial.get("model_file")
        trained = trained_context(chosen) if isinstance(chosen, RigFile) else None
        if trained:
            self.fields["ctx_size"].help_text += f"; {chosen.basename} was trained on {trained} tokens"
        if self.instance.pk:
            self.fields["extra_flags_text"].initial = "\n".join(self.instance.extra_flags or [])
        self.key_set = bool(self.instance.pk and self.instance.api_key)
        self.fields["api_key"].help_text = "set — leave blank to keep" if self.key_set else API_KEY_HELP
        if not self.key_set:
            del self.fields["remove_api_key"]

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        if self.key_set and data.get("remove_api_key"):
            if data.get("api_key"):
                self.add_error("remove_api_key", "Type a new key or remove it, not both.")
                return data
            data["api_key"] = ""
        elif self.key_set and not data.get("api_key"):
            data["api_key"] = self.instance.api_key  # left blank: keep the stored key
        try:
            serverspec.check_exposure(data["host"], data["api_key"])
        except serverspec.SpecError as exc:
            self.add_error("api_key", str(exc))
            return data
        preset = serverspec.PRESETS.get(data.get("preset") or "")
        if preset:
            for key in ("ctx_size", "n_gpu_layers", "parallel", "flash_attn", "tensor_split"):
                data[key] = preset[key]
        flags = [line.strip() for line in (data.get("extra_flags_text") or "").splitlines() if line.strip()]
        data["extra_flags"] = flags
        others = Deployment.objects.filter(node=self.node, port=data.get("port")).exclude(pk=self.instance.pk)
        if others.exists():
            self.add_error("port", f"port {data['port']} is taken by {others.first().name} on this rig")
            return data  # add_error dropped "port" from the cleaned data: the spec check below cannot run
        if data.get("port") in listening_ports(self.node) and not self._own_server_listens(data["port"]):
            self.add_error("port", f"port {data['port']} is in use on {self.node.name}: another program listens on "
                                   f"it; choose another, e.g. {suggest_port(self.node)}")
            return data
        build = data.get("build")
        model_file = data.get("model_file")
        if build is None or model_file is None:
            return data
        try:
            serverspec.ServerSpec(
                deployment_id=self.instance.pk or 1, binary=build.binary_path or "/missing", port=data["port"],
                model_path=model_file.path, host=data["host"], ctx_size=data["ctx_size"],
                n_gpu_layers=data["n_gpu_layers"], parallel=data["parallel"], threads=data.get("threads"),
                tensor_split=data.get("tensor_split") or "", flash_attn=data["flash_attn"],
                cache_type_k=data["cache_type_k"], cache_type_v=data["cache_type_v"], alias=data.get("alias") or "",
                api_key=data.get("api_key") or "", extra_flags=flags,
            )
        except serverspec.SpecError as exc:
            raise forms.ValidationError(str(exc)) from None
        try:
            self.plan = self._plan(data, model_file, flags)
        except planner.PlanRefused as exc:
            raise forms.ValidationError(str(exc)) from None
        self.warnings = self._warnings(data, model_file, flags)
        return data

    def _plan(self, data, model_file, flags):
        """The planner's verdict on these settings (None when the file's header or the rig's hardware is not known
        well enough to plan). Raises PlanRefused for what llama-server cannot run as asked."""
        trained = trained_context(model_file)
        per_slot = data["ctx_size"] // data["parallel"]
        rope = fit.rope_scaling(flags)
        if trained and per_slot > trained and not rope:
            raise planner.PlanRefused(
                f"ctx-size {data['ctx_size']} gives each of the {data['parallel']} parallel slots {per_slot} tokens, "
                f"more than the {trained} {model_file.basename} was trained on: use ctx-size "
                f"{trained * data['parallel']} or less, or add a rope setting (--rope-freq-scale=…) to stretch it")
        no_gpus = has_no_gpus(self.node)
        try:
            return fit.plan_rig_file(
                model_file, self.node, ctx_size=data["ctx_size"], parallel=data["parallel"],
                # On a rig without GPUs llama-server ignores the layers (a warning, not a refusal).
                n_gpu_layers=None if no_gpus else data["n_gpu_layers"], tensor_split=data.get("tensor_split") or None,
                cache_type_k=data["cache_type_k"], cache_type_v=data["cache_type_v"], flash_attn=data["flash_attn"],
                rope_scaling=rope)
        except planner.CannotPlan:
            return None  # nothing to plan against (header not read, no hardware report): the launch is not refused

    def _own_server_listens(self, port):
        """The rig reports this deployment's own running server on its saved port: keeping that port is fine."""
        if self.instance.pk is None:
            return False
        saved = Deployment.objects.filter(pk=self.instance.pk).values_list("port", "actual_state").first()
        return saved is not None and saved[0] == port and saved[1] in ("pending", "starting", "loading", "healthy")

    def _warnings(self, data, model_file, flags):
        warnings = []
        trained = trained_context(model_file)
        per_slot = data["ctx_size"] // data["parallel"]
        if trained and per_slot > trained:  # allowed only with a rope setting (see _plan)
            warnings.append(f"Each of the {data['parallel']} parallel slots gets {per_slot} tokens of context, more "
                            f"than the {trained} {model_file.basename} was trained on, stretched by your rope "
                            "setting: answers past the trained length may degrade.")
        if self.plan is not None and not self.plan.fits:
            warnings.append(f"The fit planner says this does not fit: {self.plan.summary}. Saved as you asked; "
                            "llama-server may fail to load it.")
        if data["n_gpu_layers"] and has_no_gpus(self.node):
            warnings.append(f"{self.node.name} reports no GPU: llama-server ignores --n-gpu-layers "
                            f"{data['n_gpu_layers']} there and runs on the CPU.")
        return warnings

    def save(self, commit=True):
        deployment = super().save(commit=False)
        for key in ("ctx_size", "n_gpu_layers", "parallel", "flash_attn", "tensor_split"):
            setattr(deployment, key, self.cleaned_data[key])
        deployment.extra_flags = self.cleaned_data["extra_flags"]
        deployment.node = self.node
        if deployment.pk:
            deployment.generation += 1  # new settings: the agent restarts the server with them
        if commit:
            deployment.save()
        return deployment


def listening_ports(node):
    """TCP ports the rig last reported a program listening on (its telemetry); empty when it never said."""
    ports = (node.host_reading or {}).get("listening_ports") or []
    return {port for port in ports if isinstance(port, int)}


def suggest_port(node, start=8080):
    """The first port from `start` that neither a deployment of the rig nor a program on it holds."""
    taken = set(Deployment.objects.filter(node=node).values_list("port", flat=True)) | listening_ports(node)
    port = start
    while port in taken and port < 65535:
        port += 1
    return port


def has_no_gpus(node):
    """The rig's hardware report lists no GPU (not: it has not reported yet)."""
    hardware = node.hardware or {}
    return "gpus" in hardware and not hardware["gpus"]


def trained_context(rig_file):
    """The context length the model was trained on, from its GGUF header; None when unknown."""
    if rig_file is None:
        return None
    for facts in (rig_file.facts, rig_file.model_file.facts if rig_file.model_file_id else None):
        value = (facts or {}).get("context_length")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def planned_settings(node, rig_file, ctx_size=None, parallel=None):
    """(the host form's values from the fit planner, the plan) for a file on a rig; (None, why) when it cannot plan."""
    try:
        plan = fit.plan_rig_file(rig_file, node, ctx_size=ctx_size, parallel=parallel)
    except planner.PlanRefused as exc:
        return None, str(exc)
    flags = dict(plan.flags)
    if not flags.get("threads"):
        flags.pop("threads", None)
    return flags, plan


def planned_plan(deployment):
    """The plan of a saved deployment's own settings; raises PlanRefused."""
    return fit.plan_rig_file(
        deployment.model_file, deployment.node, ctx_size=deployment.ctx_size, parallel=deployment.parallel,
        n_gpu_layers=None if has_no_gpus(deployment.node) else deployment.n_gpu_layers,
        tensor_split=deployment.tensor_split or None, cache_type_k=deployment.cache_type_k,
        cache_type_v=deployment.cache_type_v, flash_attn=deployment.flash_attn,
        rope_scaling=fit.rope_scaling(deployment.extra_flags))


def suggested_settings(node, rig_file=None, ctx_size=None, parallel=None):
    """The fit planner's flags for this file on this rig when it can plan them; else the seed guide's single-GPU
    values, fitted to the rig (no GPU: no GPU layers) and the model (each parallel slot within the context it was
    trained on)."""
    if rig_file is not None:
        planned, _plan = planned_settings(node, rig_file, ctx_size, parallel)
        if planned is not None:
            return planned
    settings = {key: value for key, value in serverspec.PRESETS["seed-single-gpu"].items() if key != "label"}
    if has_no_gpus(node):
        settings["n_gpu_layers"] = 0
    trained = trained_context(rig_file)
    if trained:
        settings["ctx_size"] = max(256, min(settings["ctx_size"], trained * settings["parallel"]))
    return settings
