from django import forms

from nodes.agent.protocol import ROUTER_NETWORKS


class RouterForm(forms.Form):
    binary = forms.CharField(label="Proxy-router binary on the rig", max_length=4096,
                             help_text="Absolute path, e.g. /opt/morpheus/proxy-router. Its .env keeps the keys you "
                                       "wrote (WALLET_PRIVATE_KEY): the panel never reads them.")
    network = forms.ChoiceField(choices=[(n, n) for n in ROUTER_NETWORKS], initial="mainnet")
    proxy_port = forms.IntegerField(min_value=1, max_value=65535, initial=3333, label="Proxy port (public)")
    web_port = forms.IntegerField(min_value=1, max_value=65535, initial=8082, label="Admin API port (loopback)")
    confirm_restart = forms.BooleanField(required=False, label="Restart it: open sessions are cut")
