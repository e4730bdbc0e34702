"""Roles: Django groups holding Django permissions, nothing home-made.

    user          chat (conversations.chat): the chat pages, their socket, API keys and the API
    reviewer      the review queue (conversations.review_feedback); nothing else
    model admin   models, adapters, fine-tunes, dataset snapshots, evaluation reports and arenas,
                  in the admin and on the arena pages
    admin         every permission, users and groups included

A person may hold several roles (a model admin who also chats is in "user" and "model admin"). The
groups are created by a data migration (conversations 0015) and kept whole after every `migrate`
(`sync`, from a post_migrate signal), so a permission that a later migration adds reaches "admin";
permissions an admin gives a group by hand are kept. Access is always checked as a permission
(`user.has_perm`), so a site may also build groups of its own. New accounts join the groups named in
CHATSITE_NEW_USER_GROUPS (default: user). Who may open what is in access/permissions.py.
"""

from django.apps import apps as global_apps
from django.conf import settings
from django.contrib.auth.management import create_permissions
from django.contrib.auth.models import Group

USER, REVIEWER, MODEL_ADMIN, ADMIN = "user", "reviewer", "model admin", "admin"
EVERYTHING = "*"

_MODEL_ADMIN = [
    *(
        f"modelhub.{action}_{model}"
        for model in ("modelspec", "adapter", "finetunejob")
        for action in ("add", "change", "delete", "view")
    ),
    "modelhub.view_modelworker",
    *(
        f"conversations.{action}_{model}"
        for model in ("arena", "evaluationreport")
        for action in ("add", "change", "delete", "view")
    ),
    "conversations.view_arenamatch",
    "conversations.change_arenamatch",
    "conversations.add_datasetsnapshot",
    "conversations.change_datasetsnapshot",
    "conversations.view_datasetsnapshot",
]

ROLES = {
    USER: ["conversations.chat"],
    REVIEWER: ["conversations.review_feedback"],
    MODEL_ADMIN: _MODEL_ADMIN,
    ADMIN: EVERYTHING,
}


def sync(apps, using="default", strict=True):
    """Create the role groups if missing and give each every permission its role lists (none taken
    away). `apps`: a migration's app registry, or post_migrate's. `strict`: a listed permission that
    does not exist is an error (not in the data migration, whose models are those of its time)."""
    for app_config in global_apps.get_app_configs():  # a fresh database has none before the last migration
        create_permissions(app_config, verbosity=0, using=using, apps=apps)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    every = Permission.objects.using(using).all()
    for name, listed in ROLES.items():
        group, _ = Group.objects.using(using).get_or_create(name=name)
        wanted = every if listed == EVERYTHING else _permissions(every, listed, strict)
        group.permissions.add(*wanted)


def _permissions(every, names, strict):
    pairs = [name.split(".", 1) for name in names]
    found = [
        p
        for p in every.filter(
            content_type__app_label__in={app for app, _ in pairs}, codename__in={codename for _, codename in pairs}
        ).select_related("content_type")
        if f"{p.content_type.app_label}.{p.codename}" in names
    ]
    missing = set(names) - {f"{p.content_type.app_label}.{p.codename}" for p in found}
    if missing and strict:
        raise LookupError(f"role permissions that do not exist: {', '.join(sorted(missing))}")
    return found


def after_migrate(sender, using, apps=global_apps, **kwargs):
    """post_migrate (after `migrate`, and after a test database's flush): the roles whole again."""
    sync(apps, using)


def join_new_user_groups(sender, instance, created, raw=False, **kwargs):
    """post_save of a user: a new account joins CHATSITE_NEW_USER_GROUPS (the groups that exist)."""
    if created and not raw and settings.CHATSITE_NEW_USER_GROUPS:
        instance.groups.add(*Group.objects.filter(name__in=settings.CHATSITE_NEW_USER_GROUPS))
