"""The blind arena, apart from its models (conversations/models/arena.py: Arena, ArenaMatch).

views.py        its pages: open an arena, vote blind, promote the candidate
generation.py   the background thread that writes an arena's answers
ratings.py      Bradley–Terry ratings on the Elo scale (pure functions)
leaderboard.py  every contender rated from arena votes and side-by-side verdicts
"""
