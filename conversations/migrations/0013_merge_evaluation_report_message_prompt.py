# Joins two migrations written in parallel (evaluation reports; the exact prompt of a message).

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("conversations", "0012_evaluation_report"),
        ("conversations", "0012_message_prompt"),
    ]

    operations = []
