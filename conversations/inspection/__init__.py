"""Inside a reply, for its owner: the exact prompt its model got (prompt.py), each token's probability
and alternatives and a branch from one (tokens.py), and what a token attended to (attention.py).

Imports access and models, and modelhub.api for the attention pass; chat imports its prompt notice and
a branch's start.
"""
