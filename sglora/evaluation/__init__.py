"""Scoring LoRAs on tasks, the metrics and statistics, choosing settings on validation tasks."""
