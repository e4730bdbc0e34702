"""Responses in OpenAI's exact shapes: a completion, its streamed chunks, usage, the model list.

`finish_reason` is OpenAI's: "stop" (the model ended its turn or met a stop sequence),
"length" (the token limit), "tool_calls" (it called tools); a reply stopped because its client went
away is never sent. A model's reasoning goes apart from its answer, as `reasoning` (vLLM's field).
"""

import json
import secrets
import time


def new_id():
    return "chatcmpl-" + secrets.token_hex(12)


def usage(prompt_tokens, completion_tokens):
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def finish_reason(reason):
    return reason if reason in ("length", "tool_calls") else "stop"


def message(text, reasoning="", tool_calls=()):
    """The assistant message: its answer, its reasoning apart (`reasoning`, as vLLM names it), its tool calls."""
    out = {"role": "assistant", "content": text if text or not tool_calls else None}
    if reasoning:
        out["reasoning"] = reasoning
    if tool_calls:
        out["tool_calls"] = list(tool_calls)
    return out


class Completion:
    """The ids and times shared by one call's response or chunks."""

    def __init__(self, model, include_usage=False):
        self.id, self.created, self.model = new_id(), int(time.time()), model
        self.include_usage = include_usage

    def _head(self, kind):
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, text, reason, prompt_tokens, completion_tokens, reasoning="", tool_calls=()):
        """The non-streamed response."""
        return {
            **self._head("chat.completion"),
            "choices": [
                {
                    "index": 0,
                    "message": message(text, reasoning, tool_calls),
                    "logprobs": None,
                    "finish_reason": finish_reason(reason),
                }
            ],
            "usage": usage(prompt_tokens, completion_tokens),
        }

    def _chunk(self, delta, reason=None):
        chunk = {
            **self._head("chat.completion.chunk"),
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return event(chunk)

    def first(self):
        return self._chunk({"role": "assistant", "content": ""})

    def text(self, text, reasoning=False):
        return self._chunk({"reasoning": text} if reasoning else {"content": text})

    def calls(self, tool_calls):
        """The reply's tool calls, each whole in one delta (OpenAI's tool-call delta shape, with its index)."""
        return "".join(self._chunk({"tool_calls": [{"index": i, **call}]}) for i, call in enumerate(tool_calls))

    def last(self, reason, prompt_tokens, completion_tokens):
        """The chunk with the finish reason, the usage chunk if asked for, and the end of the stream."""
        out = self._chunk({}, finish_reason(reason))
        if self.include_usage:
            out += event(
                {**self._head("chat.completion.chunk"), "choices": [], "usage": usage(prompt_tokens, completion_tokens)}
            )
        return out + "data: [DONE]\n\n"


def event(data):
    """One server-sent event."""
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


def model_list(names, created):
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": created[name], "owned_by": "chatsite"} for name in names],
    }
