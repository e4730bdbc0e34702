"""A reply's parts, as it streams: what a model that thinks first wrote before answering (its reasoning),
and its answer (and its tool calls, which never reach the answer's text).

A model's tokenizer may carry a *response template* (transformers' chat response parsing): where each
part of an assistant message begins and ends in the model's output (`<think>…</think>` for Qwen3, a
channel for gpt-oss…). `Parts` runs transformers' streaming `ResponseParser` over the text as it is
decoded (`tokenizer.get_response_parser`, primed with the prompt, since a template may open the
reasoning itself) and hands back `(part, text)` pieces; `finish()` gives the parsed message, whose
fields are the stored reasoning and answer. A model without a template has one part, the answer.

Which template a model gets (its tokenizer's own, TRL's for a chat template TRL knows, or none) is
decided when it is loaded: backends/loading.py `attach_response_template`.
"""

import json
import logging
import secrets

log = logging.getLogger(__name__)

REASONING, ANSWER, TOOL_CALLS = "reasoning", "answer", "tool_calls"
# The response templates' field names for each part (Qwen3, DeepSeek-R1: reasoning_content; gpt-oss,
# LFM2: thinking).
FIELDS = {"reasoning_content": REASONING, "thinking": REASONING, "content": ANSWER, "tool_calls": TOOL_CALLS}


class Parts:
    """The parts of one reply, fed its text as the detokenizer releases it."""

    def __init__(self, tokenizer, prompt_text):
        self.parser = tokenizer.get_response_parser(prefix=prompt_text)
        fields = tokenizer.response_template.get("fields", {})
        self.fields = set(fields)
        calls = [field for name, field in fields.items() if FIELDS.get(name) == TOOL_CALLS]
        self.call_tag = calls[0].get("open", "") if calls else ""  # where a call's text begins: `<tool_call>`
        self.region = None  # the part being written now (a template may open one in the prompt: `<think>`)
        self.closed = {}  # field -> value of each part the parser closed (a list for repeating ones)
        self.open_text = []  # what the part being written has so far
        self.written = ""  # the reply's whole text, as fed
        self.unparsed = False  # a tool call did not parse: the rest of the reply is answer text as written
        self._follow(self.parser.initial_events)

    @property
    def can_reason(self):
        """Whether the template has a part for reasoning."""
        return any(FIELDS.get(name) == REASONING for name in self.fields)

    @property
    def reasoning(self):
        """True while the model writes its reasoning."""
        return self.region == REASONING

    def feed(self, text):
        """[(part, text)] that `text` adds: reasoning and answer text (tool calls' raw text is not handed out,
        unless a call does not parse: then it is the answer's, as written)."""
        if not text:
            return []
        self.written += text
        if self.unparsed:
            return [(ANSWER, text)]
        try:
            return self._follow(self.parser.feed(text))
        except ValueError as exc:  # a tool call closed that is not one (no JSON, say)
            return self._unparsed(exc)

    def finish(self):
        """The whole message, parsed: {"reasoning": str, "answer": str, "tool_calls": list}, each part there when
        written, and [(part, text)] still to hand out. A reply cut mid-part keeps that part as far as it went;
        a tool call that does not parse (cut, or not JSON) is handed out as answer text, with a warning."""
        if self.unparsed:
            return self._message(self.closed), []
        try:
            message, events = self.parser.finalize()
        except ValueError as exc:  # the part being written cannot be parsed as it stands
            message, events = dict(self.closed), []
            if self.region in (REASONING, ANSWER):
                message[_field_of(self.region)] = "".join(self.open_text).strip()
            elif self.region == TOOL_CALLS:
                return self._message(message), self._unparsed(exc)
        return self._message(message), self._follow(events)

    def _unparsed(self, exc):
        """A tool call that does not parse: its text, from its opening tag on, becomes the answer's."""
        at = self.written.rfind(self.call_tag) if self.call_tag else -1
        log.warning("a tool call the model wrote did not parse; it is kept as the answer's text (%s)", exc)
        self.unparsed, self.region = True, ANSWER
        return [(ANSWER, self.written[at:] if at >= 0 else "".join(self.open_text))]

    @staticmethod
    def _message(message):
        return {FIELDS[name]: value for name, value in message.items() if name in FIELDS and value}

    def _follow(self, events):
        pieces = []
        for event in events:
            field = event.get("field")
            if event["type"] == "region_open":
                self.region, self.open_text = FIELDS.get(field), []
            elif event["type"] == "region_close":
                self._close(field, event.get("value"))
            elif event.get("text"):
                self.open_text.append(event["text"])
                if FIELDS.get(field) in (REASONING, ANSWER):
                    pieces.append((FIELDS[field], event["text"]))
        return pieces

    def _close(self, field, value):
        if FIELDS.get(field) == TOOL_CALLS:
            self.closed.setdefault(field, []).append(value)
        else:
            self.closed[field] = value
        self.region, self.open_text = None, []


def _field_of(part):
    return "reasoning_content" if part == REASONING else "content"


def openai_calls(calls):
    """Parsed tool calls ({"type": "function", "function": {"name", "arguments": {...}}}) in OpenAI's shape:
    each with an id, its arguments as a JSON string."""
    out = []
    for call in calls:
        function = call.get("function", call) if isinstance(call, dict) else {}
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            continue  # half a call (a reply cut inside it) is not a call
        arguments = function.get("arguments", {})
        out.append(
            {
                "id": "call_" + secrets.token_hex(12),
                "type": "function",
                "function": {
                    "name": function["name"],
                    "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False),
                },
            }
        )
    return out
