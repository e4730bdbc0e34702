"""The pages in a real browser (Debian's Chromium through Playwright) against real daphne servers (all `live`)."""
