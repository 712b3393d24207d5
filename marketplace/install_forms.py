from django import forms

from nodes.agent.routerrelease import URL_MAX, release_sha256, release_url, without_credentials
from nodes.agent.validation import InvalidValue


class ReleaseForm(forms.Form):
    """The same rules as the rig applies (nodes/agent/routerrelease.py), checked before anything is sent."""

    url = forms.CharField(label="Release URL", max_length=URL_MAX,
                          help_text="https link to the release file: the proxy-router binary itself, or a .zip / "
                                    ".tar.gz holding a file named proxy-router (e.g. mor-launch-linux-x86_64.zip). "
                                    "No user name, password or token in it.")
    sha256 = forms.CharField(label="sha256 of that file", max_length=80,
                             help_text="64 hex digits, from the release page. The rig keeps the file only if it "
                                       "matches.")

    def clean_url(self):
        try:
            return release_url(self.cleaned_data["url"])
        except InvalidValue as exc:
            # The form comes back with the reason; a password or token typed into the URL does not come back.
            self.data = self.data.copy()
            self.data["url"] = without_credentials(self.cleaned_data["url"])
            raise forms.ValidationError(str(exc)) from None

    def clean_sha256(self):
        try:
            return release_sha256(self.cleaned_data["sha256"])
        except InvalidValue as exc:
            raise forms.ValidationError(str(exc)) from None
