"""Train the built-in chat model: a byte-level BPE tokenizer and a small Llama.

The built-in model exists so that chatsite chats offline out of the box. It is
trained on the chitchat-dataset conversations (MIT licence, shipped inside its
wheel) and saved with `save_pretrained`, chat template included, so it loads
through exactly the same path as any Hub chat model.

A causal LM factorises p(text) = prod_t p(token_t | tokens_<t); training
minimises the cross-entropy of each next token. We report held-out loss in bits
per byte, which does not depend on the tokenizer:

    bpb = sum over held-out tokens of -log2 p(token) / number of held-out bytes

Special tokens (role markers, end of turn) count as one byte each, like the
newline a plain-text transcript would put there. The held-out split is chosen by
conversation (a stable hash of its id), so no turn of a validation conversation
is ever seen in training; training stops early when the held-out loss stops
improving, and the best checkpoint is the one saved.
"""

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]

# Jinja chat template stored in the tokenizer config. Each turn is
# <|role|>content<|end|>; generation starts after <|assistant|> and stops at <|end|>.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|{{ message['role'] }}|>{{ message['content'] | trim }}<|end|>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)

TRAINING_SYSTEM_PROMPT = "You are a friendly chat partner."


@dataclass
class TrainConfig:
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 704
    num_layers: int = 6
    num_heads: int = 8
    block_size: int = 512
    batch_size: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    max_steps: int = 100_000
    minutes: float = 10.0
    eval_every: int = 200
    eval_blocks: int = 48
    patience: int = 4
    val_fraction: float = 0.05
    limit_conversations: int = 0
    threads: int = 0
    seed: int = 1234
    init_from: str = ""  # continue training a saved model (its tokenizer is kept)


# --- data -------------------------------------------------------------------


def load_chitchat(limit=0):
    """Conversations from the chitchat-dataset wheel as (id, [{role, content}]) pairs.

    The first speaker of each conversation plays the user, the other the
    assistant; consecutive messages of one speaker form one turn.
    """
    import chitchat_dataset

    path = Path(chitchat_dataset.__file__).parent / "dataset.json"
    raw = json.loads(path.read_text())
    conversations = []
    for conv_id in sorted(raw):
        turns = raw[conv_id]["messages"]
        messages = []
        for index, turn in enumerate(turns):
            text = "\n".join(m["text"].strip() for m in turn if m["text"].strip())
            if text:
                messages.append({"role": "user" if index % 2 == 0 else "assistant", "content": text})
        if len(messages) >= 2:
            conversations.append((conv_id, messages))
        if limit and len(conversations) >= limit:
            break
    return conversations


def is_validation(conv_id, fraction):
    """Stable split by conversation id: the same ids are held out on every run."""
    digest = hashlib.sha256(conv_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def with_system_prompts(conversations, seed):
    """Give a third of the conversations a system turn so <|system|> is a trained token."""
    rng = random.Random(seed)
    out = []
    for conv_id, messages in conversations:
        if rng.random() < 1 / 3:
            messages = [{"role": "system", "content": TRAINING_SYSTEM_PROMPT}, *messages]
        out.append((conv_id, messages))
    return out


# --- tokenizer --------------------------------------------------------------


def train_tokenizer(texts, vocab_size):
    """A byte-level BPE tokenizer (no unknown tokens, any UTF-8 text round-trips)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        eos_token="<|end|>",
        pad_token="<|pad|>",
        additional_special_tokens=SPECIAL_TOKENS[2:],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 1 << 30
    return tokenizer


def encode_conversations(tokenizer, conversations):
    """Token ids of all conversations, concatenated, and the byte count they stand for."""
    ids, n_bytes = [], 0
    for _, messages in conversations:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        for token in SPECIAL_TOKENS:
            text = text.replace(token, "\n")
        n_bytes += len(text.encode())
    return ids, n_bytes


# --- model ------------------------------------------------------------------


def build_model(tokenizer, config: TrainConfig):
    from transformers import LlamaConfig, LlamaForCausalLM

    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.block_size,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(model_config)


def _batches(ids, block_size, batch_size, rng):
    """Random windows of block_size + 1 tokens from the packed token stream."""
    import torch

    data = torch.tensor(ids, dtype=torch.long)
    while True:
        starts = [rng.randrange(0, len(data) - block_size - 1) for _ in range(batch_size)]
        yield torch.stack([data[s : s + block_size + 1] for s in starts])


def evaluate_nll(model, ids, block_size, max_blocks=0):
    """Total next-token NLL in nats and the token count, over consecutive blocks."""
    import torch

    data = torch.tensor(ids, dtype=torch.long)
    total, count = 0.0, 0
    n_blocks = (len(data) - 1) // block_size
    if max_blocks:
        n_blocks = min(n_blocks, max_blocks)
    model.eval()
    with torch.inference_mode():
        for start in range(0, n_blocks, 8):
            rows = [
                data[b * block_size : b * block_size + block_size + 1] for b in range(start, min(n_blocks, start + 8))
            ]
            batch = torch.stack(rows)
            logits = model(input_ids=batch[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total += loss.item()
            count += batch[:, 1:].numel()
    model.train()
    return total, count


def bits_per_byte(nll_nats, n_tokens, tokens_total, bytes_total):
    """Scale a (possibly partial) NLL to the whole split, then to bits per byte."""
    return nll_nats / n_tokens * (tokens_total / bytes_total) / math.log(2)


@dataclass
class TrainResult:
    params: int
    train_tokens: int
    val_tokens: int
    val_bytes: int
    steps: int
    seconds: float
    best_step: int
    val_bpb: float
    val_loss: float
    stopped_early: bool
    history: list


@dataclass
class PreparedData:
    tokenizer: object
    train_ids: list
    val_ids: list
    val_bytes: int
    block: int


def prepare_data(config: TrainConfig, log=print, tokenizer=None):
    """Split conversations, train the tokenizer on the training split (unless given), encode both."""
    conversations = with_system_prompts(load_chitchat(config.limit_conversations), config.seed)
    train_convs = [c for c in conversations if not is_validation(c[0], config.val_fraction)]
    val_convs = [c for c in conversations if is_validation(c[0], config.val_fraction)]
    if not val_convs:  # tiny slices in tests: still hold one conversation out
        val_convs, train_convs = train_convs[-1:], train_convs[:-1]
    log(f"conversations: {len(train_convs)} train, {len(val_convs)} held out")
    if tokenizer is None:
        tokenizer = train_tokenizer((m["content"] for _, msgs in train_convs for m in msgs), config.vocab_size)
    train_ids, _ = encode_conversations(tokenizer, train_convs)
    val_ids, val_bytes = encode_conversations(tokenizer, val_convs)
    log(f"tokens: {len(train_ids)} train, {len(val_ids)} held out ({val_bytes} bytes)")
    block = min(config.block_size, len(val_ids) - 1, len(train_ids) - 2)
    return PreparedData(tokenizer, train_ids, val_ids, val_bytes, block)


class EarlyStopping:
    """Keeps the best held-out checkpoint; says stop after `patience` evaluations without a new best."""

    def __init__(self, patience):
        self.patience = patience
        self.best_bpb, self.best_step, self.best_state = float("inf"), 0, None
        self.bad_evals = 0

    def update(self, model, step, bpb):
        if bpb < self.best_bpb:
            self.best_bpb, self.best_step, self.bad_evals = bpb, step, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_evals += 1
        return self.bad_evals >= self.patience


def train(config: TrainConfig, output_dir: Path, progress=None, log=print):
    """Train tokenizer and model, keep the best held-out checkpoint, save it to output_dir."""
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    if config.init_from:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        data = prepare_data(config, log, AutoTokenizer.from_pretrained(config.init_from))
        model = AutoModelForCausalLM.from_pretrained(config.init_from, dtype=torch.float32)
        log(f"continuing from {config.init_from}")
    else:
        data = prepare_data(config, log)
        model = build_model(data.tokenizer, config)
    params = sum(p.numel() for p in model.parameters())
    log(f"model: Llama, {params / 1e6:.2f}M parameters")

    def val_bpb(max_blocks):
        nll, n = evaluate_nll(model, data.val_ids, data.block, max_blocks)
        return bits_per_byte(nll, n, len(data.val_ids), data.val_bytes), nll / n

    start = time.monotonic()
    stopper, history, step, stopped_early = _train_loop(model, data, config, val_bpb, progress, log)
    seconds = time.monotonic() - start
    if stopper.best_state is not None:
        model.load_state_dict(stopper.best_state)
    bpb, loss = val_bpb(0)
    save_model(model, data.tokenizer, output_dir, config, bpb)
    return TrainResult(
        params=params,
        train_tokens=len(data.train_ids),
        val_tokens=len(data.val_ids),
        val_bytes=data.val_bytes,
        steps=step,
        seconds=round(seconds, 1),
        best_step=stopper.best_step,
        val_bpb=round(bpb, 4),
        val_loss=round(loss, 4),
        stopped_early=stopped_early,
        history=history,
    )


def _train_loop(model, data, config, val_bpb, progress, log):
    import torch

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        betas=(0.9, 0.95),
    )
    batches = _batches(data.train_ids, data.block, config.batch_size, random.Random(config.seed))
    stopper, history, step, total_steps = EarlyStopping(config.patience), [], 0, config.max_steps
    start = time.monotonic()
    model.train()
    while step < total_steps:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, step, total_steps)
        batch = next(batches)
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step == 20:  # fit the cosine schedule to the time budget once the step time is known
            per_step = (time.monotonic() - start) / step
            total_steps = max(step + 1, min(config.max_steps, int(config.minutes * 60 / per_step)))
            log(f"{per_step:.3f}s per step: planning {total_steps} steps")
        if progress:
            progress(step, total_steps, loss.item())
        if step % config.eval_every == 0 or step == total_steps:
            bpb, _ = val_bpb(config.eval_blocks)
            history.append({"step": step, "train_loss": round(loss.item(), 4), "val_bpb": round(bpb, 4)})
            log(f"step {step}: train loss {loss.item():.3f}, held-out {bpb:.3f} bits per byte")
            if stopper.update(model, step, bpb):
                log(f"held-out loss stopped improving: stopping at step {step}")
                return stopper, history, step, True
    return stopper, history, step, False


def _learning_rate(config, step, total_steps):
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def save_model(model, tokenizer, output_dir: Path, config: TrainConfig, bpb):
    """Save in bfloat16 safetensors (half the bytes); chatsite loads it in float32 on CPU."""
    import torch

    output_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(torch.bfloat16).save_pretrained(output_dir, safe_serialization=True)
    model.to(torch.float32)
    tokenizer.save_pretrained(output_dir)
    meta = {"training": asdict(config), "val_bits_per_byte": round(bpb, 4), "dataset": "chitchat-dataset 0.9.0"}
    (output_dir / "chatsite_training.json").write_text(json.dumps(meta, indent=2) + "\n")
