"""The roles (conversations/access/roles.py) as groups, and every existing account in "user": before roles,
every account could chat."""

from django.db import migrations

from conversations.access import roles


def create_roles(apps, schema_editor):
    roles.sync(apps, schema_editor.connection.alias, strict=False)
    Group = apps.get_model("auth", "Group")
    User = apps.get_model("auth", "User")
    user_role = Group.objects.using(schema_editor.connection.alias).get(name=roles.USER)
    user_role.user_set.add(*User.objects.using(schema_editor.connection.alias).all())


class Migration(migrations.Migration):

    dependencies = [
        ('auth', '0012_alter_user_first_name_max_length'),
        ('contenttypes', '0002_remove_content_type_name'),
        ('modelhub', '0012_access_groups'),
        ('conversations', '0014_message_token_probs'),
    ]

    operations = [
        migrations.AlterModelOptions(
            name='conversation',
            options={'ordering': ['-updated_at', '-id'], 'permissions': [('chat', 'Can chat (pages, socket, API keys, API) with the models their groups allow')]},
        ),
        migrations.AlterModelOptions(
            name='feedback',
            options={'ordering': ['-updated_at', '-id'], 'permissions': [('review_feedback', 'Can review feedback of consented conversations in the review queue')], 'verbose_name_plural': 'feedback'},
        ),
        migrations.RunPython(create_roles, migrations.RunPython.noop),
    ]
