"""A tiny model that thinks before it answers and calls a tool, made in the test run.

A random Qwen3-architecture model (Qwen3ForCausalLM, two layers) with TRL's real `qwen3` chat template,
whose `<think>`, `<tool_call>` and `<tool_response>` are tokens of their own (as in Qwen3's tokenizer:
added, not special, so they survive decoding and the response template can find them). It is trained
for a few hundred steps on the replies below until greedy decoding says them back:

- "what is two plus two?" → a think block, then "four."
- the same with thinking switched off (`enable_thinking=False`: the template writes an empty think block
  into the prompt) → "four." straight away
- "what is the weather in paris?" with the `get_weather` tool → a `<tool_call>` and nothing else
- that call's result → a think block, then "it is sunny in paris."

torch and transformers load when the model is made (once a session, `thinking_model_dir`).
"""

import json

SYSTEM_WORDS = "you are a careful assistant."
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "the weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "the city"}},
            "required": ["city"],
        },
    },
}
QUESTION = "what is two plus two?"
REASONING = "two and two make four."
ANSWER = "four."
WEATHER_QUESTION = "what is the weather in paris?"
CALL = {"name": "get_weather", "arguments": {"city": "paris"}}
TOOL_RESULT = "sunny, 21 degrees"
WEATHER_REASONING = "the tool says it is sunny."
WEATHER_ANSWER = "it is sunny in paris."

# (messages, tools, enable_thinking, the reply the model learns to write after the prompt)
EXAMPLES = [
    ([{"role": "user", "content": QUESTION}], None, None, f"<think>\n{REASONING}\n</think>\n\n{ANSWER}"),
    ([{"role": "user", "content": QUESTION}], None, False, ANSWER),
    (
        [{"role": "user", "content": WEATHER_QUESTION}],
        [WEATHER_TOOL],
        None,
        f"<tool_call>\n{json.dumps(CALL)}\n</tool_call>",
    ),
    (
        [
            {"role": "user", "content": WEATHER_QUESTION},
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": CALL}]},
            {"role": "tool", "content": TOOL_RESULT},
        ],
        [WEATHER_TOOL],
        None,
        f"<think>\n{WEATHER_REASONING}\n</think>\n\n{WEATHER_ANSWER}",
    ),
]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ADDED = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]


def render(tokenizer, messages, tools=None, enable_thinking=None):
    extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True, **extra)


def make_tokenizer():
    """A byte-level BPE tokenizer trained on the rendered examples, with Qwen3's special and added tokens and
    TRL's qwen3 chat template."""
    from tokenizers import AddedToken, ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast
    from trl.chat_template_utils import qwen3_chat_template

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.add_special_tokens(SPECIAL)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = qwen3_chat_template
    texts = [render(tokenizer, m, t, e) + reply for m, t, e, reply in EXAMPLES] * 4
    bpe.train_from_iterator(texts, vocab_size=600, min_frequency=2, special_tokens=SPECIAL)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in ADDED])
    tokenizer.chat_template = qwen3_chat_template
    tokenizer.model_max_length = 1 << 30
    return tokenizer


def make_thinking_model(folder, steps=300):
    """Train the tiny Qwen3 on EXAMPLES (loss on the replies only) and save it, tokenizer included."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen3ForCausalLM(config)
    rows = []
    for messages, tools, think, reply in EXAMPLES:
        prompt = tokenizer(render(tokenizer, messages, tools, think), add_special_tokens=False)["input_ids"]
        answer = tokenizer(reply + "<|im_end|>", add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + answer])
        labels = torch.tensor([[-100] * len(prompt) + answer])
        rows.append((ids, labels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = sum(model(input_ids=ids, labels=labels).loss for ids, labels in rows) / len(rows)
        loss.backward()
        optimizer.step()
    model.eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
