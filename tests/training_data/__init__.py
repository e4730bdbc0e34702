"""Feedback and the datasets made of it (conversations.training_data): export, cards, the closed loop."""
