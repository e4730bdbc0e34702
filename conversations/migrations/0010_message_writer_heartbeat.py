# Every message names the process that saved it; a streaming reply's writer renews its heartbeat.
# Rows from before have no writer (""), so replies they left streaming count as orphaned.

import django.utils.timezone
from django.db import migrations, models

import conversations.models.writers


class Migration(migrations.Migration):

    dependencies = [
        ('conversations', '0009_conversation_sealed'),
    ]

    operations = [
        migrations.AddField(
            model_name='message',
            name='heartbeat_at',
            field=models.DateTimeField(blank=True, null=True, help_text='Renewed by the writer while the reply streams.'),
        ),
        migrations.AlterField(
            model_name='message',
            name='heartbeat_at',
            field=models.DateTimeField(blank=True, default=django.utils.timezone.now, help_text='Renewed by the writer while the reply streams.', null=True),
        ),
        migrations.AddField(
            model_name='message',
            name='writer',
            field=models.CharField(blank=True, default='', help_text='The process that saved this row, and writes it while it streams.', max_length=120),
        ),
        migrations.AlterField(
            model_name='message',
            name='writer',
            field=models.CharField(blank=True, default=conversations.models.writers.identity, help_text='The process that saved this row, and writes it while it streams.', max_length=120),
        ),
    ]
