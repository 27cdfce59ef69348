"""kombu's MongoDB transport with the per-poll lookups it repeats needlessly taken out.

With ``ttl`` on (needed so dead event and reply queues expire), kombu's
channel reads a queue's declared options from ``messages.queues`` on every
publish and every poll, and refreshes each expiring queue's ``expire_at``
(two ``update_many``) on every poll; remote-control (fanout) queues are
polled as often as task queues. At the 0.05 s polling interval core4celery
needs for latency, that was ~120 server commands per second per idle worker
and one extra read per ticket. This channel:

* keeps a queue's declared options for ``OPTIONS_TTL`` seconds (queues are
  declared once; a queue not declared yet is looked up again next time);
* refreshes a queue's expiry at most every ``KEEPALIVE`` seconds (Celery's
  shortest ``x-expires`` is 10 s);
* polls fanout queues (``celery inspect``, Flower, ``control``) at most every
  ``BROADCAST_POLL`` seconds: their tailable cursor keeps what arrives meanwhile;
* polls a worker's own queue (pinned, per-node capped and forced jobs, see
  :mod:`core4celery.dispatch.routing`) at most every ``OWN_POLL`` seconds after it
  was found empty: a busy worker otherwise spent an empty poll on it per message
  (1.6 server commands per job); a ring polls it at once;
* in a worker (``sleep_when_idle``), after ``IDLE_AFTER`` seconds without a
  message and with room in its prefetch, waits on the wake-up collection (:mod:`core4celery.wakeups`) for up
  to ``idle_wait`` seconds instead of polling every ``polling_interval``: an
  idle worker then costs the server one command per ``idle_wait``, and a ring
  ends the wait at once; between two polls of a busy worker, a nudge from
  its own pool process (:mod:`core4celery.nudges`) ends the sleep at once.

* moves a message it cannot read (no payload, not JSON, not a kombu message)
  to ``messages.rejected`` with a warning, instead of raising inside the
  consumer, which Celery takes for an unrecoverable error and stops the worker.

The app uses this transport when its broker is MongoDB (``Core4`` sets
``broker_transport``).
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import Any

from kombu.transport import mongodb
from kombu.transport.virtual.base import Empty
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from pymongo import ASCENDING, CursorType
from pymongo.cursor import Cursor
from pymongo.errors import PyMongoError

from . import nudges
from .dispatch.routing import PERSONAL_PREFIX
from .wakeups import RING_MARGIN, WAKEUPS, ring_of

log = logging.getLogger(__name__)

OPTIONS_TTL = 5.0
KEEPALIVE = 3.0  # Celery's shortest x-expires (pidbox queues) is 10 s
BROADCAST_POLL = 0.25
OWN_POLL = 0.25
EAGER_AWAIT = 0.01  # seconds: an await returning faster than this did not wait
IDLE_AFTER = 1.0  # seconds without a message before a worker's consumer waits for wake-ups
FULL_LOOK = 0.01  # seconds between looks at a full prefetch (local, no server command)
REJECTED = "messages.rejected"  # where unreadable messages go, beside kombu's collections

_idle_wait = 0.0  # seconds; 0: never wait for wake-ups (every process but a worker)


_purge_hooks: weakref.WeakSet[Any] = weakref.WeakSet()  # objects with purge_queue(database, queue) -> int


def on_purge(owner: Any) -> None:
    """``owner.purge_queue(database, queue)`` runs when a queue of that broker database is purged
    (``celery purge``, ``worker --purge``) and returns what it removed. Held weakly."""
    _purge_hooks.add(owner)


def sleep_when_idle(seconds: float) -> None:
    """Called in a worker's main process: its idle consumer waits for wake-ups (0 turns it off)."""
    global _idle_wait
    _idle_wait = seconds
    nudges.listen()
TRANSPORT = "core4celery.transport:Transport"


class Channel(mongodb.Channel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._options: dict[str, tuple[float, Any]] = {}
        self._kept: dict[str, float] = {}
        self._polled: dict[str, float] = {}
        self._own_next: dict[str, float] = {}  # own queue -> monotonic time of its next poll
        super().__init__(*args, **kwargs)

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        super()._new_queue(queue, **kwargs)
        self._options.pop(queue, None)

    def _queue_options(self, queue: str) -> Any:
        now = time.monotonic()
        cached = self._options.get(queue)
        if cached is not None and now - cached[0] < OPTIONS_TTL:
            return cached[1]
        doc = self.queues.find_one({"_id": queue})
        if doc is None:
            return None  # not declared yet: not cached, so its options count once it is
        self._options[queue] = (now, doc["options"])
        return doc["options"]

    def _get_queue_expire(self, queue: Any, argument: str) -> Any:
        if isinstance(queue, str):
            options = self._queue_options(queue)
            return None if options is None else super()._get_queue_expire(options, argument)
        return super()._get_queue_expire(queue, argument)

    def _update_queues_expire(self, queue: str) -> None:
        now = time.monotonic()
        if now - self._kept.get(queue, 0.0) < KEEPALIVE:
            return
        self._kept[queue] = now
        super()._update_queues_expire(queue)

    def _purge(self, queue: str) -> int:
        """The queue's messages, and what the registered hooks remove with them (core4's waiting jobs)."""
        purged = int(super()._purge(queue) or 0)
        database = str(self.client.name)
        return purged + sum(int(owner.purge_queue(database, queue)) for owner in list(_purge_hooks))

    def poll_now(self, queue: str | None = None) -> None:
        """After a ring for ``queue`` (a worker's own queue, a broadcast exchange; None: unknown): it is
        polled at once, however recent its last empty poll."""
        if queue is None or queue in set(self._fanout_queues.values()):
            self._polled.clear()
        if queue is None:
            self._own_next.clear()
        else:
            self._own_next.pop(queue, None)

    def _put_fanout(self, exchange: str, message: Any, routing_key: str, **kwargs: Any) -> None:
        """A broadcast (``celery inspect``, ``control``, Flower) rings: an idle worker waiting for
        wake-ups would answer only after ``idle_wait``, later than ``inspect``'s one-second timeout."""
        super()._put_fanout(exchange, message, routing_key, **kwargs)
        try:
            self.client[WAKEUPS].insert_one(ring_of(exchange))
        except PyMongoError as exc:
            log.debug("core4celery: could not ring for broadcast %s: %s", exchange, type(exc).__name__)

    def _get(self, queue: str, timeout: Any = None) -> Any:
        if queue in self._fanout_queues:
            now = time.monotonic()
            if now - self._polled.get(queue, 0.0) < BROADCAST_POLL:
                raise Empty()
            self._polled[queue] = now
            try:
                return super()._get(queue)
            except (KeyError, TypeError, ValueError) as exc:  # a broadcast stays in its capped collection
                log.warning("core4celery: skipped an unreadable broadcast message on %s (%s)", queue, exc)
                raise Empty() from None
        if queue.startswith(PERSONAL_PREFIX):
            return self._get_own(queue)
        return self._take(queue)

    def _get_own(self, queue: str) -> Any:
        now = time.monotonic()
        if now < self._own_next.get(queue, 0.0):
            raise Empty()
        try:
            return self._take(queue)
        except Empty:
            self._own_next[queue] = now + OWN_POLL
            raise

    def _take(self, queue: str) -> Any:
        msg = self.messages.find_one_and_delete({"queue": queue}, sort=[("priority", ASCENDING)])
        if self.ttl:
            self._update_queues_expire(queue)
        if msg is None:
            raise Empty()
        payload = readable(msg)
        if isinstance(payload, str):
            self._reject(msg, payload)
            raise Empty()
        return payload

    def _reject(self, msg: dict[str, Any], reason: str) -> None:
        """Out of the queue for good (it is already deleted), kept where an operator can look at it."""
        log.warning("core4celery: moved unreadable message %s of queue %s to %s: %s",
                    msg.get("_id"), msg.get("queue"), REJECTED, reason)
        try:
            self.client[REJECTED].insert_one({**msg, "reason": reason, "rejected_at": time.time()})
        except PyMongoError as exc:
            log.warning("core4celery: could not keep rejected message %s: %s", msg.get("_id"), type(exc).__name__)


def readable(msg: dict[str, Any]) -> dict[str, Any] | str:
    """The message's payload, or why a consumer could not take it (kombu would raise far down)."""
    raw = msg.get("payload")
    if not isinstance(raw, (str, bytes)):
        return "no payload" if raw is None else f"payload is a {type(raw).__name__}, not JSON text"
    try:
        payload = loads(bytes_to_str(raw))
    except ValueError as exc:
        return f"payload is not JSON ({exc})"
    if not isinstance(payload, dict) or not isinstance(payload.get("properties"), dict):
        return "payload is not a kombu message (no properties)"
    if "delivery_tag" not in payload["properties"]:
        return "payload is not a kombu message (no delivery_tag)"
    return payload


class Transport(mongodb.Transport):
    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_delivery = time.monotonic()
        self._wake_cursor: Cursor[Any] | None = None

    def drain_events(self, connection: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """kombu's loop, with the idle pause of :meth:`_pause` in place of a fixed sleep."""
        cycle: Any = self.cycle
        began = time.monotonic()
        while True:
            try:
                cycle.get(self._deliver, timeout=timeout)
            except Empty:
                left = None if timeout is None else timeout - (time.monotonic() - began)
                if left is not None and left <= 0:
                    raise TimeoutError() from None
                self._pause(left)
            else:
                self._last_delivery = time.monotonic()
                return

    def _pause(self, left: float | None) -> None:
        """A consumer whose prefetch is full polls nothing (kombu skips it) but looks again every
        ``FULL_LOOK`` seconds without a server command: the moment its run ends it takes the ticket the
        run handed on. Waiting for a ring instead would miss one rung before the run's ack freed it."""
        interval = float(self.polling_interval or 0.0)
        if self._prefetch_full():
            interval = min(interval, FULL_LOOK)
        elif _idle_wait and self.channels and time.monotonic() - self._last_delivery >= IDLE_AFTER:
            self._await_wakeup()
            return
        nudges.wait(interval if left is None else max(0.0, min(interval, left)))

    def _prefetch_full(self) -> bool:
        channels: Any = self.channels
        return any(channel._consumers and not channel.qos.can_consume() for channel in channels)

    def _await_wakeup(self) -> None:
        """Blocking getMores until a ring arrives or ``idle_wait`` has passed (then the queues are polled).

        A server may end an await early without a ring (SecantusDB does on other
        writes): the wait goes on, and an await that returns at once is followed
        by a pause, so a server that cannot wait is polled, not spun on. Rings
        older than the poll just before this wait are skipped (no command: they
        come in the cursor's batch): a consumer back from a busy spell would
        otherwise poll again for every ring it missed, tickets long taken.
        """
        deadline = time.monotonic() + _idle_wait
        since = time.time() - RING_MARGIN
        try:
            cursor = self._wake_cursor
            if cursor is None or not cursor.alive:
                cursor = self._wake_cursor = self._tail()
            while time.monotonic() < deadline:
                began = time.monotonic()
                ring = next(cursor, None)
                if ring is not None:
                    if ring.get("t", since) < since:
                        continue
                    self._rung(ring.get("q"))
                    return
                if not cursor.alive:
                    return
                if time.monotonic() - began < EAGER_AWAIT:
                    time.sleep(float(self.polling_interval or 0.0) or 0.05)
        except PyMongoError as exc:  # the consumer's own poll reports the outage; just do not spin
            log.debug("core4celery: waiting for wake-ups failed: %s", type(exc).__name__)
            self._wake_cursor = None
            time.sleep(float(self.polling_interval or 0.0) or 0.05)

    def _rung(self, queue: str | None) -> None:
        """Only what the ring names is polled out of turn (the shared queues are polled anyway)."""
        channels: Any = self.channels
        for channel in channels:
            if isinstance(channel, Channel):
                channel.poll_now(queue)

    def _tail(self) -> Cursor[Any]:
        """A cursor past the newest ring (it starts on that ring: a cursor without a first match dies)."""
        channels: Any = self.channels
        wakeups = channels[0].client[WAKEUPS]
        newest = wakeups.find_one({}, {"_id": 1}, sort=[("$natural", -1)])
        query = {} if newest is None else {"_id": {"$gte": newest["_id"]}}
        cursor = wakeups.find(query, cursor_type=CursorType.TAILABLE_AWAIT).max_await_time_ms(int(_idle_wait * 1000))
        next(cursor, None)  # the newest ring itself, already past
        return cursor
