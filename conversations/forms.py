from django import forms

from modelhub.models import Adapter, ModelSpec


class RenameForm(forms.Form):
    title = forms.CharField(max_length=200, strip=True)


class ModelChoiceForm(forms.Form):
    """One select of "model" and "model + adapter" pairs this user may chat with."""

    choice = forms.ChoiceField(label="Model")

    def __init__(self, user, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.options = {}
        for spec in ModelSpec.objects.visible_to(user).prefetch_related("adapters"):
            self.options[f"m{spec.pk}"] = (spec, None, str(spec))
            for adapter in spec.adapters.all():
                if adapter.enabled:
                    self.options[f"m{spec.pk}-a{adapter.pk}"] = (spec, adapter, f"{spec} + {adapter.name}")
        self.fields["choice"].choices = [(key, label) for key, (_, _, label) in self.options.items()]

    @staticmethod
    def key_for(spec, adapter=None):
        if spec is None:
            return ""
        return f"m{spec.pk}" + (f"-a{adapter.pk}" if adapter else "")

    def chosen(self):
        spec, adapter, _ = self.options[self.cleaned_data["choice"]]
        return spec, adapter
