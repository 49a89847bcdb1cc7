"""Approval requests and decisions arrive with the inbox issue; the app exists so the layout is
fixed from the start."""
