"""Outbound email and webhooks arrive with later issues."""
