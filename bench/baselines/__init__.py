"""Baseline scripts a user would write instead of mpobs; each is run as its own process."""
