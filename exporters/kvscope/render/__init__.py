"""Metric families to exposition bytes (text, OpenMetrics), and the family builders."""
