"""The economics settings form: the prices a benchmark's costs and minimum bid are worked out with."""

from django import forms

from hosting.models import EconomicsSettings


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
