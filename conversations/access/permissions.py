"""Who may open what: the permission every entry point checks, and what happens when it is taken away.

    the chat pages, their socket, API keys, the API   conversations.chat (role "user")
    the review queue                                  conversations.review_feedback (role "reviewer")
    the admin                                         any permission on a model it shows (chatsite/admin_site.py)
    arenas                                            their models' permissions (arena/views.py)
    the privacy page                                  any account: its data is its own, role or not

The roles are groups (roles.py). A permission is read from the database on each request, so a user
whose role was removed loses access on their next page or API call. Their open sockets are told at
once: removing a group, a group's permission, a permission, deactivating the account or changing its
password sends `access.check` to the user's channel-layer group, in every process, and each socket
reads its session and account again and closes (4403: no longer allowed; 4401: disabled, or a session
its password change ended) when it fails.
"""

import logging
from functools import wraps

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models.signals import m2m_changed, post_init, post_save
from django.shortcuts import get_object_or_404, redirect

from conversations.delivery.groups import user_group
from conversations.models import Conversation, Message

log = logging.getLogger(__name__)

CHAT = "conversations.chat"
REVIEW = "conversations.review_feedback"

NO_CHAT = "Your account may not chat here: none of its roles allows it. Ask an admin to give it the user role."


def requiring(permission, refusal):
    """A view decorator: the login page for anyone logged out, 403 (saying `refusal`) without `permission`."""

    def decorator(view):
        @login_required
        @wraps(view)
        def checked(request, *args, **kwargs):
            if not request.user.has_perm(permission):
                raise PermissionDenied(refusal)
            return view(request, *args, **kwargs)

        return checked

    return decorator


chat_required = requiring(CHAT, NO_CHAT)  # every chat page
review_required = requiring(REVIEW, "Your account may not review feedback: ask an admin for the reviewer role.")


@login_required
def start(request):
    """Where a login lands (LOGIN_REDIRECT_URL): the chat for those who may chat, else the review queue,
    else the admin, else the account page (which says the account has no role)."""
    user = request.user
    if user.has_perm(CHAT):
        return redirect("conversations:list")
    if user.has_perm(REVIEW):
        return redirect("conversations:review_queue")
    if admin.site.has_permission(request):
        return redirect("admin:index")
    return redirect("conversations:account")


def may_chat(user):
    return user.has_perm(CHAT)  # False for an inactive account, superusers included


# --- whose conversation: every page of one goes through these -------------------------------------


def conversation_for(request, pk):
    """The request's user's own conversation `pk` (its model read along); 404 for anyone else's, or none."""
    return get_object_or_404(Conversation.objects.for_user(request.user).select_related("model"), pk=pk)


def reply_for(request, pk, message_id):
    """(conversation, assistant message) of the request's user's own conversation; 404 otherwise."""
    conversation = conversation_for(request, pk)
    return conversation, get_object_or_404(conversation.messages.filter(role=Message.Role.ASSISTANT), pk=message_id)


# --- taken away: tell the user's sockets ----------------------------------------------------------


def tell_sockets(user_ids):
    """After the transaction commits, every open socket of these users checks its account again."""
    user_ids = sorted(set(user_ids))
    if user_ids:
        transaction.on_commit(lambda: _send_check(user_ids))


def _send_check(user_ids):
    layer = get_channel_layer()
    try:
        for pk in user_ids:
            async_to_sync(layer.group_send)(user_group(pk), {"type": "access.check"})
    except Exception as exc:
        log.warning("access change: could not tell the sockets of users %s (%s)", user_ids, exc)


def _groups_changed(sender, instance, action, reverse, pk_set, **kwargs):
    """user.groups (or group.user_set) lost members."""
    if action not in ("post_remove", "pre_clear"):
        return
    if not reverse:  # instance: a user
        tell_sockets([instance.pk])
    elif action == "pre_clear":  # instance: a group, all of its members leave
        tell_sockets(instance.user_set.values_list("pk", flat=True))
    else:
        tell_sockets(pk_set)


def _group_permissions_changed(sender, instance, action, reverse, pk_set, **kwargs):
    """A group (or several, from the permission's side) lost permissions: its members check."""
    if action not in ("post_remove", "pre_clear"):
        return
    if not reverse:  # instance: a group
        group_ids = [instance.pk]
    else:  # instance: a permission
        group_ids = list(instance.group_set.values_list("pk", flat=True)) if action == "pre_clear" else pk_set
    tell_sockets(get_user_model().objects.filter(groups__in=group_ids).values_list("pk", flat=True))


def _user_permissions_changed(sender, instance, action, reverse, pk_set, **kwargs):
    if action not in ("post_remove", "pre_clear"):
        return
    tell_sockets(
        [instance.pk]
        if not reverse
        else (instance.user_set.values_list("pk", flat=True) if action == "pre_clear" else pk_set)
    )


def _user_loaded(sender, instance, **kwargs):
    """Remember the password hash as read (never read here if the query deferred it)."""
    instance._password_as_loaded = instance.__dict__.get("password")


def _user_saved(sender, instance, created, raw=False, **kwargs):
    """A disabled account, or a new password (an admin's form, set_password, any save): the sessions it ended
    (Django's session hash) lose their sockets too."""
    password = instance.__dict__.get("password")
    changed = password != getattr(instance, "_password_as_loaded", password)
    instance._password_as_loaded = password
    if not created and not raw and (not instance.is_active or changed):
        tell_sockets([instance.pk])


def connect_signals():
    User = get_user_model()
    m2m_changed.connect(_groups_changed, sender=User.groups.through, dispatch_uid="access-groups")
    m2m_changed.connect(
        _group_permissions_changed, sender=Group.permissions.through, dispatch_uid="access-group-permissions"
    )
    m2m_changed.connect(
        _user_permissions_changed, sender=User.user_permissions.through, dispatch_uid="access-user-permissions"
    )
    post_init.connect(_user_loaded, sender=User, dispatch_uid="access-user-loaded")
    post_save.connect(_user_saved, sender=User, dispatch_uid="access-user-saved")
