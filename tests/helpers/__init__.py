"""Shared test helpers (fixtures, planted data, a local LLM server); not test modules themselves."""
