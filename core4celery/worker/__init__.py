"""What runs inside ``celery worker``: the bootstep, the node's care of its runs, one run, housekeeping."""
