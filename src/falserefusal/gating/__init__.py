"""Deciding gates: thresholds.yaml profiles, the gate-kind table, tests and messages, sequential looks, custom gates."""
