from django import forms

from conversations.models import DatasetSnapshot, Feedback, FeedbackTag
from conversations.models.api_key import NAME_LENGTH
from conversations.models.datasets import FORMAT_CHOICES, LICENSES
from conversations.training_data.examples import Filters
from modelhub import api
from modelhub.api import InvalidOptions, OptionValidator
from modelhub.models import ModelSpec

OPTION_FIELDS = ("temperature", "top_p", "max_new_tokens")


class RenameForm(forms.Form):
    title = forms.CharField(max_length=200, strip=True)


class ModelChoiceForm(forms.Form):
    """One select of "model" and "model + adapter" pairs this user may chat with (their groups' access:
    `ModelSpec.objects.usable_by`); the chat, compare and the API all choose from it."""

    choice = forms.ChoiceField(label="Model")

    def __init__(self, user, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.options = {}
        self.specs = list(ModelSpec.objects.usable_by(user))  # for model_for too
        for spec in self.specs:
            self.options[f"m{spec.pk}"] = (spec, None, str(spec))
            for adapter in spec.usable_adapters:
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
    # Limits are GenerationOptions' own (modelhub/options.py), as on the model's fields.
    temperature = forms.FloatField(required=False, validators=[OptionValidator("temperature")])
    top_p = forms.FloatField(required=False, validators=[OptionValidator("top_p")])
    max_new_tokens = forms.IntegerField(required=False, validators=[OptionValidator("max_new_tokens")])
    # A model that thinks before it answers (Qwen3, DeepSeek-R1 distills…) may be told not to: the chat
    # template's `enable_thinking`. A template without the switch ignores it.
    think = forms.TypedChoiceField(
        required=False,
        label="Thinking",
        choices=[("", "model default"), ("True", "think before answering"), ("False", "answer without thinking")],
        coerce=lambda value: value == "True",
        empty_value=None,
    )

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
        names = (*OPTION_FIELDS, "think")
        return {name: self.cleaned_data.get(name) for name in names if self.cleaned_data.get(name) is not None}


class FeedbackForm(forms.Form):
    """The details of a rating: reason tags (active ones), a comment, a corrected answer and, for an answer the
    model reasoned before, whether the correction keeps that reasoning (it replaces the answer only)."""

    tags = forms.ModelMultipleChoiceField(queryset=None, required=False, widget=forms.CheckboxSelectMultiple)
    comment = forms.CharField(required=False, max_length=4000, widget=forms.Textarea(attrs={"rows": 2}))
    correction = forms.CharField(
        required=False,
        max_length=32000,
        strip=False,
        label="Corrected answer",
        widget=forms.Textarea(attrs={"rows": 6, "placeholder": "Write the answer you expected (optional)"}),
    )
    correction_keeps_reasoning = forms.BooleanField(
        required=False,
        initial=True,
        label="Keep the model's reasoning with my corrected answer",
        help_text="Leave it unticked if the reasoning is wrong too: training data then has your answer alone.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["tags"].queryset = FeedbackTag.objects.filter(active=True)

    @classmethod
    def for_answer(cls, message, data=None):
        """The form of one answer's block (ids unique on a page of many answers), filled with its feedback."""
        feedback, initial = message.owner_feedback, {}
        if feedback is not None:
            initial = {
                "tags": list(feedback.tags.all()),
                "comment": feedback.comment,
                "correction": feedback.correction,
                "correction_keeps_reasoning": feedback.correction_keeps_reasoning,
            }
        form = cls(data, initial=initial, auto_id=f"id_feedback{message.pk}_%s")
        if not message.reasoning:  # nothing to keep: the choice is not offered, and saving leaves it as it was
            del form.fields["correction_keeps_reasoning"]
        return form


class RatingForm(forms.Form):
    rating = forms.ChoiceField(choices=Feedback.Rating.choices, required=False)


class PrivacyForm(forms.Form):
    allow_training_default = forms.BooleanField(
        required=False,
        label="Use my new conversations to improve the models",
    )
    apply_to_existing = forms.BooleanField(required=False, label="Apply this to all my existing conversations too")


class ApiKeyForm(forms.Form):
    """A new API key: its name, and whether calls made with it are kept as conversations."""

    name = forms.CharField(
        max_length=NAME_LENGTH,
        strip=True,
        help_text="What the key is for: an editor, a notebook, a script.",
        error_messages={"required": "Give the key a name, to tell it from your other keys."},
    )
    dont_keep_calls = forms.BooleanField(
        required=False,
        label="Do not keep my calls",
        help_text="Calls with this key leave no conversation behind (otherwise each call is kept as one, "
        "with your privacy settings).",
    )


class ConsentForm(forms.Form):
    allow_training = forms.BooleanField(required=False, label="Use this conversation to improve the models")


class SnapshotForm(forms.Form):
    """The admin's "Create snapshot" form: the same options as `manage.py export_feedback`."""

    format = forms.ChoiceField(choices=FORMAT_CHOICES)
    since = forms.DateField(required=False, help_text="Feedback last edited on or after (YYYY-MM-DD)")
    until = forms.DateField(required=False, help_text="Feedback last edited on or before (YYYY-MM-DD)")
    model = forms.CharField(required=False, max_length=100, help_text="Answers of this model (name)")
    adapter = forms.CharField(required=False, max_length=100, help_text="Answers of this adapter (name)")
    tag = forms.CharField(required=False, max_length=50, help_text="Feedback with this tag (leaves out preferences)")
    reviewed = forms.BooleanField(
        required=False,
        label="Approved items only",
        help_text="Only feedback the review queue approved, with the corrections as "
        "approved (leaves out preferences: they are not reviewed)",
    )
    eval_fraction = forms.FloatField(initial=0.1, min_value=0, max_value=0.99)
    scrub = forms.BooleanField(required=False, initial=True, label="Scrub e-mail, phone and IP addresses")
    include_reasoning = forms.BooleanField(
        required=False,
        initial=True,
        label="Include the models' reasoning",
        help_text="As reasoning_content of assistant messages, apart from the answers; unticked, the answers alone",
    )
    license = forms.ChoiceField(
        choices=LICENSES, initial="other", help_text="What its dataset card (README.md) states, for a hub"
    )

    def filters(self):
        data = self.cleaned_data
        return Filters(
            since=data["since"],
            until=data["until"],
            model=data["model"].strip(),
            adapter=data["adapter"].strip(),
            tag=data["tag"].strip(),
            reviewed=data["reviewed"],
        )


class SnapshotFinetuneForm(forms.Form):
    """The admin's "Fine-tune an adapter on this snapshot" form: a base model and the main knobs."""

    base = forms.ModelChoiceField(queryset=ModelSpec.objects.filter(backend=ModelSpec.Backend.TRANSFORMERS))
    adapter_name = forms.SlugField(required=False, max_length=100, help_text="Default: method-job-ID, e.g. sft-job-12.")
    epochs = forms.FloatField(initial=3.0, min_value=0.1, max_value=100)
    learning_rate = forms.FloatField(initial=2e-4, min_value=1e-7, max_value=1.0)


class SnapshotEvaluateForm(forms.Form):
    """The admin's "Evaluate base vs its adapters on this snapshot" form: which base (all its adapters are compared)."""

    base = forms.ModelChoiceField(
        queryset=ModelSpec.objects.filter(adapters__isnull=False).distinct(),
        help_text="Compared with every adapter of it, enabled or not.",
    )


class AdapterEvaluateForm(forms.Form):
    """The admin's "Evaluate against their base on a snapshot" form, from the adapter list."""

    snapshot = forms.ModelChoiceField(
        queryset=DatasetSnapshot.objects.order_by("-created_at"),
        help_text="Its held-out rows with a reference answer are answered and scored.",
    )
