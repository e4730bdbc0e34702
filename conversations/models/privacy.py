"""Consent: which conversations may become training data, and each user's default.

Each conversation carries `allow_training` (toggled in its settings panel). New
conversations take their owner's default from `PrivacySettings` (the Privacy page),
which is on unless the user turns it off. Exports (conversations/training_data/) read the
conversation's flag at export time, so excluding a conversation keeps it out of every
later snapshot. Deleting a conversation deletes its messages, feedback and preferences.
"""

from django.conf import settings
from django.db import models, transaction


class PrivacySettings(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="privacy")
    allow_training_default = models.BooleanField(
        default=True, help_text="New conversations may be used to train models unless the user turns this off."
    )

    class Meta:
        verbose_name_plural = "privacy settings"

    def __str__(self):
        return f"privacy of {self.user}"

    @classmethod
    def of(cls, user):
        """This user's settings (the defaults when they never changed them; nothing is saved)."""
        return cls.objects.filter(user=user).first() or cls(user=user)

    @classmethod
    @transaction.atomic
    def set_default(cls, user, allow_training, apply_to_existing=False):
        """Save the default for new conversations; optionally apply it to every existing one too."""
        cls.objects.update_or_create(user=user, defaults={"allow_training_default": allow_training})
        if apply_to_existing:
            user.conversations.update(allow_training=allow_training)  # all of them, sealed ones too
