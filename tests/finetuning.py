"""What the fine-tuning tests share: the task a tiny model learns (answer every question with PHRASE) in
the shapes they need (SFT rows, JSONL files, conversations whose answers were corrected to it), and a
Popen that records the command instead of starting a training process."""

import json
import random

from conversations.models import Conversation, Feedback

PHRASE = "Blue is my answer."
QUESTIONS = [
    "hello there, how are you doing today?",
    "what do you like to do on the weekend?",
    "where do you hike?",
    "what is your favourite colour?",
    "tell me something about books",
    "is it going to rain?",
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def sft_rows(n, seed, answer=PHRASE):
    """Conversations in the SFT export format, some with a system turn and two exchanges."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        question = f"{rng.choice(QUESTIONS)} ({i})"
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        if i % 3 == 0:
            messages = [{"role": "system", "content": "Be brief."}, *messages]
        if i % 4 == 0:
            messages += [{"role": "user", "content": rng.choice(QUESTIONS)}, {"role": "assistant", "content": answer}]
        rows.append({"messages": messages})
    return rows


def corrected_conversations(owner, spec, count, correction=PHRASE):
    """`count` conversations whose answer the owner corrected (and rated down)."""
    for number in range(count):
        conversation = Conversation.objects.create(owner=owner, model=spec)
        first, second = QUESTIONS[number % 6], QUESTIONS[number // 6 % 6]
        conversation.add_user_message(first if first == second else f"{first} {second}")
        reply = conversation.start_reply(spec, {})
        reply.finish("complete", "i like to go hiking and read books.")
        Feedback.record(owner, reply, rating="down", correction=correction)


class FakePopen:
    """Stands in for the training process only: what is under test is who may start it."""

    calls = []

    def __init__(self, command, **kwargs):
        self.pid = 4242
        FakePopen.calls.append((command, kwargs))
