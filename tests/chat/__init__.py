"""The chat page and its websocket (conversations.chat): frames, streaming, the tree, markdown, pages, queries."""
