"""Storm: 100 clients that send a message and leave at random moments while the reply is written.

Each client is its own user on its own conversation (clients alternate between the
server processes). It sends one long message, which the scripted model echoes word by
word (a few seconds per reply), then leaves, as a seeded RNG decides:
  close-after-send  a clean close right after the send frame, before any answer,
  close             a clean close 0..--max-hold seconds after the reply was announced,
  abort             the TCP connection dropped (no close frame) at such a moment.
The server runs with CHAT_ORPHAN_GRACE_SECONDS=--grace: a reply nobody watches
is stopped after that and saved `interrupted` with the text it had. Once every client
is gone, the database is polled (bounded) until no reply of the run is `streaming`,
then checked: no sent user message lost, every saved question answered, no reply left
`streaming`, interrupted replies with and without text, and every saved reply holding
at least the text its client saw (the echo makes each reply a prefix of its question).

Writes bench/results/storm.json; prints `storm_lost=<n>` and `storm_streaming_left=<n>`
last, once per backend.

    .venv/bin/python bench/storm.py [--backend sqlite|postgres|both] [--clients 100] [--seed 0]
"""

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter

from live import Live, add_arguments, run_backends

MODES = {"close-after-send": 0.2, "close": 0.4, "abort": 0.4}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--words", type=int, default=250, help="words per message (the echo's chunks)")
    parser.add_argument("--grace", type=float, default=2.0, help="CHAT_ORPHAN_GRACE_SECONDS of the server")
    parser.add_argument("--max-hold", type=float, default=2.0, help="most seconds a client stays after the announce")
    parser.add_argument("--settle", type=float, default=120.0, help="most seconds to wait for replies to end")
    add_arguments(parser, model="scripted")
    return parser.parse_args()


def plans(args):
    """What each client does, drawn from one seeded RNG: (start delay, mode, hold, message)."""
    rng = random.Random(args.seed)
    out = []
    for index in range(args.clients):
        words = " ".join(f"w{rng.randrange(1000)}" for _ in range(args.words))
        mode = rng.choices(list(MODES), weights=list(MODES.values()))[0]
        out.append(
            {
                "index": index,
                "delay": rng.uniform(0, 0.5),
                "mode": mode,
                "hold": round(rng.uniform(0, args.max_hold), 3),
                "content": f"[storm {index}] {words}",
            }
        )
    return out


async def client(live, plan, cookie, conversation_id):
    """Connect, send, leave as planned. Returns what the client saw."""
    import websockets

    seen = {**plan, "sent": False, "outcome": None, "reply_id": None, "text": "", "done_before_leaving": False}
    await asyncio.sleep(plan["delay"])
    index = plan["index"]
    try:
        ws = await websockets.connect(
            live.url(index, f"/ws/conversations/{conversation_id}/"),
            additional_headers=live.headers(index, cookie),
            open_timeout=60,
        )
    except (OSError, websockets.InvalidHandshake, TimeoutError) as exc:
        return {**seen, "outcome": f"connect:{type(exc).__name__}"}
    try:
        await ws.send(json.dumps({"type": "send", "content": plan["content"]}))
        seen["sent"] = True
        if plan["mode"] == "close-after-send":
            await ws.close()
            return {**seen, "outcome": "left"}
        await listen(ws, seen, plan["hold"])
    except websockets.ConnectionClosed as exc:
        return {**seen, "outcome": f"closed:{exc.rcvd.code if exc.rcvd else 'no close frame'}"}
    except TimeoutError:
        seen["outcome"] = "no announce within 60 s"
    if plan["mode"] == "abort":
        ws.transport.abort()
    else:
        await ws.close()
    return {**seen, "outcome": seen["outcome"] or "left"}


async def listen(ws, seen, hold):
    """Read frames until the reply is announced (or refused), then for `hold` seconds more, or to its end."""
    while seen["reply_id"] is None:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if frame["type"] == "error":
            seen["outcome"] = f"refused:{frame['code']}"
            return
        if frame["type"] == "message" and frame["status"] == "streaming":
            seen["reply_id"] = frame["message_id"]
    leave = time.monotonic() + hold
    while (left := leave - time.monotonic()) > 0:
        try:
            frame = json.loads(await asyncio.wait_for(ws.recv(), left))
        except TimeoutError:
            return
        if frame["type"] == "chunk" and frame["message_id"] == seen["reply_id"]:
            seen["text"] += frame["text"]
        if frame["type"] == "done" and frame["message_id"] == seen["reply_id"]:
            seen["done_before_leaving"] = True
            return


async def storm(live, users, conversations, plans_):
    return await asyncio.gather(
        *(
            client(live, plan, cookie, conversation)
            for plan, (_, cookie), conversation in zip(plans_, users, conversations)
        )
    )


def settle(conversations, seconds):
    """Wait (at most `seconds`) until no reply of the run is streaming; returns the seconds waited."""
    from conversations.models import Message

    started = time.monotonic()
    streaming = Message.objects.filter(conversation_id__in=conversations, status=Message.Status.STREAMING)
    while streaming.exists() and time.monotonic() - started < seconds:
        time.sleep(0.5)
    return round(time.monotonic() - started, 2)


def check_database(conversations, records):
    from conversations.models import Message

    messages = list(Message.objects.filter(conversation_id__in=conversations))
    questions = {m.conversation_id: m for m in messages if m.role == Message.Role.USER}
    replies = {m.pk: m for m in messages if m.role == Message.Role.ASSISTANT}
    answered = {m.conversation_id for m in replies.values()}
    by_conversation = dict(zip(conversations, records))
    interrupted = [m for m in replies.values() if m.status == Message.Status.INTERRUPTED]
    sent = [(c, r) for c, r in by_conversation.items() if r["sent"] and not (r["outcome"] or "").startswith("refused:")]
    return {
        "user_messages_sent": len(sent),
        "user_messages_lost": sum(c not in questions or questions[c].content != r["content"] for c, r in sent),
        "questions_without_reply": sum(c not in answered for c in questions),
        "reply_statuses": dict(Counter(m.status for m in replies.values())),
        "replies_streaming_left": sum(m.status == Message.Status.STREAMING for m in replies.values()),
        "interrupted_with_text": sum(bool(m.content) for m in interrupted),
        "interrupted_empty": sum(not m.content for m in interrupted),
        "replies_shorter_than_client_saw": sum(
            r["reply_id"] in replies and not replies[r["reply_id"]].content.startswith(r["text"]) for r in records
        ),
        "replies_not_a_prefix_of_question": sum(
            not questions[m.conversation_id].content.startswith(m.content)
            for m in replies.values()
            if m.conversation_id in questions
        ),
    }


def measure(args):
    with Live(args, "storm", redis_db=6, env={"CHAT_ORPHAN_GRACE_SECONDS": str(args.grace)}) as live:
        from conversations.models import Conversation

        spec = live.model()
        users = live.users(args.clients, "storm")
        conversations = [Conversation.objects.create(owner=user, model=spec).pk for user, _ in users]
        live.serve()
        live.warm_up()
        print(
            f"{args.clients} clients leaving mid-reply on {len(live.ports)} process(es), model {args.model}, "
            f"grace {args.grace} s",
            flush=True,
        )
        plans_ = plans(args)
        started = time.monotonic()
        records = asyncio.run(storm(live, users, conversations, plans_))
        gone = time.monotonic() - started
        waited = settle(conversations, args.grace + args.settle)
        database = check_database(conversations, records)
        print(json.dumps(database), flush=True)
        return {
            "what": f"{args.clients} users each send a {args.words}-word message and leave at a random moment "
            f"(seed {args.seed}); the database checked once no reply streams (or after "
            f"{args.grace + args.settle} s)",
            **live.describe(),
            "clients": args.clients,
            "seed": args.seed,
            "words": args.words,
            "orphan_grace_s": args.grace,
            "max_hold_s": args.max_hold,
            "modes": dict(Counter(p["mode"] for p in plans_)),
            "client_outcomes": dict(Counter(r["outcome"] for r in records)),
            "replies_done_before_client_left": sum(r["done_before_leaving"] for r in records),
            "seconds_until_all_left": round(gone, 2),
            "seconds_until_no_reply_streaming": waited,
            "db_check": database,
            "lost": database["user_messages_lost"],
            "streaming_left": database["replies_streaming_left"],
            "server_tracebacks": live.tracebacks(),
        }


def key_lines(figures):
    check = figures["db_check"]
    return [
        f"statuses={json.dumps(check['reply_statuses'])} interrupted_with_text={check['interrupted_with_text']} "
        f"interrupted_empty={check['interrupted_empty']} shorter_than_seen={check['replies_shorter_than_client_saw']} "
        f"unanswered={check['questions_without_reply']} tracebacks={figures['server_tracebacks']['count']}",
        f"storm_lost={figures['lost']}",
        f"storm_streaming_left={figures['streaming_left']}",
    ]


if __name__ == "__main__":
    sys.exit(run_backends(parse_args(), "storm", measure, key_lines))
