"""The attention view of a finished reply: for a chosen reply token, what it attended to.

modelhub recomputes one forward pass over the reply's prompt and tokens with attention
weights (modelhub/backends/attention.py; the model is loaded if it is not; with model workers, a
worker serving the model does it: modelhub/workers.py). The page shades every
earlier token by the chosen token's attention, averaged or for one layer and head, and
shows two images: that token's attention per layer and head (a row each, plus the
mean), and the whole token × token map of one layer and head. Only the conversation's
owner sees it (404 for anyone else); a model chatsite cannot run, a withdrawn model, no worker
answering or a sequence over the limits gets a sentence saying why not.
"""

import io

from django.conf import settings
from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from conversations.access.permissions import chat_required, reply_for
from conversations.inspection.tokens import token_rows
from conversations.models import Message
from modelhub import api
from modelhub.api import ModelhubError
from modelhub.models import Adapter, ModelSpec

SHADES = 10  # a0 … a9: a token's shade, relative to the strongest weight of the row


def _model(request, message):
    """(spec, adapter) that wrote the reply, if this user may still use them; else ModelhubError saying why."""
    spec = ModelSpec.objects.visible_to(request.user).filter(name=message.model_name).first()
    if spec is None:
        raise ModelhubError(
            f"The model that wrote this reply ({message.model_name or 'none'}) is no longer "
            "available to you, so its attention cannot be recomputed.",
            code="no_attention",
        )
    adapter = None
    if message.adapter_name:
        adapter = Adapter.objects.usable_by(request.user).filter(base=spec, name=message.adapter_name).first()
        if adapter is None:
            raise ModelhubError(
                f"Adapter {message.adapter_name} of {spec} is no longer available to you, so this "
                "reply's attention cannot be recomputed.",
                code="no_attention",
            )
    return spec, adapter


def _attention(request, conversation, message):
    """The pass over this reply: its Attention, or ModelhubError saying why not."""
    if message.status == Message.Status.STREAMING:
        raise ModelhubError(
            "This reply is still being written; its attention can be shown once it ends.", code="no_attention"
        )
    if message.status == Message.Status.ERROR or not (message.content or message.reasoning):
        raise ModelhubError("This reply has no text to look into.", code="no_attention")
    spec, adapter = _model(request, message)
    history = conversation.history(upto=message.parent)
    record = message.token_probs
    # The tokens the model wrote, its thinking included, where they were kept (a stop string it wrote but the
    # reply left out is not shown); otherwise the reply as its template writes it (with its reasoning).
    shown = next((row.index for row in token_rows(message) if row.cut), len(record)) if record else 0
    reply = [token for token, *_ in record[:shown]] if record else message.as_turn()
    # The prompt as the reply got it: the conversation's thinking switch and an API call's tools change it.
    prompt_options = {name: message.generation_options.get(name) for name in ("think", "tools")}
    compute = api.ask_attention if settings.MODELHUB_WORKERS else api.attention  # where the models are
    return compute(spec, history, reply, adapter, prompt_options)


def _choice(request, attention):
    """(position, layer, head) the page asks for: a reply token (the last by default), a layer and a head
    (None: the mean)."""

    def number(name, limit):
        value = request.GET.get(name, "")
        return int(value) if value.isdigit() and int(value) < limit else None

    reply_tokens = len(attention.tokens) - attention.prompt_tokens
    token = number("token", reply_tokens)
    token = reply_tokens - 1 if token is None else token
    return attention.prompt_tokens + token, number("layer", attention.layers), number("head", attention.heads)


@chat_required
@require_GET
def message_attention(request, pk, message_id):
    conversation, message = reply_for(request, pk, message_id)
    context = {"conversation": conversation, "message": message}
    try:
        attention = _attention(request, conversation, message)
    except ModelhubError as exc:
        return render(request, "conversations/attention.html", {**context, "why_not": exc.message})
    position, layer, head = _choice(request, attention)
    row = attention.row(position, layer, head)
    strongest = float(row.max()) or 1.0
    tokens = [
        {
            "position": n,
            "text": text,
            "reply_index": n - attention.prompt_tokens,
            "shade": min(SHADES - 1, int(float(row[n]) / strongest * SHADES)) if n <= position else None,
            "weight": float(row[n]) if n <= position else None,
        }
        for n, text in enumerate(attention.tokens)
    ]
    query = (
        f"token={position - attention.prompt_tokens}&layer={'' if layer is None else layer}"
        f"&head={'' if head is None else head}"
    )
    context.update(
        attention=attention,
        tokens=tokens,
        position=position,
        token_index=position - attention.prompt_tokens,
        layer=layer,
        head=head,
        query=query,
        layers=range(attention.layers),
        heads=range(attention.heads),
        chosen=attention.tokens[position],
        top=sorted(((float(row[n]), attention.tokens[n], n) for n in range(position + 1)), reverse=True)[:5],
    )
    return render(request, "conversations/attention.html", context)


@chat_required
@require_GET
def attention_png(request, pk, message_id, kind):
    """`token`: the chosen token's attention per layer and head; `map`: one layer and head's token × token map."""
    if kind not in ("token", "map"):
        raise Http404("no such image")
    conversation, message = reply_for(request, pk, message_id)
    try:
        attention = _attention(request, conversation, message)
    except ModelhubError as exc:
        return HttpResponse(exc.message, status=409, content_type="text/plain; charset=utf-8")
    position, layer, head = _choice(request, attention)
    png = _token_png(attention, position) if kind == "token" else _map_png(attention, layer, head)
    response = HttpResponse(png, content_type="image/png")
    response["Cache-Control"] = "private, max-age=300"
    return response


def _figure(width, height):
    import matplotlib  # (Agg) only when an image is drawn

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _labels(attention, upto):
    """Tick labels: a newline as ⏎, other control characters escaped, an empty token as ·."""

    def shown(text):
        text = text.replace("\n", "⏎")
        return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text) or "·"

    return [shown(text) for text in attention.tokens[:upto]]


def _token_png(attention, position):
    """Rows: every layer's every head, then the mean; columns: the tokens up to the chosen one."""
    import numpy as np  # (with matplotlib) only when an image is drawn

    rows = attention.weights[:, :, position, : position + 1].reshape(-1, position + 1).numpy()
    rows = np.concatenate([rows, rows.mean(0, keepdims=True)])
    names = [f"L{layer} H{head}" for layer in range(attention.layers) for head in range(attention.heads)] + ["mean"]
    figure = _figure(min(4 + 0.12 * (position + 1), 40), 1 + 0.22 * len(names))
    axes = figure.add_subplot()
    image = axes.imshow(rows, aspect="auto", cmap="viridis", vmin=0, interpolation="nearest")
    axes.set_yticks(range(len(names)), names, fontsize=7)
    if position < 120:
        axes.set_xticks(range(position + 1), _labels(attention, position + 1), rotation=90, fontsize=6)
    axes.set_title(f"attention of token {position} {attention.tokens[position]!r} per layer and head", fontsize=8)
    figure.colorbar(image, ax=axes, shrink=0.8)
    return _png(figure)


def _map_png(attention, layer, head):
    """The token × token attention map of one layer and head (or their mean): row i attends to column j ≤ i."""
    weights = attention.weights
    weights = weights[layer : layer + 1] if layer is not None else weights
    weights = weights[:, head : head + 1] if head is not None else weights
    matrix = weights.mean(dim=(0, 1)).numpy()
    size = min(4 + 0.1 * len(matrix), 24)
    figure = _figure(size + 1, size)
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="viridis", vmin=0, interpolation="nearest")
    if len(matrix) < 120:
        labels = _labels(attention, len(matrix))
        axes.set_xticks(range(len(matrix)), labels, rotation=90, fontsize=6)
        axes.set_yticks(range(len(matrix)), labels, fontsize=6)
    axes.axhline(attention.prompt_tokens - 0.5, color="white", linewidth=0.6)
    axes.axvline(attention.prompt_tokens - 0.5, color="white", linewidth=0.6)
    which = f"layer {layer}" if layer is not None else "mean of layers"
    which += f", head {head}" if head is not None else ", mean of heads"
    axes.set_title(f"token × token attention ({which}); lines: where the reply begins", fontsize=8)
    figure.colorbar(image, ax=axes, shrink=0.8)
    return _png(figure)
