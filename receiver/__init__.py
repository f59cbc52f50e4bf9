"""Thin Flask receiver: verify, store once in the inbox, enqueue, answer. No business rules."""
