"""The chat app: conversations, their replies, feedback and what becomes of it. Where is X:

    chat/           a turn and the life of its reply: the socket, its frames, saving, streaming, stopping
    delivery/       what lets several processes share one database and one channel layer
    access/         who may open what, roles, the reply cap and quotas, usage pages
    openai_api/     the OpenAI-compatible API and the API keys page
    inspection/     inside a reply: its exact prompt, token probabilities, attention
    review/         the review queue
    training_data/  feedback to TRL datasets (snapshots, cards, reviewers' agreement)
    arena/          blind votes between adapters, ratings, the leaderboard
    evaluation/     evaluation reports in the admin
    models/         the rows (every model importable from conversations.models)
    views.py, urls.py, forms.py, admin.py  the chat pages, their URLs, forms, the admin
    errors.py       ChatError: what a user is told; metrics.py: Prometheus; model_worker.py: a worker process

It reaches modelhub only through `modelhub.api` and `modelhub.models` (pyproject.toml's contracts).
"""
