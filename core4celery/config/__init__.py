"""Validated configuration: settings (per app), job options (per task), and the number rules both share."""
