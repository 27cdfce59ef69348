"""The keeper's lease in the slots document: one holder; a settled worker takes an expired lease over first."""

from __future__ import annotations

from datetime import timedelta

from core4celery.clock import now
from core4celery.store.slots import Slots

from .conftest import Registry


def test_one_keeper_at_a_time_and_an_impatient_taker_wins_an_expired_lease_first(reg: Registry) -> None:
    slots = Slots(reg.connection)
    stamp = now()
    assert slots.lead("a", 3, stamp)
    assert not slots.lead("b", 3, stamp + timedelta(seconds=1))  # a holds it
    assert slots.lead("a", 3, stamp + timedelta(seconds=2))  # renewed by its holder: until +5 s
    later = stamp + timedelta(seconds=6)  # expired 1 s ago
    assert not slots.lead("young", 3, later, patience=3)  # a young worker waits one more lease
    assert reg.store.slots().kept_by_other("young", later - timedelta(seconds=3))
    assert not reg.store.slots().kept_by_other("settled", later)
    assert slots.lead("settled", 3, later)  # a settled worker takes it at once
    assert reg.store.slots().keeper is not None and reg.store.slots().keeper[0] == "settled"
    assert slots.lead("young", 3, later + timedelta(seconds=7), patience=3)  # nobody settled came: the young one


def test_a_resigned_lease_is_free_at_once(reg: Registry) -> None:
    slots = Slots(reg.connection)
    assert slots.lead("a", 30, now())
    slots.resign("b")  # not the holder: nothing changes
    assert reg.store.slots().keeper is not None
    slots.resign("a")
    assert reg.store.slots().keeper is None
    assert slots.lead("young", 3, now(), patience=3)
