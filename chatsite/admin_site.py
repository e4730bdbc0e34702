"""The admin, open to the roles that have something to do there (conversations/access/roles.py).

Django's admin lets in only staff accounts. Here an active account may also enter when one of its
permissions concerns a model the admin shows: a model admin (models, adapters, fine-tunes, arenas) or
an admin (everything) needs no staff flag, and loses the admin with the role. The index and every
page still show only what the account's permissions allow; a user or a reviewer has none of these
permissions and gets the admin's login page.
"""

from django.contrib.admin import AdminSite
from django.contrib.admin.apps import AdminConfig


class ChatsiteAdminSite(AdminSite):
    site_header = "chatsite administration"

    def has_permission(self, request):
        user = request.user
        if not user.is_active:
            return False
        return user.is_staff or any(
            any(model_admin.get_model_perms(request).values()) for model_admin in self._registry.values()
        )


class ChatsiteAdminConfig(AdminConfig):
    default_site = "chatsite.admin_site.ChatsiteAdminSite"
