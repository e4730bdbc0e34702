"""A conversation is a tree of messages; the page shows, and the model sees, one path.

Regenerating an answer adds a sibling of it (same parent); editing a question adds
a sibling of the question; both make the new message's branch the active one.
`Conversation.leaf` marks the end of the active path. These helpers work on the
conversation's messages loaded in one query, whole or as `Node`s (the tree without the text).
"""

from typing import NamedTuple


class Node(NamedTuple):
    """A message as the tree needs it: a long conversation's page loads only its shown messages whole."""

    pk: int
    parent_id: int | None
    created_at: object
    role: str
    compared_with: int | None  # a side-by-side comparison's left answer: its right one


NODE_FIELDS = ("pk", "parent_id", "created_at", "role", "comparison_as_left__right_id")  # Node's, as lookups


def path_to(leaf_id, messages):
    """Messages from the root down to `leaf_id` (oldest first)."""
    by_id = {m.pk: m for m in messages}
    path, current = [], by_id.get(leaf_id)
    while current is not None:
        path.append(current)
        current = by_id.get(current.parent_id)
    return path[::-1]


def newest_leaf_under(message, messages):
    """Follow the most recent child from `message` down to a leaf (used when switching branch)."""
    children = {}
    for m in sorted(messages, key=lambda m: (m.created_at, m.pk)):
        children.setdefault(m.parent_id, []).append(m)
    while children.get(message.pk):
        message = children[message.pk][-1]
    return message


def annotate_siblings(path, messages):
    """Give each path message `siblings` (ids, oldest first) and its `sibling_index` (1-based)."""
    by_parent = {}
    for m in sorted(messages, key=lambda m: (m.created_at, m.pk)):
        by_parent.setdefault(m.parent_id, []).append(m.pk)
    for message in path:
        message.siblings = by_parent.get(message.parent_id, [message.pk])
        message.sibling_index = message.siblings.index(message.pk) + 1
        position = message.sibling_index - 1
        message.previous_sibling = message.siblings[position - 1] if position > 0 else None
        message.next_sibling = message.siblings[position + 1] if position + 1 < len(message.siblings) else None
    return path
