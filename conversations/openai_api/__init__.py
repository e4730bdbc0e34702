"""An OpenAI-compatible API (`/v1/models`, `/v1/chat/completions`) for the tools a team already
uses, answered by the same models, adapters, batching and per-user limits as the chat page, with
each call kept as a conversation of the key's user unless the key says otherwise.

    requests.py  the request body -> a Call (model names: `name`, `name:adapter`), or an ApiError
    calls.py     the call's life: KeptCall (the chat's own path) or UnkeptCall (no row at all)
    shapes.py    responses, chunks, usage and errors in OpenAI's shapes
    views.py     the two endpoints: key, request, call, response or server-sent events
"""
