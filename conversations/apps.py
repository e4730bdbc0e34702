from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    name = "conversations"

    def ready(self):
        # django.contrib.admin (listed first) has registered every app's admin by now.
        from conversations.evaluation_admin import extend_adapter_admin

        extend_adapter_admin()
