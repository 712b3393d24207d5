from django import forms
from django.forms import inlineformset_factory

from nodes.models import HardwareProfile, Node, Part


class NodeForm(forms.ModelForm):
    class Meta:
        model = Node
        fields = ["name", "notes"]
        widgets = {"notes": forms.Textarea(attrs={"rows": 3})}
        # The model is Node; the provider knows it as a rig (Django would say "Node with this Name already exists.").
        error_messages = {"name": {"unique": "A rig with this name already exists."}}

    def clean_name(self):
        return self.cleaned_data["name"].strip()


class AttachProfileForm(forms.Form):
    profile = forms.ModelChoiceField(queryset=HardwareProfile.objects.all(), required=False,
                                     empty_label="— none —")


class ProfileForm(forms.ModelForm):
    class Meta:
        model = HardwareProfile
        fields = ["name", "notes", "planned_ram_gb", "planned_vram_gb"]
        widgets = {"notes": forms.Textarea(attrs={"rows": 3})}
        error_messages = {"name": {"unique": "A planned build with this name already exists."}}


PartFormSet = inlineformset_factory(
    HardwareProfile, Part, fields=["category", "description", "quantity", "unit_price"], extra=3, can_delete=True
)
