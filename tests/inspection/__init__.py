"""Inside a reply (conversations.inspection): token probabilities, attention and the exact prompt."""
