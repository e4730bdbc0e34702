"""Feedback to export and what a snapshot holds: answered questions made through the model methods
(`ask`), and the rows of a snapshot's train and eval files."""

import json

from modelhub.models import ModelSpec


def spec(name):
    return ModelSpec.objects.get_or_create(name=name, defaults={"source": "-", "backend": "scripted"})[0]


def ask(conversation, question, text, model="base", parent=None):
    """A question (unless `parent` is given: then another answer to it) and a finished answer."""
    if parent is None:
        parent = conversation.add_user_message(question)
    reply = conversation.start_reply(spec(model), {}, parent=parent)
    reply.finish("complete", text)
    return reply


def rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def all_rows(snapshot):
    return rows(snapshot.train_path) + rows(snapshot.eval_path)
