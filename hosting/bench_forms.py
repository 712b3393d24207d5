"""The economics settings form: the prices a benchmark's costs and minimum bid are worked out with."""

from django import forms

from hosting.models import EconomicsSettings
from nodes.agent import benchmark as sweep


class EconomicsForm(forms.ModelForm):
    class Meta:
        model = EconomicsSettings
        fields = ["electricity_usd_per_kwh", "mor_usd", "amortisation_months", "cpu_rig_watts"]
        labels = {"electricity_usd_per_kwh": "Electricity price ($ per kWh)", "mor_usd": "MOR price ($ per MOR)",
                  "amortisation_months": "Amortise the planned build over (months)",
                  "cpu_rig_watts": "Power of a rig without NVIDIA GPUs (W)"}
        help_texts = {"cpu_rig_watts": "Used where NVML cannot measure the draw during a benchmark.",
                      "amortisation_months": "The rig's planned build cost is spread over this many months "
                                             "(730 h each)."}


class BenchmarkForm(forms.Form):
    """Optional lengths per stream; left empty, the defaults that fit the server's slots (nodes/agent/benchmark.py)."""

    prompt_tokens = forms.IntegerField(required=False, min_value=sweep.LIMITS["prompt_tokens"][0],
                                       max_value=sweep.LIMITS["prompt_tokens"][1], label="Prompt tokens per stream")
    gen_tokens = forms.IntegerField(required=False, min_value=sweep.LIMITS["gen_tokens"][0],
                                    max_value=sweep.LIMITS["gen_tokens"][1], label="Generated tokens per stream")

    def request(self):
        return {key: value for key, value in self.cleaned_data.items() if value is not None}
