from django import forms
from django.core.validators import MaxValueValidator

from hosting.services import Refused
from marketplace.models import Listing
from marketplace.publishing import check_model_id
from nodes.agent.protocol import ROUTER_NETWORKS


class RouterForm(forms.Form):
    binary = forms.CharField(label="Proxy-router binary on the rig", max_length=4096,
                             help_text="Absolute path, e.g. /opt/morpheus/proxy-router. Its .env keeps the keys you "
                                       "wrote (WALLET_PRIVATE_KEY): the panel never reads them.")
    network = forms.ChoiceField(choices=[(n, n) for n in ROUTER_NETWORKS], initial="mainnet")
    proxy_port = forms.IntegerField(min_value=1, max_value=65535, initial=3333, label="Proxy port (public)")
    web_port = forms.IntegerField(min_value=1, max_value=65535, initial=8082, label="Admin API port (loopback)")
    confirm_restart = forms.BooleanField(required=False, label="Restart it: open sessions are cut")


class PublishForm(forms.Form):
    """A deployment as a models-config entry on its rig's router (marketplace/publishing.py checks it again)."""

    model = forms.ChoiceField(label="On-chain model", required=False)
    model_id = forms.CharField(label="…or its id", required=False, max_length=66,
                               help_text="0x and 64 hex digits: a model you registered, or one you bid on")
    model_name = forms.CharField(label="Model name", max_length=200,
                                 help_text="Sent to the server as the request's model")
    concurrent_slots = forms.IntegerField(label="Concurrent slots", min_value=1, required=False)
    capacity_policy = forms.ChoiceField(label="Capacity policy", choices=[(p, p) for p in Listing.CAPACITY_POLICIES],
                                        initial="simple")
    confirm_restart = forms.BooleanField(required=False, label="Restart the router: its open sessions are cut")

    def __init__(self, *args, deployment, router, restart_needed=False, **kwargs):
        super().__init__(*args, **kwargs)
        models = (router.snapshot.get("models") if router is not None else None) or []
        self.fields["model"].choices = [("", "another model: type its id below")] + [
            (m["id"], f"{m.get('name') or 'unnamed'} ({m['id'][:10]}…)") for m in models if isinstance(m, dict)]
        self.fields["concurrent_slots"].widget.attrs["max"] = deployment.parallel
        self.fields["concurrent_slots"].validators.append(MaxValueValidator(deployment.parallel))
        self.fields["concurrent_slots"].help_text = (
            f"Sessions at once, at most the server's {deployment.parallel} parallel slots; pre-filled from the latest "
            "benchmark's recommendation")
        if not restart_needed:
            del self.fields["confirm_restart"]

    def clean(self):
        data = super().clean()
        value = (data.get("model_id") or "").strip() or data.get("model") or ""
        if not value:
            self.add_error("model_id", "Pick a model or type its id.")
        else:
            try:
                data["model_id"] = check_model_id(value)
            except Refused as exc:
                self.add_error("model_id", str(exc))
        return data


class ConfirmRestartForm(forms.Form):
    confirm_restart = forms.BooleanField(required=False, label="Restart the router: its open sessions are cut")
