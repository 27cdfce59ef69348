"""Settings: the environment, and the registry URL's password masked in masks, messages, reprs and remote replies."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from core4celery.config.settings import Settings, mask_url, redact, user_of
from core4celery.inspection import hide_secrets

PASSWORD = "s3cr/t@pa:ss"
ENCODED = quote(PASSWORD, safe="")


@pytest.mark.parametrize(("url", "masked"), [
    (f"mongodb://core4:{ENCODED}@h:1/db?authSource=admin", "mongodb://core4:****@h:1/db?authSource=admin"),
    (f"mongodb://core4:{PASSWORD}@h:1/db", "mongodb://core4:****@h:1/db"),  # unescaped: up to the last '@'
    ("mongodb+srv://u:p@cluster.example/db", "mongodb+srv://u:****@cluster.example/db"),
    ("mongodb://u@h/db", "mongodb://u@h/db"),
    ("mongodb://h:1,h:2/db", "mongodb://h:1,h:2/db"),
])
def test_mask_url_hides_the_whole_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_redact_removes_the_password_raw_and_encoded_from_any_text() -> None:
    url = f"mongodb://core4:{ENCODED}@h/db"
    text = f"parse failed near {PASSWORD!r} ({ENCODED})"
    assert PASSWORD not in redact(text, url) and ENCODED not in redact(text, url)
    assert redact("nothing secret", url) == "nothing secret"
    assert user_of(url) == "core4" and user_of("mongodb://h/db") is None


def test_settings_repr_masks_the_url_and_shows_the_rest() -> None:
    settings = Settings(mongodb_url=f"mongodb://core4:{ENCODED}@h:1/db", dispatch_scan=7)
    shown = repr(settings)
    assert ENCODED not in shown and "core4:****@h:1" in shown and "dispatch_scan=7" in shown


def test_environment_variables_set_every_setting_and_win_over_app_conf() -> None:
    conf = {"broker_url": "mongodb://h/db", "core4celery_dispatch_scan": 5, "core4celery_idle_wait": 2.0}
    settings = Settings.from_conf(conf, environ={"CORE4CELERY_DISPATCH_SCAN": "9", "CORE4CELERY_RUN_LEASE": "20",
                                                 "CORE4CELERY_COLLECTION_PREFIX": "mine"})
    assert (settings.dispatch_scan, settings.run_lease, settings.idle_wait) == (9, 20.0, 2.0)
    assert settings.collection_prefix == "mine"


def test_hide_secrets_masks_urls_inside_replies() -> None:
    reply = {"broker": {"hostname": f"mongodb://core4:{ENCODED}@h/db", "port": 1},
             "conf": [f"x = 'mongodb://core4:{PASSWORD}@h/db'"], "n": 3}
    hidden = hide_secrets(reply)
    assert hidden["broker"]["hostname"] == "mongodb://core4:****@h/db" and hidden["n"] == 3
    assert PASSWORD not in str(hidden) and ENCODED not in str(hidden)


def test_idle_wait_zero_turns_the_wait_off_as_documented() -> None:
    assert Settings.from_conf({"broker_url": "mongodb://h/db"}, environ={"CORE4CELERY_IDLE_WAIT": "0"}).idle_wait == 0
