"""The regression gate: a candidate against a baseline (stored runs or code trees), deterministic results judged
exactly, code trees timed against each other side by side and judged statistically."""
