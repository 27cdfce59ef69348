"""Testing core4 jobs: eager runs need nothing (``task.apply()``, ``task_always_eager``; see
:mod:`core4celery.eager`); tests against a real server and worker use the pytest fixtures of
:mod:`core4celery.testing.plugin` (registered as the pytest plugin ``core4celery``) or the
:class:`WorkerProcess` they are built on.
"""

from .worker import WorkerProcess, wait_for

__all__ = ["WorkerProcess", "wait_for"]
