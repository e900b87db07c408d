"""Rate limits (``engine/ratelimit.py``): per API key, per client address, and on failed
authentications, answered 429 with ``Retry-After`` and OpenAI's error JSON, the same on the
fast front and on aiohttp's path, counted in ``lmtui_rate_limited_total``; the tables stay
bounded whatever a client sends.

Probed as an attacker would: 500 wrong keys in 0.2 s were all judged (and all 401).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from _routing import MSG, client, routed

from lmtui.config import RouterConfig
from lmtui.core.model import NodeKind
from lmtui.engine.ratelimit import Buckets, RateLimits, address_key
from lmtui.sim import SimModel, SimNodeSpec

BODY = b'{"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'
JSON = {"Content-Type": "application/json"}


def lms() -> SimNodeSpec:
    return SimNodeSpec(
        name="a",
        kind=NodeKind.LMSTUDIO,
        memory_gb=64,
        models=[SimModel("m1", 4.0)],
        loaded=["m1"],
        parallel=8,
        version="0.4.2",
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the buckets ------------------------------------------------------------------------


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    clock = Clock()
    b = Buckets(rate=2.0, burst=3, clock=clock)
    assert [b.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("k") == pytest.approx(0.5)  # the next token comes in 1/rate s
    assert b.wait("k") == pytest.approx(0.5)
    assert b.take("other") == 0.0  # keys do not share
    clock.now += 0.5
    assert b.take("k") == 0.0
    assert b.take("k") == pytest.approx(0.5)
    clock.now += 10  # idle: the bucket refills to its burst, no further
    assert [b.take("k") for _ in range(4)] == [0.0, 0.0, 0.0, pytest.approx(0.5)]
    # A refused request spends nothing: waiting the time it was told is enough.
    clock.now += 0.5
    assert b.take("k") == 0.0


def test_tables_stay_bounded_under_a_flood_of_keys() -> None:
    clock = Clock()
    b = Buckets(rate=1.0, burst=5, clock=clock, max_entries=1000)
    for i in range(20_000):
        b.take(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")
        assert len(b) <= 1000
    # Entries that refilled are dropped first, and losslessly: a full bucket is no entry.
    small = Buckets(rate=1.0, burst=5, clock=clock, max_entries=10)
    for i in range(9):
        small.take(f"idle-{i}")
    clock.now += 100  # they refill
    for _ in range(5):
        assert small.take("busy") == 0.0
    assert small.take("busy") > 0 and len(small) == 10
    small.take("new")  # at its bound: the refilled entries go, the busy one stays
    assert len(small) == 2 and small.wait("busy") > 0


def test_sweeps_are_amortized() -> None:
    """A flood costs O(1) per request, not a scan of the table per new key."""
    clock = Clock()
    b = Buckets(rate=1.0, burst=5, clock=clock, max_entries=1000)
    for i in range(20_000):
        b.take(f"k{i}")
    assert 0 < b.sweeps <= 20_000 // 250 + 1  # each sweep frees at least a quarter


def test_an_ipv6_client_counts_by_its_64() -> None:
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::99")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key(None) == "unknown"
    assert address_key("fe80::1%eth0") == address_key("fe80::2")


def test_the_failure_limit_refuses_before_judging() -> None:
    clock = Clock()
    seen: list[str] = []
    limits = RateLimits(
        auth_failure_rate=0.2, auth_failure_burst=3, on_limited=seen.append, clock=clock
    )
    for _ in range(3):
        assert limits.check_failures("192.0.2.1") is None
        limits.auth_failed("192.0.2.1")
    refused = limits.check_failures("192.0.2.1")
    assert refused is not None and refused.limit == "auth_failures"
    assert refused.retry_after == "5"  # one failure more every 1/0.2 s
    assert refused.error[1:] == ("requests", "rate_limit_exceeded")
    assert limits.check_failures("192.0.2.2") is None  # another address is not touched
    clock.now += 5
    assert limits.check_failures("192.0.2.1") is None
    assert seen == ["auth_failures"]


# -- through the router -------------------------------------------------------------------


async def test_500_wrong_keys_are_not_all_judged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default failed-authentication limit: an address gets its burst of wrong keys
    judged (401), then 429 with Retry-After, on both servers and on the control API and
    /metrics too — and the right key is not looked at either until the address has waited."""
    monkeypatch.setenv("LMTUI_KEY", "right-key")
    monkeypatch.setenv("LMTUI_ADMIN", "admin-token")
    router = RouterConfig(api_keys_env=["LMTUI_KEY"], admin_token_env="LMTUI_ADMIN")
    assert (router.auth_failure_burst, router.auth_failure_rate) == (20, 0.2)
    async with routed([lms()], router=router) as (_c, engine):
        base = engine.router_url
        url = f"{base}/v1/chat/completions"
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(limits=limits, timeout=20) as h:
            t0 = time.monotonic()

            async def wrong(i: int) -> httpx.Response:
                key = {"Authorization": f"Bearer guess-{i}", **JSON}
                u = url + "?via=aiohttp" if i % 2 else url  # both servers, interleaved
                return await h.post(u, content=BODY, headers=key)

            answers = await asyncio.gather(*(wrong(i) for i in range(500)))
            elapsed = time.monotonic() - t0
            statuses = [r.status_code for r in answers]
            judged = statuses.count(401)
            # The burst, plus what the rate refilled while the flood ran.
            assert 20 <= judged <= 20 + int(elapsed * 0.2) + 1, (judged, elapsed)
            assert statuses.count(429) == 500 - judged
            limited = next(r for r in answers if r.status_code == 429)
            assert int(limited.headers["Retry-After"]) >= 1
            err = limited.json()["error"]
            assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
            assert "failed authentications" in err["message"]
            fast = next(r for i, r in enumerate(answers) if r.status_code == 429 and i % 2 == 0)
            slow = next(r for i, r in enumerate(answers) if r.status_code == 429 and i % 2)
            assert fast.json()["error"]["code"] == slow.json()["error"]["code"]
            # Not judged: the right key too, and the admin token on the control API.
            right = {"Authorization": "Bearer right-key", **JSON}
            assert (await h.post(url, content=BODY, headers=right)).status_code == 429
            admin = {"Authorization": "Bearer admin-token"}
            r = await h.get(f"{base}/lmtui/v1/state", headers=admin)
            assert r.status_code == 429 and "Retry-After" in r.headers
            assert (await h.get(f"{base}/metrics", headers=right)).status_code == 429
            # Once the address has waited what it was told, it is judged again.
            engine.limits.failures._tat.clear()  # type: ignore[union-attr]  # (no 5 s sleep)
            assert (await h.post(url, content=BODY, headers=right)).status_code == 200
            text = (await h.get(f"{base}/metrics", headers=right)).text
        assert f'lmtui_auth_failures_total{{path="v1"}} {float(judged)}' in text
        series = 'lmtui_rate_limited_total{limit="auth_failures"} '
        counted = float(text.split(series)[1].split()[0])
        assert counted == 500 - judged + 3  # the flood, the right key, state, /metrics


async def test_a_key_over_its_rate_gets_429_and_others_do_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEY_A", "key-a")
    monkeypatch.setenv("KEY_B", "key-b")
    router = RouterConfig(api_keys_env=["KEY_A", "KEY_B"], key_rate_limit=0.5, key_rate_burst=3)
    async with routed([lms()], router=router) as (_c, engine):
        url = f"{engine.router_url}/v1/chat/completions"
        a = {"Authorization": "Bearer key-a", **JSON}
        async with httpx.AsyncClient() as h:
            # The burst, shared by both servers: two on the fast front, one on aiohttp's.
            for u in (url, url + "?via=aiohttp", url):
                assert (await h.post(u, content=BODY, headers=a)).status_code == 200
            for u in (url, url + "?via=aiohttp"):
                r = await h.post(u, content=BODY, headers=a)
                assert r.status_code == 429, r.text
                assert r.headers["Retry-After"] == "2"  # a token every 2 s
                err = r.json()["error"]
                assert err == {
                    "message": err["message"],
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
                assert "key_rate_limit = 0.5/s" in err["message"]
        # The other key has its own bucket; the openai client sees a RateLimitError.
        b = client(engine, api_key="key-b")
        for _ in range(3):
            await b.chat.completions.create(model="m1", messages=MSG, max_tokens=2)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as e:
            await b.chat.completions.create(model="m1", messages=MSG, max_tokens=2)  # type: ignore[arg-type]
        assert e.value.code == "rate_limit_exceeded"
        assert e.value.response.headers["Retry-After"] == "2"
        text = engine.metrics.render()[0].decode()
        assert 'lmtui_rate_limited_total{limit="key"} 3.0' in text
        assert len(engine.limits.by_key or ()) == 2  # one entry per key, never more


async def test_an_address_over_its_rate_gets_429_without_keys() -> None:
    router = RouterConfig(address_rate_limit=1.0, address_rate_burst=4)
    async with routed([lms()], router=router) as (_c, engine):
        url = f"{engine.router_url}/v1/chat/completions"
        async with httpx.AsyncClient() as h:
            statuses = [
                (await h.post(url, content=BODY, headers=JSON)).status_code for _ in range(6)
            ]
            # 4 at once, then one a second: the 6 requests take far less than a second.
            assert statuses[:4] == [200] * 4 and statuses[5] == 429
            r = await h.get(f"{engine.router_url}/v1/models")  # /v1 on aiohttp counts too
            assert r.status_code == 429 and r.headers["Retry-After"] == "1"
            assert "address_rate_limit" in r.json()["error"]["message"]
        text = engine.metrics.render()[0].decode()
        assert 'lmtui_rate_limited_total{limit="address"}' in text


async def test_no_limit_by_default_for_a_busy_client() -> None:
    """Off by default: 300 requests as fast as one client sends them all succeed."""
    router = RouterConfig()
    assert router.key_rate_limit == router.address_rate_limit == 0
    async with routed([lms()], router=router) as (_c, engine):
        url = f"{engine.router_url}/v1/chat/completions"
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=16)) as h:
            sem = asyncio.Semaphore(16)

            async def one() -> int:
                async with sem:
                    return (await h.post(url, content=BODY, headers=JSON)).status_code

            statuses = await asyncio.gather(*(one() for _ in range(300)))
        assert statuses == [200] * 300
        assert engine.limits.by_address is None and engine.limits.by_key is None
