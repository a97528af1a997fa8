"""Integrations of aether with other libraries (each needs its own extra)."""
