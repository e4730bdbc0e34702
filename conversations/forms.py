from django import forms

from modelhub import api
from modelhub.models import ModelSpec
from modelhub.options import InvalidOptions

OPTION_FIELDS = ("temperature", "top_p", "max_new_tokens")


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


class SettingsForm(forms.Form):
    """System prompt and sampling for one conversation; empty fields use the model's defaults."""

    system_prompt = forms.CharField(required=False, max_length=8000, widget=forms.Textarea(attrs={"rows": 3}))
    temperature = forms.FloatField(required=False, min_value=0, max_value=2)
    top_p = forms.FloatField(required=False, min_value=0.01, max_value=1)
    max_new_tokens = forms.IntegerField(required=False, min_value=1)

    def __init__(self, spec, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.spec = spec
        if spec is not None:
            defaults = spec.default_options()
            for name in OPTION_FIELDS:
                self.fields[name].widget.attrs["placeholder"] = f"model default: {getattr(defaults, name)}"
            self.fields["system_prompt"].widget.attrs["placeholder"] = spec.system_prompt or "none"

    def clean(self):
        cleaned = super().clean()
        overrides = self.overrides()
        limit = self.spec.context_length if self.spec else None
        if limit and overrides.get("max_new_tokens", 0) >= limit:
            self.add_error("max_new_tokens", f"The model's context is {limit} tokens; ask for fewer new tokens.")
        elif self.spec is not None:
            try:
                api.options_for(self.spec, overrides)
            except InvalidOptions as exc:
                raise forms.ValidationError(exc.message) from exc
        return cleaned

    def overrides(self):
        return {name: self.cleaned_data.get(name) for name in OPTION_FIELDS if self.cleaned_data.get(name) is not None}
