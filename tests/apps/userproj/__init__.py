"""A user's project as ``core4celery.testing`` expects one (tests/integration/test_testing_fixtures.py).

``app`` builds its app the ordinary way, taking the broker from ``CELERY_BROKER_URL``
and the registry from ``CORE4CELERY_MONGODB_URL`` (as ``core4_worker`` sets them);
``tasks`` holds ``shared_task`` jobs, which ``core4_includes`` brings to ``core4_app``.
"""
