"""Reporting: the results.json contract (results), protocol fingerprints and comparability (protocols), the
paper's tables with your rows (tables) and plots of run folders (plots)."""
