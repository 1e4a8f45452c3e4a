"""The hot paths' building blocks: click ids, IP anonymisation, request counters, request ids."""

from __future__ import annotations

import hashlib
import os

from app import metrics
from app.edge import new_request_id
from app.pipeline.events import click_time, is_click_id, new_click_and_visitor_ids
from app.security import IpAnonymizer


def test_click_ids_are_unique_time_ordered_and_hex() -> None:
    pairs = [new_click_and_visitor_ids() for _ in range(5_000)]  # more than one entropy draw
    ids = [i for pair in pairs for i in pair]
    assert len(set(ids)) == len(ids)
    assert all(is_click_id(i) for i in ids)
    click_ids = [click_id for click_id, _ in pairs]
    assert click_ids[0][:12] <= click_ids[-1][:12]
    assert abs(click_time(click_ids[-1]).timestamp() - __import__("time").time()) < 5


def test_a_forked_process_draws_its_own_random_digits() -> None:
    new_click_and_visitor_ids()  # the parent holds a partly used draw
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(write, "".join(new_click_and_visitor_ids()).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    parent = "".join(new_click_and_visitor_ids())
    assert child[12:] != parent[12:]  # the random parts differ


def test_ip_hash_is_keyed_blake2b_and_the_prefix_is_coarse() -> None:
    secret = b"s" * 32
    anonymize = IpAnonymizer(secret)
    key = hashlib.sha256(b"ip-hash:" + secret).digest()
    expected = hashlib.blake2b(b"203.0.113.7", key=key, digest_size=16).hexdigest()
    assert anonymize("203.0.113.7") == (expected, "203.0.113.0/24")
    assert anonymize("203.0.113.7") == anonymize("203.0.113.7")  # stable: fraud checks compare
    assert anonymize("203.0.113.8")[0] != expected
    assert IpAnonymizer(b"t" * 32)("203.0.113.7")[0] != expected  # another secret, another hash
    assert anonymize("2001:db8:1234:5678::1")[1] == "2001:db8:1234::/48"
    assert anonymize("not-an-ip")[1] is None
    assert anonymize("1.2")[1] is None
    assert anonymize("") == (None, None)


def test_request_counts_are_exact_cells() -> None:
    stats = metrics.RequestStats()
    cell = stats.cell("/r/{code}", "GET", 302)
    cell[0] += 2
    stats.observe("/r/{code}", "GET", 302, 0.001)
    assert stats.cell("/r/{code}", "GET", 302) == [3]
    [requests, latency] = list(stats.collect())
    assert [s.value for s in requests.samples] == [3]
    assert any(s.name.endswith("_count") and s.value == 1 for s in latency.samples)


def test_only_plain_hex_digits_make_a_click_id() -> None:
    assert is_click_id("0123456789abcdef0123456789ABCDEF")
    forged = [
        "+123456789abcdef0123456789abcdef",
        "0123456789abcdef_123456789abcdef",
        " 123456789abcdef0123456789abcde ",
        "0x23456789abcdef0123456789abcdef",
    ]
    assert not any(is_click_id(f) for f in forged)
    assert not is_click_id("0123456789abcdef")


def test_a_servers_collector_skips_what_the_imports_made_and_collects_less_often() -> None:
    import gc

    from app import gc_tuning

    before = gc.get_threshold()
    try:
        gc_tuning.tune_for_serving()
        assert gc.get_threshold() == (
            gc_tuning.YOUNG_COLLECTION_EVERY,
            gc_tuning.MIDDLE_EVERY,
            gc_tuning.OLD_EVERY,
        )
        assert gc.get_freeze_count() > 10_000  # the modules, classes and functions loaded
    finally:  # the test process goes on with CPython's defaults
        gc.unfreeze()
        gc.set_threshold(*before)


def test_request_ids_are_unique_hex_and_a_forked_process_has_its_own() -> None:
    ids = [new_request_id() for _ in range(1_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(write, new_request_id())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64)
    os.close(read)
    os.close(write)
    assert child[:16] != ids[0][:16]  # another random prefix: no id of the parent's again
