"""What a reply must look like, when its caller says: tools it may call and how, a JSON answer of a given
schema. Checked before anything runs (`problems`), and enforced while it is written by a grammar.

The grammar library is llguidance (Microsoft's; the engine behind guidance, also used by vLLM and
SGLang): a 3 MB wheel with no dependencies that compiles a JSON schema or a Lark grammar lazily, in
microseconds per token, and computes each row's allowed tokens as a bitmask. xgrammar pulls triton and
a CUDA-first build; outlines-core compiles a whole regex index up front, slow for large schemas.

A constrained row's logits are masked before it samples (model_runner.py), in the same step as every
other row: rows without a constraint are not touched. The grammar covers the whole reply:

- an optional think block first, for a model that reasons (`<think>…</think>`: bounded, so it cannot
  spend the whole reply there), unless thinking is off;
- then, for `tool_choice: required` (or a named function): one or more `<tool_call>{json}</tool_call>`
  blocks whose JSON is `{"name": <a tool's name>, "arguments": <its parameters' schema>}` — the
  Hermes/Qwen format, the one chat templates that render `tools` with `<tool_call>` expect;
- for `response_format` `json_object` or `json_schema`: the JSON itself.

`tool_choice: auto` needs no grammar: the model may answer or call, and the response template parses
what it wrote (parts.py).
"""

import concurrent.futures
import functools
import json
import re

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CHOICES = ("auto", "none", "required")
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
COMPACT = {"whitespace_flexible": False}  # one way to write the JSON: no runs of blanks between its tokens


def problems(tools, tool_choice, response_format):
    """{field: what is wrong} for a request's tools, tool_choice and response_format; empty when all fit
    (the schemas compile)."""
    found = {}
    names = []
    if tools is not None and not isinstance(tools, (list, tuple)):
        return {"tools": "tools must be a list of function tools"}
    for index, tool in enumerate(tools or ()):
        where = f"tools[{index}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            found[where] = 'each tool must be {"type": "function", "function": {"name": …}}'
        elif not isinstance(function.get("name"), str) or not TOOL_NAME.match(function["name"]):
            found[f"{where}.function.name"] = "a tool needs a name of 1 to 64 letters, digits, _ or -"
        elif function["name"] in names:
            found[f"{where}.function.name"] = f"two tools are named {function['name']!r}"
        elif not isinstance(function.get("parameters", {}), dict):
            found[f"{where}.function.parameters"] = "a tool's parameters must be a JSON schema object"
        else:
            names.append(function["name"])
    if found:
        return found
    named = chosen_name(tool_choice)
    if tool_choice not in CHOICES and named is None:
        found["tool_choice"] = 'tool_choice must be "auto", "none", "required" or {"type": "function", …}'
    elif (tool_choice == "required" or named) and not names:
        found["tool_choice"] = "tool_choice asks for a tool call, but no tools are given"
    elif named is not None and named not in names:
        found["tool_choice"] = f"tool_choice names {named!r}, which is not one of the tools"
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if response_format is not None and kind not in ("text", "json_object", "json_schema"):
        found["response_format"] = 'response_format must be {"type": "text" | "json_object" | "json_schema"}'
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            found["response_format.json_schema"] = 'json_schema must be {"name": …, "schema": {…}}'
    if found:
        return found
    for field, lark in _grammars(tools, tool_choice, response_format):
        for tag in (CALL_OPEN, CALL_CLOSE):
            lark = lark.replace(f"TAG{tag}", json.dumps(tag))
        if error := compile_error(lark):
            found[field] = f"the grammar library cannot compile it: {error}"
    return found


def chosen_name(tool_choice):
    """The function a `{"type": "function", "function": {"name": …}}` tool choice names, else None."""
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        function = tool_choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return function["name"]
    return None


def lark_for(options, think=False, think_tokens=0, tokens=None):
    """The Lark grammar a reply with these options must follow, or None (unconstrained). `think`: True,
    the model may reason first, in a `<think>` block of at most `think_tokens` tokens; "open": its
    template opened that block in the prompt, so the reply begins inside it. `tokens`: {tag: token id}
    for the tags (`<think>`, `<tool_call>`…) that are tokens of their own in the model's vocabulary: the
    grammar names those tokens, as the model writes them, rather than their letters."""
    grammars = list(_grammars(options.tools, options.tool_choice, options.response_format, options))
    if not grammars:
        return None
    body = grammars[0][1]
    if think:
        thought = f"thought[max_tokens={max(think_tokens, 1)}]: /(.|\\n)*/\n"
        first = "thought TAG</think> /\\n{0,2}/" if think == "open" else "(TAG<think> thought TAG</think> /\\n{0,2}/)?"
        body = body.replace("start:", f"start: {first}", 1) + thought
    for tag in (CALL_OPEN, CALL_CLOSE, "<think>", "</think>"):
        token = (tokens or {}).get(tag)
        body = body.replace(f"TAG{tag}", f"<[{token}]>" if token is not None else json.dumps(tag))
    return body


def tag_tokens(tokenizer):
    """{tag: id} of the grammar's tags that are one token of the tokenizer's own."""
    found = {}
    for tag in (CALL_OPEN, CALL_CLOSE, "<think>", "</think>"):
        ids = tokenizer.encode(tag, add_special_tokens=False)
        if len(ids) == 1:
            found[tag] = ids[0]
    return found


def _grammars(tools, tool_choice, response_format, options=None):
    """(field, Lark grammar) for what the options constrain: the tool call first, else the JSON format."""
    named = chosen_name(tool_choice)
    if tool_choice == "required" or named:
        chosen = [tool["function"] for tool in tools if named is None or tool["function"]["name"] == named]
        parallel = named is None and (options is None or options.parallel_tool_calls)
        yield "tool_choice", _calls_grammar(chosen, parallel)
        return
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        yield "response_format", _json_grammar({"type": "object"})
    elif kind == "json_schema":
        yield "response_format.json_schema.schema", _json_grammar(response_format["json_schema"].get("schema", {}))


def _json_grammar(schema):
    return f"start: %json {json.dumps({**schema, 'x-guidance': COMPACT})}\n"


def _calls_grammar(functions, parallel):
    """One (or, in parallel, several) `<tool_call>` blocks, each a call of one of `functions`."""
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": function["name"]},
                "arguments": function.get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for function in functions
    ]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    repeat = ' ("\\n" call)*' if parallel else ""
    return (
        f"start: call{repeat}\n"
        f'call: TAG{CALL_OPEN} "\\n" body "\\n" TAG{CALL_CLOSE}\n'
        f"body: %json {json.dumps({**schema, 'x-guidance': COMPACT})}\n"
    )


def compile_error(lark):
    """Why llguidance cannot compile this grammar, or None."""
    import llguidance

    try:
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
            llguidance.LLMatcher.grammar_from_lark(lark)
        )
    except (ValueError, RuntimeError) as exc:
        return str(exc)
    return ("; ".join(messages) or "invalid grammar") if is_error else None


class Constraint:
    """One reply's grammar, followed token by token: which tokens may come next, and each token taken."""

    def __init__(self, ll_tokenizer, lark):
        import llguidance

        self.matcher = llguidance.LLMatcher(ll_tokenizer, llguidance.LLMatcher.grammar_from_lark(lark))
        if self.matcher.is_error():
            raise ValueError(self.matcher.get_error())

    def fill(self, bitmask, row):
        """Write the tokens allowed next into row `row` of a batch's bitmask."""
        from llguidance.torch import fill_next_token_bitmask

        fill_next_token_bitmask(self.matcher, bitmask, row)

    def take(self, token):
        """The token sampled (always an allowed one); False if the grammar refuses it."""
        return self.matcher.consume_token(token)


@functools.cache
def _masker():
    """The thread that computes a step's masks while the model runs the step's forward pass."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelhub-grammar")


def start_masks(rows, vocab_size):
    """Begin computing the allowed tokens of the rows that follow a grammar, [(row index, Constraint)], in a
    thread of their own: llguidance works outside the GIL, so this overlaps the step's forward pass. Their
    constraints must not take a token before `.result()` (a bool tensor [rows, vocab_size]) is read.

    One thread, the rows one after another: llguidance's own pool (`fill_next_token_bitmask_par`) put more
    threads beside torch's on the cores, and the step's forward pass waited for them (bench/structured.py:
    0.84 of the unconstrained batch's speed with the pool, 0.89 without)."""
    return _masker().submit(allowed_tokens, [constraint for _, constraint in rows], vocab_size)


def allowed_tokens(constraints, vocab_size):
    """[len(constraints), vocab_size] bool: which tokens each constraint allows next."""
    import numpy
    import torch
    from llguidance.torch import allocate_token_bitmask

    bitmask = allocate_token_bitmask(len(constraints), vocab_size)
    for row, constraint in enumerate(constraints):
        constraint.fill(bitmask, row)
    # Bit j of 32-bit word w is token 32w + j: little-endian bytes, each unpacked low bit first.
    bits = numpy.unpackbits(bitmask.numpy().view(numpy.uint8), axis=1, bitorder="little")
    return torch.from_numpy(bits[:, :vocab_size].astype(bool))


def apply_masks(logits, rows, allowed):
    """Mask, in place, the logits of `rows` ([(row index, Constraint)]) to the tokens `allowed` gives them."""
    import torch

    refused = ~allowed.to(logits.device)
    first, last = rows[0][0], rows[-1][0]
    if last - first + 1 == len(rows):  # neighbouring rows (the usual case): masked where they lie
        logits[first : last + 1].masked_fill_(refused, float("-inf"))
        return
    at = torch.tensor([i for i, _ in rows], device=logits.device)
    logits[at] = logits[at].masked_fill(refused, float("-inf"))


def mask_rows(logits, rows):
    """Mask, in place, the logits of the rows that follow a grammar: [(row index, Constraint)], now."""
    apply_masks(logits, rows, allowed_tokens([constraint for _, constraint in rows], logits.shape[-1]))


def ll_tokenizer(tokenizer, vocab_size):
    """The grammar library's view of a tokenizer (made once per loaded model: it reads the whole vocabulary)."""
    import llguidance.hf

    return llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
