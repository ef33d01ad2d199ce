"""Helpers every layer may use and that know nothing of models: atomic file writes, the
log format."""
