from django import forms
from django.core.validators import validate_email

from alerts.models import THRESHOLD_LABELS, Channel, Rule, validate_webhook_url


class RuleForm(forms.ModelForm):
    """Only the thresholds this rule's kind reads are shown; each is required where the kind needs it."""

    class Meta:
        model = Rule
        fields = ["enabled", "limit", "free_gb", "window_minutes", "for_minutes"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        used = self.instance.fields_used
        for name in ("limit", "free_gb", "window_minutes", "for_minutes"):
            if name not in used:
                del self.fields[name]
                continue
            label = THRESHOLD_LABELS[name]
            self.fields[name].label = label.get(self.instance.kind, name) if isinstance(label, dict) else label
            self.fields[name].required = name in ("limit", "window_minutes", "for_minutes") and not (
                name == "limit" and self.instance.kind == "disk_full")

    def clean(self):
        data = super().clean()
        if self.instance.kind == "disk_full" and data.get("limit") is None and data.get("free_gb") is None:
            raise forms.ValidationError("Give a percentage, a number of GB, or both.")
        if self.instance.kind in ("vram_full", "disk_full") and (data.get("limit") or 0) > 100:
            self.add_error("limit", "A percentage is at most 100.")
        if self.instance.kind == "crash_loop" and data.get("limit") is not None and data["limit"] < 1:
            self.add_error("limit", "At least one exit.")
        return data


class ChannelForm(forms.ModelForm):
    """The target is never sent back: on edit a blank target keeps the stored one."""

    target = forms.CharField(max_length=2000, required=False, widget=forms.PasswordInput(render_value=False),
                             label="Email address or webhook URL")

    class Meta:
        model = Channel
        fields = ["name", "kind", "target", "enabled"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.target_set = bool(self.instance.pk and self.instance.target)
        self.fields["target"].help_text = (f"set ({self.instance.target_shown}) — leave blank to keep"
                                           if self.target_set else
                                           "An address for email; for a webhook the URL Slack, Discord or your "
                                           "receiver gave you (kept sealed, never shown again in full)")
        if self.instance.pk:
            self.fields["kind"].disabled = True

    def clean(self):
        data = super().clean()
        target = (data.get("target") or "").strip()
        kind = data.get("kind") or self.instance.kind
        if not target:
            if self.target_set:
                data["target"] = self.instance.target
                return data
            self.add_error("target", "Required.")
            return data
        try:
            (validate_email if kind == Channel.EMAIL else validate_webhook_url)(target)
        except forms.ValidationError as exc:
            self.add_error("target", exc)
        data["target"] = target
        return data
