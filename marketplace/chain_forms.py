"""The on-chain action forms: amounts typed in MOR or wei, made exact wei by marketplace.chain.parse_amount, then the
rig's own checks (chain.check) so a form refuses exactly what the rig would, with the rig's reason."""

import re

from django import forms

from hosting.services import Refused
from marketplace import chain
from nodes.agent.routeradmin import MODEL_MIN_STAKE, MODEL_TAGS, PROVIDER_MIN_STAKE

UNIT_CHOICES = [(u, u) for u in chain.UNITS]
HEX_ID_RE = re.compile(r"^0x[0-9a-fA-F]{64}$")
TITLES = {"approve": "Approve the marketplace contract", "register_provider": "Register or update the provider",
          "register_model": "Register a model", "post_bid": "Post a bid", "delete_bid": "Delete a bid"}


def amount_field(label, initial, help_text=""):
    """Typed as text: parsed to exact wei with its unit (never a float field)."""
    return forms.CharField(label=label, max_length=100, initial=initial, help_text=help_text)


def unit_field(initial="MOR"):
    return forms.ChoiceField(label="in", choices=UNIT_CHOICES, initial=initial)


class ChainForm(forms.Form):
    action = None
    amounts = ()  # names of the amount fields, each with a `<name>_unit` beside it

    def params(self, data):
        raise NotImplementedError

    def clean(self):
        data = super().clean()
        for name in self.amounts:
            if name in data and f"{name}_unit" in data:
                try:
                    data[name] = chain.parse_amount(data[name], data[f"{name}_unit"])
                except Refused as exc:
                    self.add_error(name, str(exc))
        if not self.errors:
            try:
                self.cleaned_params = chain.check(self.action, self.params(data))
            except Refused as exc:
                self.add_error(None, str(exc))
        return data


class ApproveForm(ChainForm):
    action, amounts = "approve", ("amount",)
    amount = amount_field("Allowance", "1", "What the marketplace contract may draw from the rig's wallet for "
                                            "stakes and bid fees.")
    amount_unit = unit_field()

    def params(self, data):
        return {"amount": data["amount"]}


class ProviderForm(ChainForm):
    action, amounts = "register_provider", ("stake",)
    endpoint = forms.CharField(label="Endpoint (host:port, no scheme)", max_length=300,
                               help_text="Where consumers reach the router's proxy port from the internet.")
    stake = amount_field("Stake", chain.mor_text(PROVIDER_MIN_STAKE), "At least 0.2 MOR.")
    stake_unit = unit_field()

    def params(self, data):
        return {"endpoint": data["endpoint"].strip(), "stake": data["stake"]}


class ModelForm(ChainForm):
    action, amounts = "register_model", ("stake", "fee")
    name = forms.CharField(label="Model name", max_length=64)
    stake = amount_field("Stake", chain.mor_text(MODEL_MIN_STAKE), "At least 0.1 MOR.")
    stake_unit = unit_field()
    fee = amount_field("Fee", "0")
    fee_unit = unit_field()
    tags = forms.MultipleChoiceField(choices=[(t, t) for t in MODEL_TAGS], initial=["chat"],
                                     widget=forms.CheckboxSelectMultiple)
    ipfs_id = forms.CharField(label="IPFS id (optional, 0x + 64 hex)", max_length=66, required=False)

    def params(self, data):
        params = {"name": data["name"], "stake": data["stake"], "fee": data["fee"], "tags": list(data["tags"])}
        if data.get("ipfs_id"):
            params["ipfs_id"] = data["ipfs_id"].strip()
        return params


class BidForm(ChainForm):
    action, amounts = "post_bid", ("price",)
    model_id = forms.CharField(label="Model id", max_length=66,
                               widget=forms.TextInput(attrs={"list": "chain-models", "class": "mono"}),
                               help_text="Choose one of the rig's models or type an on-chain model id.")
    price = amount_field("Price per second", str(chain.FLOOR_WEI_PER_SECOND),
                   "At least 10,000,000,000 wei (0.00000001 MOR) per second.")
    price_unit = unit_field("wei")

    def params(self, data):
        return {"model_id": data["model_id"].strip(), "price_per_second": data["price"]}


class DeleteBidForm(ChainForm):
    action = "delete_bid"
    bid_id = forms.CharField(label="Bid id", max_length=66)

    def params(self, data):
        return {"bid_id": data["bid_id"].strip()}


FORMS = {form.action: form for form in (ApproveForm, ProviderForm, ModelForm, BidForm, DeleteBidForm)}


def initial(action, node, router, snapshot, model=None):
    """A form's starting values: the rig's endpoint, the minimum stakes, the suggested price for the model."""
    if action == "register_provider":
        host = (node.hardware or {}).get("hostname") or node.name
        return {"endpoint": f"{host}:{router.proxy_port if router else 3333}"}
    if action == "post_bid":
        models = chain.known_models(node, snapshot)
        model = model.lower() if model and HEX_ID_RE.match(model) else next(iter(models), None)
        if model is None:
            return {}
        return {"model_id": model, "price": str(chain.suggested_bid(node, model)[0]), "price_unit": "wei"}
    return {}
