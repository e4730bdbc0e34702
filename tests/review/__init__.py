"""The review queue (conversations.review)."""
