from django.apps import AppConfig
from django.contrib.auth import get_user_model
from django.db.models.signals import post_migrate, post_save


class ConversationsConfig(AppConfig):
    name = "conversations"

    def ready(self):
        # django.contrib.admin (listed first) has registered every app's admin by now.
        from conversations.access import permissions, roles
        from conversations.evaluation.admin import extend_adapter_admin

        extend_adapter_admin()
        post_migrate.connect(roles.after_migrate, sender=self, dispatch_uid="conversations-roles")
        post_save.connect(roles.join_new_user_groups, sender=get_user_model(), dispatch_uid="new-user-groups")
        permissions.connect_signals()
