"""Deciding gates: profiles from thresholds.yaml, the table of gate kinds, their tests and messages, sequential looks, custom gates."""
