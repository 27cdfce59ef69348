"""The project's Celery app: what ``celery -A tests.apps.userproj.app worker`` loads."""

from __future__ import annotations

from celery import Celery

from core4celery import Core4, Core4Task

app = Celery("userproj", include=["tests.apps.userproj.tasks"])
app.conf.worker_hijack_root_logger = False
Core4(app)


@app.task(base=Core4Task, bind=True, name="userproj.greet", author="user")
def greet(self: Core4Task, who: str) -> str:
    """A task of the app itself (not shared): a test calls it by name."""
    return f"hello {who} from trial {self.trial}"
