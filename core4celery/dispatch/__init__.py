"""The queue gate: turns due jobs into Celery tickets, one pass at a time across the cluster."""
