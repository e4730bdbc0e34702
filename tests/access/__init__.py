"""Who may do what (conversations.access): roles, quotas, per-model access and the reply cap."""
