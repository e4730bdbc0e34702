"""Evaluation reports (conversations.evaluation)."""
