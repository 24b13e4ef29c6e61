"""Connections: lazy clients, fork safety, bounded timeouts and one-line errors without secrets."""

from __future__ import annotations

import os
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from mrq import iocount
from mrq.config import Settings
from mrq.connections import Connections, redact_uri
from mrq.exceptions import ConfigError, StoreUnavailable
from mrq.testing.pytest_plugin import with_database
from mrq.testing.stack import free_port


@pytest.fixture
def make_connections():
    """Build Connections that are all closed after the test."""
    made: list[Connections] = []

    def make(settings: Settings, **options: Any) -> Connections:
        conns = Connections(settings, **options)
        made.append(conns)
        return conns

    yield make
    for conns in made:
        conns.close()


def test_clients_are_lazy_and_work(mrq_settings: Settings, make_connections) -> None:
    conns = make_connections(mrq_settings)
    assert conns._redis is None and not conns._mongo_clients  # nothing connected yet
    conns.check()
    conns.redis.set(f"{mrq_settings.redis_prefix}:probe", b"1")
    assert conns.redis.get(f"{mrq_settings.redis_prefix}:probe") == b"1"
    conns.mongodb_jobs.probe.insert_one({"x": 1})
    assert conns.mongodb_jobs.probe.count_documents({}) == 1


def test_only_counting_clients_count_round_trips(mrq_settings: Settings, make_connections) -> None:
    """The worker's clients count their round trips and commands (its metrics); a producer's do
    not pay for it (pymongo's command listener costs each command a sixth of its client CPU)."""
    for count_io in (False, True):
        conns = make_connections(mrq_settings, count_io=count_io)
        conns.check()
        trips, commands = iocount.snapshot()
        conns.redis.ping()
        conns.mongodb_jobs.probe.find_one({})
        after_trips, after_commands = iocount.snapshot()
        assert (after_trips - trips, after_commands.get("find", 0) - commands.get("find", 0)) == (
            (1, 1) if count_io else (0, 0))


def test_jobs_database_comes_from_the_uri_path(mrq_settings: Settings, make_connections) -> None:
    conns = make_connections(mrq_settings)
    assert conns.mongodb_jobs.name == urlsplit(mrq_settings.mongodb_jobs).path.strip("/")


def test_mongodb_logs_modes(mrq_settings: Settings, mongodb_uri: str, make_connections) -> None:
    same = make_connections(mrq_settings.replace(mongodb_logs="1"))
    assert same.mongodb_logs is not None and same.mongodb_logs.name == same.mongodb_jobs.name
    off = make_connections(mrq_settings.replace(mongodb_logs="0"))
    assert off.mongodb_logs is None
    other = make_connections(mrq_settings.replace(mongodb_logs=with_database(mongodb_uri, "mrqtest_logs_other")))
    assert other.mongodb_logs is not None and other.mongodb_logs.name == "mrqtest_logs_other"


def test_child_process_gets_fresh_clients(mrq_settings: Settings, make_connections) -> None:
    conns = make_connections(mrq_settings)
    conns.redis.ping()
    conns.mongodb_jobs.command("ping")
    # keep the parent's objects alive: comparing id()s of freed objects could match a new one
    parent_redis, parent_mongo = conns.redis, conns._mongo_clients[mrq_settings.mongodb_jobs]
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must build new clients and be able to use them
        try:
            ok = conns.redis is not parent_redis and conns.redis.ping()
            conns.mongodb_jobs.command("ping")
            ok = ok and conns._mongo_clients[mrq_settings.mongodb_jobs] is not parent_mongo
            os.write(write_fd, b"ok" if ok else b"same")
        except BaseException as exc:  # report anything to the parent
            os.write(write_fd, repr(exc).encode()[:200])
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    answer = os.read(read_fd, 300)
    assert answer == b"ok", answer
    os.close(read_fd)
    # the parent's clients still work after the child exited
    assert conns.redis.ping()

def test_unreachable_redis_fails_fast_with_one_line(mrq_settings: Settings, make_connections) -> None:
    uri = f"redis://:s3cret-pass@127.0.0.1:{free_port()}/0"
    conns = make_connections(mrq_settings.replace(redis=uri, redis_timeout=2))
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        conns.check_redis()
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "\n" not in message
    assert "cannot reach Redis at redis://:***@127.0.0.1:" in message
    assert "s3cret-pass" not in message


def test_unreachable_mongodb_fails_fast_with_one_line(mrq_settings: Settings, make_connections) -> None:
    uri = f"mongodb://127.0.0.1:{free_port()}/jobs"
    conns = make_connections(mrq_settings.replace(mongodb_jobs=uri, mongodb_timeout=1))
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        conns.check_mongodb()
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot reach MongoDB at {uri}: no server answered within 1s")


def test_mongodb_password_never_appears_in_errors(mrq_settings: Settings, make_connections) -> None:
    uri = f"mongodb://admin:Pa55word-XYZ@127.0.0.1:{free_port()}/jobs?authSource=admin"
    conns = make_connections(mrq_settings.replace(mongodb_jobs=uri, mongodb_timeout=1))
    with pytest.raises(StoreUnavailable) as info:
        conns.check_mongodb()
    assert "Pa55word-XYZ" not in str(info.value)
    assert "admin:***@" in str(info.value)


def test_malformed_mongodb_uri_is_a_config_error_without_password(mrq_settings: Settings, make_connections) -> None:
    conns = make_connections(mrq_settings.replace(mongodb_jobs="mongodb://user:Hunter2Secret@127.0.0.1:notaport/db"))
    with pytest.raises(ConfigError) as info:
        conns.check_mongodb()
    assert "Hunter2Secret" not in str(info.value) and "invalid MongoDB URI" in str(info.value)


def test_unknown_redis_scheme_is_a_config_error(mrq_settings: Settings, make_connections) -> None:
    conns = make_connections(mrq_settings.replace(redis="http://127.0.0.1:6379"))
    with pytest.raises(ConfigError, match="expected redis://"):
        conns.check_redis()


def test_redact_uri() -> None:
    assert redact_uri("mongodb://u:p@h:1/db") == "mongodb://u:***@h:1/db"
    assert redact_uri("redis://:p@h:1/0") == "redis://:***@h:1/0"
    assert redact_uri("redis://h:1/0") == "redis://h:1/0"
