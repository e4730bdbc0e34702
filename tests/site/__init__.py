"""The site as a whole (chatsite): settings and their environment, security headers, login throttling,
health and metrics, pinned requirements, bad input wherever it is entered."""
