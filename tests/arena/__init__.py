"""The blind arena (conversations.arena) and its ratings."""
