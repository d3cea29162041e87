"""The doctor: is this environment ready, and why not (checks); and the checks a notebook's verification cell shows
(verification)."""
