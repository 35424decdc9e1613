"""Sandbox providers: where sessions' agents run."""
