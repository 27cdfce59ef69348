"""The ``core4celery.testing`` pytest fixtures, used as a project would use them for its own jobs.

Directly: this module overrides ``core4_app_module`` and ``core4_includes`` and runs
the project in ``tests/apps/userproj`` on a real worker. Through ``pytester``: an
outer project in a temporary directory, in its own pytest run with the plugin
found by its entry point and its own server.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import pytest
from celery import Celery
from celery.result import AsyncResult

from core4celery.testing import WorkerProcess

pytest_plugins = ("pytester",)


@pytest.fixture(scope="session")
def core4_app_module() -> str:
    return "tests.apps.userproj.app"


@pytest.fixture(scope="session")
def core4_includes() -> Sequence[str]:
    return ("tests.apps.userproj.tasks",)


def test_a_shared_job_runs_on_the_real_worker(core4_app: Celery, core4_worker: WorkerProcess) -> None:
    from tests.apps.userproj.tasks import square

    result = square.delay(n=7)
    assert AsyncResult(result.id, app=core4_app).get(timeout=60) == 49
    doc = core4_app.core4celery.get(result.id)
    assert (doc["state"], doc["trial"], doc["result"]) == ("complete", 1, 49)
    assert doc["locked"] is None and f"{core4_worker.name}@" in core4_worker.output()
    assert square.delay(n=3).get(timeout=60) == 9  # the task's own AsyncResult reads the test's registry too


def test_a_failure_and_children_on_the_real_worker(core4_app: Celery, core4_worker: WorkerProcess) -> None:
    from tests.apps.userproj.tasks import Refused, fan_out, refuse

    with pytest.raises(Refused, match="no thanks"):
        refuse.delay(why="no thanks").get(timeout=60)
    mother = fan_out.delay(count=3)
    assert mother.get(timeout=60) == 3
    core4 = core4_app.core4celery
    assert core4.get(mother.id)["trial"] >= 2  # deferred after launching, complete once its children were
    assert core4.queries.journaled_children(mother.id) == 3 and core4.queries.children(mother.id) == []


def test_a_task_of_the_app_module_by_name(core4_app: Celery, core4_worker: WorkerProcess) -> None:
    """Not shared, so only the worker has it: sent by name, adopted by the worker as a registry job."""
    sent = core4_app.send_task("userproj.greet", kwargs={"who": "tester"})
    assert core4_app.AsyncResult(sent.id).get(timeout=60) == "hello tester from trial 1"


def test_each_test_has_its_own_database(core4_app: Celery, core4_database_url: str) -> None:
    from tests.apps.userproj.tasks import square

    assert core4_app.conf.broker_url == core4_database_url
    job_id = square.delay(n=1).id  # no worker: it waits, in this test's database only
    assert core4_app.core4celery.get(job_id)["state"] == "pending"


PROJECT = {
    "myproj/__init__.py": "",
    "myproj/app.py": """
        from celery import Celery
        from core4celery import Core4, Core4Task

        app = Celery("myproj")
        Core4(app)

        @app.task(base=Core4Task, bind=True, name="myproj.double", author="me")
        def double(self, n):
            self.progress(0.5, "halfway")
            return 2 * n
    """,
    "test_myproj.py": """
        import glob
        import os

        import pytest
        from celery import states

        from myproj.app import double

        @pytest.fixture(scope="session")
        def core4_app_module():
            return "myproj.app"

        def test_eager():
            result = double.apply(args=(4,))
            assert result.get() == 8 and result.job.reports == [(0.5, "halfway")]

        def test_no_server_unless_asked(request):
            assert request.config.pluginmanager.has_plugin("core4celery")
            paths = glob.glob(f"/proc/{os.getpid()}/task/*/children")
            assert paths
            children = [pid for path in paths for pid in open(path).read().split()]
            assert children == []

        def test_real_worker(core4_app, core4_worker):
            sent = core4_app.send_task("myproj.double", kwargs={"n": 21})
            assert core4_app.AsyncResult(sent.id).get(timeout=60) == 42
            assert core4_app.AsyncResult(sent.id).state == states.SUCCESS
    """,
}


def test_the_plugin_in_a_project_of_its_own(pytester: pytest.Pytester) -> None:
    """Ordered as written: the eager and the no-server tests run before the worker test starts anything."""
    for name, text in PROJECT.items():
        path = pytester.path / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(textwrap.dedent(text))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", timeout=240)
    result.assert_outcomes(passed=3)
