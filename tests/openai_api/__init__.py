"""The OpenAI-compatible API (conversations.openai_api) and its keys."""
