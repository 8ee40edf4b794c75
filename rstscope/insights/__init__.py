"""Insights over rollups: networks whose stage shares change (alerts) or stand out from their peers (outliers)."""
