"""Embedded homeserver management (Synapse-specific)."""
