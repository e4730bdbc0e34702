"""Load: 50 users chat at once, 5 messages each, against a live server on both backends.

Every client is its own user (its own login session, made in the database) on its own
socket and conversation; all connect, then each sends its messages one after another,
the next as soon as the last reply's `done` frame arrives. Each server process answers
one warm-up turn first (it loads the model then), outside the figures. Clients alternate between the
server processes (two on PostgreSQL + Redis). After the run the database is checked:
every user message and reply saved, reply statuses, and each saved reply's text
against the text its client assembled from the chunks.

Reported per backend: replies saved complete out of messages sent, errors (anything
but a complete reply; refusals by the per-user reply cap, `too_many_replies`, are
counted apart), time to first token (send frame to first chunk) p50/p95, chunk
offsets that did not follow on. Writes bench/results/load.json; prints
`load_saved=<complete>/<sent>` and `load_errors=<n>` last, once per backend.

    .venv/bin/python bench/load.py [--backend sqlite|postgres|both] [--clients 50] [--messages 5]
                                   [--model builtin|scripted] [--new-tokens 16]
"""

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter

from live import Live, add_arguments, latency, run_backends, turn

PROMPTS = [
    "Hello! What did you do this weekend?",
    "Do you have any pets?",
    "What kind of music do you like?",
    "I just got back from a trip to the mountains.",
    "What's your favourite food?",
    "How was your day?",
]
CAP = "too_many_replies"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=16, help="max_new_tokens of every reply")
    parser.add_argument("--reply-timeout", type=float, default=120.0, help="seconds one reply may take")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="bound on the whole run")
    parser.add_argument("--seed", type=int, default=0)
    add_arguments(parser, model="builtin")
    return parser.parse_args()


async def client(live, index, cookie, conversation_id, args, ready, go, deadline):
    """One user: connect, wait for everyone, then send its messages in turn. Returns one record per message."""
    import websockets

    rng = random.Random(args.seed * 1000 + index)
    records = []
    options = {"max_new_tokens": args.new_tokens}
    try:
        async with websockets.connect(
            live.url(index, f"/ws/conversations/{conversation_id}/"),
            additional_headers=live.headers(index, cookie),
            open_timeout=60,
        ) as ws:
            ready.release()
            await go.wait()
            for number in range(args.messages):
                content = f"[load {index}.{number}] {rng.choice(PROMPTS)}"
                timeout = min(args.reply_timeout, deadline - time.monotonic())
                try:
                    seen = await turn(ws, content, options, timeout)
                except TimeoutError:
                    seen = {"outcome": "timeout", "ttft": None, "reply_id": None, "text": ""}
                except websockets.ConnectionClosed as exc:  # the rest of this client's messages are not sent
                    code = exc.rcvd.code if exc.rcvd else "no close frame"
                    seen = {"outcome": f"closed:{code}", "ttft": None, "reply_id": None, "text": ""}
                records.append({**seen, "content": content})
                if seen["outcome"].startswith("closed:"):
                    break
    except (OSError, websockets.InvalidHandshake, TimeoutError) as exc:
        records.append({"outcome": f"connect:{type(exc).__name__}", "ttft": None, "reply_id": None, "content": None})
    finally:
        ready.release()  # a client that failed to connect must not hold the others back
    return records


async def run_clients(live, users, conversations, args):
    ready, go = asyncio.Semaphore(0), asyncio.Event()
    deadline = time.monotonic() + args.max_seconds
    tasks = [
        asyncio.ensure_future(client(live, i, cookie, conversations[i], args, ready, go, deadline))
        for i, (_, cookie) in enumerate(users)
    ]
    for _ in tasks:
        await ready.acquire()
    started = time.perf_counter()
    go.set()
    results = await asyncio.gather(*tasks)
    return results, time.perf_counter() - started


def check_database(conversations, records):
    """What the database holds for the run's conversations, and how it matches what clients saw."""
    from conversations.models import Message

    messages = Message.objects.filter(conversation_id__in=conversations)
    user_contents = set(messages.filter(role=Message.Role.USER).values_list("content", flat=True))
    replies = {m.pk: m for m in messages.filter(role=Message.Role.ASSISTANT)}
    sent = [r for r in records if r["content"] is not None]
    accepted = [r for r in sent if not r["outcome"].startswith("refused:")]
    complete = [
        r for r in records if r["reply_id"] in replies and replies[r["reply_id"]].status == Message.Status.COMPLETE
    ]
    differs = [
        {"reply_id": r["reply_id"], "saved": replies[r["reply_id"]].content, "streamed": r["text"]}
        for r in complete
        if replies[r["reply_id"]].content != r["text"]
    ]
    return {
        "user_messages_saved": len(user_contents),
        "user_messages_missing": sum(r["content"] not in user_contents for r in accepted),
        "user_messages_saved_though_refused": sum(r["content"] in user_contents for r in sent if r not in accepted),
        "reply_statuses": dict(Counter(m.status for m in replies.values())),
        "replies_complete": sum(m.status == Message.Status.COMPLETE for m in replies.values()),
        "replies_complete_empty": sum(m.status == Message.Status.COMPLETE and not m.content for m in replies.values()),
        "saved_text_differs_from_streamed": len(differs),
        "differences": differs[:5],
    }


def measure(args):
    with Live(args, "load", redis_db=5) as live:
        from conversations.models import Conversation

        spec = live.model()
        users = live.users(args.clients, "load")
        conversations = [Conversation.objects.create(owner=user, model=spec).pk for user, _ in users]
        live.serve()
        live.warm_up()
        print(
            f"{args.clients} clients x {args.messages} messages on {len(live.ports)} process(es), model {args.model}",
            flush=True,
        )
        results, wall = asyncio.run(run_clients(live, users, conversations, args))
        records = [r for result in results for r in result]
        outcomes = Counter(r["outcome"] for r in records)
        database = check_database(conversations, records)
        sent = sum(r["content"] is not None for r in records)
        errors = sum(n for outcome, n in outcomes.items() if outcome not in ("complete", f"refused:{CAP}"))
        return {
            "what": f"{args.clients} users at once, one socket and conversation each, {args.messages} messages "
            "each in turn; the database checked after",
            **live.describe(),
            "clients": args.clients,
            "messages_per_client": args.messages,
            "max_new_tokens": args.new_tokens,
            "sent": sent,
            "outcomes": dict(outcomes),
            "refused_by_user_cap": outcomes[f"refused:{CAP}"],
            "errors": errors,
            "saved_complete": database["replies_complete"],
            "ttft": latency([r["ttft"] for r in records if r["ttft"] is not None]),
            "chunk_offset_gaps": sum(r.get("offset_gaps", 0) for r in records),
            "db_check": database,
            "wall_s": round(wall, 2),
            "replies_per_s": round(outcomes["complete"] / wall, 2),
            "server_tracebacks": live.tracebacks(),
        }


def key_lines(figures):
    return [
        f"ttft_p50_ms={figures['ttft']['p50_ms']} ttft_p95_ms={figures['ttft']['p95_ms']} "
        f"refused_by_cap={figures['refused_by_user_cap']} outcomes={json.dumps(figures['outcomes'])}",
        f"chunk_offset_gaps={figures['chunk_offset_gaps']} "
        f"saved_text_differs_from_streamed={figures['db_check']['saved_text_differs_from_streamed']} "
        f"server_tracebacks={figures['server_tracebacks']['count']}",
        f"load_saved={figures['saved_complete']}/{figures['sent']}",
        f"load_errors={figures['errors']}",
    ]


if __name__ == "__main__":
    sys.exit(run_backends(parse_args(), "load", measure, key_lines))
