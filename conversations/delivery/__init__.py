"""What lets several processes share one database and one channel layer:

    groups.py     channel-layer group names and best-effort sends, the layer's health
    inbox.py      this process's one channel for stop, sync and roll-call answers
    heartbeat.py  renewing this process's replies and ending those of gone writers
    durable.py    saving through a database outage

Imports models only; chat, access and the processes' entry points import it.
"""
