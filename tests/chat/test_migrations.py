"""Data migrations keep existing conversations intact."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("conversations", "0003_conversation_options")]
AFTER = [("conversations", "0004_message_tree")]


@pytest.mark.django_db(transaction=True)
def test_messages_from_before_the_tree_become_one_branch_ending_at_the_last():
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate(BEFORE)
    try:
        apps = executor.loader.project_state(BEFORE).apps
        user = apps.get_model("auth", "User").objects.create(username="legacy")
        conversation = apps.get_model("conversations", "Conversation").objects.create(owner_id=user.pk)
        Message = apps.get_model("conversations", "Message")
        ids = [
            Message.objects.create(conversation=conversation, role=role, content=text).pk
            for role, text in [("user", "q1"), ("assistant", "a1"), ("user", "q2")]
        ]

        executor = MigrationExecutor(connection)
        executor.migrate(AFTER)
        apps = executor.loader.project_state(AFTER).apps
        Message = apps.get_model("conversations", "Message")
        parents = [Message.objects.get(pk=pk).parent_id for pk in ids]
        assert parents == [None, ids[0], ids[1]]
        assert apps.get_model("conversations", "Conversation").objects.get().leaf_id == ids[2]
    finally:
        MigrationExecutor(connection).migrate(latest)
