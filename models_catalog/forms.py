from django import forms

from nodes.agent import validation


class HubFileForm(forms.Form):
    repo_id = forms.CharField(max_length=200)
    filename = forms.CharField(max_length=300)
    revision = forms.CharField(max_length=200, required=False)

    def clean_repo_id(self):
        return _check(validation.repo_id, self.cleaned_data["repo_id"])

    def clean_filename(self):
        return _check(validation.gguf_filename, self.cleaned_data["filename"])

    def clean_revision(self):
        return _check(validation.revision, self.cleaned_data.get("revision") or "main")


def _check(validator, value):
    try:
        return validator(value)
    except validation.InvalidValue as exc:
        raise forms.ValidationError(str(exc)) from None


class TokenForm(forms.Form):
    token = forms.CharField(max_length=200, required=False, widget=forms.PasswordInput(render_value=False),
                            help_text="Starts with hf_.")
    clear = forms.BooleanField(required=False, label="Remove the token")

    def __init__(self, *args, token_set=False, **kwargs):
        super().__init__(*args, **kwargs)
        if token_set:
            self.fields["token"].help_text = "set — leave blank to keep"
        else:
            del self.fields["clear"]

    def clean(self):
        data = super().clean()
        if data.get("clear") and data.get("token"):
            self.add_error("clear", "Type a new token or remove it, not both.")
        return data

    def clean_token(self):
        token = self.cleaned_data["token"].strip()
        if token and (not token.isascii() or not token.isprintable() or " " in token or len(token) < 8):
            raise forms.ValidationError("That does not look like a Hugging Face token.")
        return token


class DownloadForm(forms.Form):
    nodes = forms.MultipleChoiceField(widget=forms.CheckboxSelectMultiple, choices=())

    def __init__(self, *args, node_choices=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["nodes"].choices = node_choices


class FitForm(forms.Form):
    """The context and parallel slots to plan for; empty: the planner recommends them."""

    ctx_size = forms.IntegerField(required=False, min_value=256, max_value=1_048_576, label="Context size",
                                  widget=forms.NumberInput(attrs={"placeholder": "largest"}))
    parallel = forms.IntegerField(required=False, min_value=1, max_value=256, label="Parallel slots",
                                  widget=forms.NumberInput(attrs={"placeholder": "4"}))
