"""A turn: what the user asked for, saved before any reply is generated.

`prepare(user, conversation_id, turn, saved)` checks that the conversation is the user's
and idle and that the user is under their reply cap and quotas (quotas.py), then saves what the turn adds (the
question, an edited question, a comparison) and the streaming reply row(s) in one
transaction, and renders what the conversation's pages must see. It runs in the
database thread. If the database goes away half way, the caller may call it again with
the same `saved`: a turn already committed is not saved twice, only rendered.
"""

from dataclasses import dataclass, field

from django.db import transaction

from conversations.access import limits
from conversations.chat.frames import message_frames, path_frame
from conversations.errors import ChatError, SessionEnded
from conversations.forms import ModelChoiceForm
from conversations.inspection.tokens import branch_start
from conversations.models import Conversation, Message
from modelhub import api
from modelhub.api import InvalidOptions, ModelhubError, ModelNotFound

BUSY = limits.BUSY


@dataclass
class Turn:
    """What the user asked for: a new message, an edited question, another answer, or more of one."""

    kind: str  # send, edit, regenerate, continue, compare, alternative, call (an API call: a new conversation)
    content: str = ""
    message_id: int | None = None
    overrides: dict = field(default_factory=dict)
    models: list = field(default_factory=list)  # compare: two model-choice keys ("m3", "m3-a7")
    call: object = None  # call: what openai_api.requests parsed (key, spec, adapter, messages)
    at: tuple | None = None  # alternative: (token index, alternative index) in the answer's token probabilities


@dataclass
class Plan:
    """A reply to start: its streaming row, the model to write it and the history it sees."""

    reply: Message
    spec: object
    adapter: object
    history: list


def prepare(user, conversation_id, turn, saved, guard=None):
    """Save the turn once and render it: (conversation, [Plan], frames). Raises ChatError.

    `guard()`, if given, must hold first (the socket's session, read in the same trip)."""
    if guard is not None and not guard():
        raise SessionEnded()
    if "turn" not in saved:
        with transaction.atomic():
            saved["turn"] = _save(user, conversation_id, turn)
    conversation, plans, new_messages = saved["turn"]
    if turn.kind == "call":  # a new conversation: no page shows it yet
        return conversation, plans, []
    frames = [{"type": "title", "title": conversation.title}]
    if turn.kind in (
        "edit",
        "regenerate",
        "compare",
        "alternative",
    ):  # a new branch: every watcher redraws the active path
        frames.append(path_frame(conversation))
    else:
        frames += message_frames(new_messages)
    return conversation, plans, frames


def _save(user, conversation_id, turn):
    if turn.kind == "call":
        return _save_call(user, turn)
    if turn.kind == "compare":
        return _save_comparison(user, conversation_id, turn)
    return _save_turn(user, conversation_id, turn)


def _idle_conversation(user, conversation_id, replies=1):
    """The user's conversation, locked with its owner's row, if it may start `replies` new replies now; else a
    ChatError."""
    conversation = (
        Conversation.objects.for_user(user)
        .select_for_update(of=("self", "owner"))
        .select_related("model", "owner")
        .filter(pk=conversation_id)
        .first()
    )
    if conversation is None:
        raise ChatError("unknown_conversation", "This conversation does not exist (it may have been deleted).")
    limits.admit(user, replies, conversation.pk)
    return conversation


def _save_call(user, turn):
    """An API call kept as a new conversation of the key's user: its messages, then the streaming reply."""
    call = turn.call
    limits.lock_user(user)
    limits.admit(user, key=call.key)
    try:
        options = api.options_for(call.spec, turn.overrides).as_dict()
    except InvalidOptions as exc:
        raise ChatError(exc.code, exc.message) from exc
    structure = {name: value for name, value in turn.overrides.items() if name in api.STRUCTURE_OPTIONS}
    conversation = call.key.start_conversation(call.spec, call.adapter, call.messages, structure)
    reply = conversation.start_reply(call.spec, options, call.adapter)
    return conversation, [Plan(reply, call.spec, call.adapter, conversation.history(upto=reply))], []


def _save_comparison(user, conversation_id, turn):
    """The question and two streaming answers from two model choices, side by side."""
    conversation = _idle_conversation(user, conversation_id, replies=2)
    choices = ModelChoiceForm(user).options
    if len(turn.models) != 2 or any(not isinstance(key, str) or key not in choices for key in turn.models):
        raise ChatError("unknown_model", "Pick two of the listed models to compare.")
    sides = []
    for key in turn.models:
        spec, adapter, _ = choices[key]
        try:
            options = api.options_for(spec, {**conversation.options, **turn.overrides}).as_dict()
        except InvalidOptions as exc:
            raise ChatError(exc.code, exc.message) from exc
        sides.append((spec, adapter, options))
    comparison = conversation.start_comparison(turn.content, *sides)
    if comparison is None:
        raise ChatError("busy", BUSY)
    plans = [
        Plan(reply, spec, adapter, conversation.history(upto=reply))
        for reply, (spec, adapter, _) in zip((comparison.left, comparison.right), sides)
    ]
    return conversation, plans, []


def _save_turn(user, conversation_id, turn):
    """Save what the turn adds and the streaming reply row."""
    conversation = _idle_conversation(user, conversation_id)
    target = None
    if turn.kind != "send":
        role = Message.Role.USER if turn.kind == "edit" else Message.Role.ASSISTANT
        target = conversation.messages.filter(pk=turn.message_id, role=role).first()
        if target is None:
            raise ChatError("unknown_message", f"There is no {role} message {turn.message_id!r} here to {turn.kind}.")
        if turn.kind == "continue" and target.finish_reason != "length":
            raise ChatError("cannot_continue", "Only an answer cut by the token limit can be continued.")
        if turn.kind == "continue" and target.reasoning and not target.content:
            raise ChatError(
                "cannot_continue",
                "This reply was cut while the model was still thinking, and its chat template would close the "
                "thought before going on: regenerate it (a higher token limit in the settings gives it room).",
            )
        begins = branch_start(target, *turn.at) if turn.kind == "alternative" else None
    try:
        spec, adapter = conversation.model_for(user)
        if spec is None:
            raise ModelNotFound("no model is registered that you may use")
        options = api.options_for(spec, {**conversation.options, **turn.overrides}).as_dict()
    except InvalidOptions as exc:  # the user's input is refused before anything is saved
        raise ChatError(exc.code, exc.message) from exc
    except ModelhubError as exc:  # no model at all: keep the question, store the failure
        if turn.kind != "send":
            raise ChatError(exc.code, exc.message) from exc
        user_message = conversation.add_user_message(turn.content)
        return conversation, [], [user_message, conversation.add_failed_reply(exc.message)]
    user_message = None
    if turn.kind == "send":
        user_message = conversation.add_user_message(turn.content)
    elif turn.kind == "edit":
        user_message = conversation.edit(target, turn.content)
    if turn.kind == "continue":
        reply = conversation.resume_reply(target, spec, options)
    elif turn.kind == "alternative":  # a sibling that begins with the tokens up to the alternative
        reply = conversation.start_reply(spec, options, adapter, parent=target.parent, locked=True, begins=begins)
    else:
        parent = target.parent if turn.kind == "regenerate" else None
        reply = conversation.start_reply(spec, options, adapter, parent=parent, locked=True)
    if reply is None:
        raise ChatError("busy", BUSY)
    new_messages = [message for message in (user_message, reply) if message is not None]
    return conversation, [Plan(reply, spec, adapter, conversation.history(upto=reply))], new_messages
