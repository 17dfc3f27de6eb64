"""The MTA's route model (mta/routes.py) on a clock the tests move.

Route choice by MX preference and fewest sessions, every `mta limit` (counts
and delays), route errors and penalties, the temporary failures of a relay
with no usable route, source cycling and HELO per source.  A hypothesis
state machine drives random sessions over two relays sharing hosts and
checks no limit is ever exceeded.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from postillion.errors import LookupUnavailable, TempFail
from postillion.mta.limits import SCOPES, MtaLimits
from postillion.mta.routes import (
    FORGET_AFTER,
    LIMIT_RECHECK,
    ErrorKind,
    Host,
    MtaState,
    Relay,
    Route,
    RouteTable,
    Source,
    Wait,
    helo_name,
)

#: No delays, so only the counts decide (most tests want that).
FAST = MtaLimits(conn_delay_route=0, conn_delay_relay=0, reconn_delay_route=0)
RELAY = Relay("example.com")
MXS = [(10, "mx1.example.com", ["192.0.2.1"]),
       (10, "mx2.example.com", ["192.0.2.2"]),
       (20, "backup.example.com", ["192.0.2.9"])]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def move(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def table(clock: Clock, mxs=MXS, limits: MtaLimits = FAST, relay: Relay = RELAY,
          state: MtaState | None = None, **kw) -> RouteTable:
    return RouteTable(relay, limits, state or MtaState(clock), mxs, **kw)


def open_one(t: RouteTable) -> Route:
    route = t.choose()
    assert isinstance(route, Route), route
    t.session_opened(route)
    return route


def prove(t: RouteTable, route: Route) -> None:
    t.route_ok(route)


# ------------------------------------------------------------------ choice


def test_best_preference_first_and_spread_over_equal_preference(clock):
    t = table(clock)
    first = open_one(t)
    assert first.host.preference == 10 and first.host.address == "192.0.2.1"
    prove(t, first)
    second = open_one(t)              # fewest sessions: the other equal MX
    assert second.host.address == "192.0.2.2"
    prove(t, second)
    third = open_one(t)               # a tie again: the one connected least recently
    assert third.host.address == "192.0.2.1"
    fourth = open_one(t)
    assert fourth.host.address == "192.0.2.2"
    assert t.health(first).sessions == 2 and t.health(second).sessions == 2


def test_fewest_sessions_wins(clock):
    t = table(clock)
    a = open_one(t)
    prove(t, a)
    b = open_one(t)
    prove(t, b)
    t.session_opened(a)               # a: 2 sessions, b: 1
    assert t.choose() == b


def test_mx_names_and_preference_ride_along_but_addresses_are_the_identity():
    assert Host("192.0.2.1", 10, "a") == Host("192.0.2.1", 20, "b")
    assert Host("2001:DB8::1").address == "2001:db8::1"
    assert hash(Route(Source(), Host("192.0.2.1", 5))) == hash(Route(Source(), Host("192.0.2.1")))
    with pytest.raises(ValueError):
        Host("not-an-address")


def test_a_level_waiting_on_a_limit_does_not_spill_to_a_worse_mx(clock):
    limits = replace(FAST, max_conn_per_host=1)
    t = table(clock, limits=limits)
    a = open_one(t)
    prove(t, a)
    b = open_one(t)
    prove(t, b)
    wait = t.choose()
    assert wait == Wait("max-conn-per-host reached", clock.now + 5)
    assert wait.error is None
    t.session_closed(a)
    assert t.choose() == a


def test_a_level_with_only_disabled_routes_falls_to_the_next(clock):
    t = table(clock)
    for _ in range(2):
        route = open_one(t)
        assert t.route_error(route, "connection refused") == 15
        t.session_closed(route)
    backup = t.choose()
    assert isinstance(backup, Route) and backup.host.address == "192.0.2.9"


def test_unproven_route_is_not_used_twice_at_once(clock):
    t = table(clock, mxs=[(0, "only.example.com", ["192.0.2.1"])])
    route = open_one(t)
    assert t.choose() == Wait("unproven route in use", clock.now + 5)
    t.route_ok(route)
    assert t.choose() == route


def test_backup_uses_only_strictly_better_mxs(clock):
    t = table(clock, backup_preference=10)
    assert t.hosts == ()
    wait = t.choose()
    assert isinstance(wait, Wait) and wait.error is not None
    assert wait.error.reply.text == "No valid route to remote MX"
    t.set_hosts(MXS, backup_preference=20)
    assert {h.address for h in t.hosts} == {"192.0.2.1", "192.0.2.2"}


def test_max_mx_tried_caps_the_mx_names(clock):
    t = table(clock, limits=replace(FAST, max_mx_tried=1))
    assert [h.name for h in t.hosts] == ["mx1.example.com"]


def test_an_address_under_two_mxs_is_one_host_at_its_best_preference(clock):
    t = table(clock, mxs=[(20, "b.example.com", ["192.0.2.1"]), (10, "a.example.com", ["192.0.2.1"])])
    assert [(h.address, h.preference, h.name) for h in t.hosts] == [("192.0.2.1", 10, "a.example.com")]


def test_host_set_refresh_keeps_route_health(clock):
    t = table(clock)
    route = open_one(t)
    t.route_error(route, "refused")
    t.session_closed(route)
    t.set_hosts(list(reversed(MXS)))
    assert t.health(route).disabled_until == clock.now + 15
    assert t.choose().host.address == "192.0.2.2"


# ------------------------------------------------------------------ limits


@pytest.mark.parametrize("scope", ["relay", "domain", "source", "connector"])
def test_max_conn_per_scope(clock, scope):
    limits = replace(FAST, **{f"max_conn_per_{scope}": 2})
    t = table(clock, limits=limits)
    for _ in range(2):
        prove(t, open_one(t))
    wait = t.choose()
    assert isinstance(wait, Wait) and wait.reason == f"max-conn-per-{scope} reached"
    assert wait.until == clock.now + LIMIT_RECHECK and wait.error is None


def test_max_conn_per_route(clock):
    t = table(clock, mxs=[(0, "only.example.com", ["192.0.2.1"])],
              limits=replace(FAST, max_conn_per_route=2))
    prove(t, open_one(t))
    open_one(t)
    assert t.choose() == Wait("max-conn-per-route reached", clock.now + 5)


def test_a_limit_of_zero_holds_the_mail(clock):
    t = table(clock, limits=replace(FAST, max_conn_per_domain=0))
    assert t.choose() == Wait("max-conn-per-domain reached", clock.now + 5)


def test_host_and_domain_limits_are_shared_by_relays(clock):
    state = MtaState(clock)
    limits = replace(FAST, max_conn_per_host=1)
    plain = table(clock, state=state, limits=limits)
    tls = table(clock, state=state, limits=limits, relay=Relay("example.com", scheme="smtp+tls"))
    a = open_one(plain)
    prove(plain, a)
    b = open_one(tls)
    assert b.host != a.host           # a's host is at its limit for every relay
    domain_limited = replace(FAST, max_conn_per_domain=2)
    third = table(clock, state=state, limits=domain_limited,
                  relay=Relay("example.com", port=2525))
    assert third.choose() == Wait("max-conn-per-domain reached", clock.now + 5)


def test_default_delays_space_the_connects(clock):
    t = table(clock, limits=MtaLimits())
    first = open_one(t)
    assert t.choose() == Wait("relay or domain connect delay", clock.now + 2)   # conn-delay-relay
    clock.move(2)
    second = open_one(t)
    assert second.host != first.host  # the first route is unproven and in use
    prove(t, first)
    prove(t, second)
    clock.move(2)                     # 4 s after the first connect: conn-delay-route is 5 s
    wait = t.choose()
    assert isinstance(wait, Wait) and wait.until == 1005.0 and wait.error is None
    clock.move(1)
    assert t.choose() == first


def test_relay_and_domain_delays_wait_for_the_later(clock):
    t = table(clock, limits=replace(FAST, conn_delay_relay=2, conn_delay_domain=7))
    open_one(t)
    assert t.choose() == Wait("relay or domain connect delay", clock.now + 7)


def test_reconn_delay_route_after_a_disconnect(clock):
    limits = replace(FAST, reconn_delay_route=3)
    t = table(clock, mxs=[(0, "only.example.com", ["192.0.2.1"])], limits=limits)
    route = open_one(t)
    prove(t, route)
    clock.move(10)
    t.session_closed(route)
    assert t.choose() == Wait("connect delay", clock.now + 3)
    clock.move(3)
    assert t.choose() == route


@pytest.mark.parametrize("scope", ["host", "source", "connector", "domain"])
def test_other_conn_delays(clock, scope):
    limits = replace(FAST, **{f"conn_delay_{scope}": 7})
    t = table(clock, mxs=[(0, "only.example.com", ["192.0.2.1"])], limits=limits)
    prove(t, open_one(t))
    wait = t.choose()
    assert isinstance(wait, Wait) and wait.until == clock.now + 7 and wait.error is None
    clock.move(7)
    assert isinstance(t.choose(), Route)


def test_inet4_only_skips_ipv6_hosts(clock):
    mxs = [(10, "mx.example.com", ["2001:db8::1", "192.0.2.1"])]
    t = table(clock, mxs=mxs, limits=replace(FAST, inet4=True, inet6=False))
    assert open_one(t).host.address == "192.0.2.1"
    only6 = table(clock, mxs=[(10, "mx.example.com", ["2001:db8::1"])],
                  limits=replace(FAST, inet4=True, inet6=False))
    wait = only6.choose()
    assert wait.error is not None and wait.error.reply.text == "No valid route to remote MX"
    assert "address family" in wait.reason


def test_a_source_only_reaches_hosts_of_its_family(clock):
    mxs = [(10, "mx.example.com", ["2001:db8::1", "192.0.2.1"])]
    t = table(clock, mxs=mxs, sources=["2001:db8::25"])
    assert open_one(t).host.address == "2001:db8::1"


# ------------------------------------------------------------------ errors


def test_dead_host_skipped_then_tried_again_after_its_penalty(clock):
    t = table(clock, mxs=[(10, "mx1.example.com", ["192.0.2.1"]),
                          (10, "mx2.example.com", ["192.0.2.2"])])
    dead = open_one(t)
    assert t.route_error(dead, "connection refused") == 15
    t.session_closed(dead)
    alive = open_one(t)
    assert alive.host.address == "192.0.2.2"
    prove(t, alive)
    t.session_closed(alive)
    clock.move(14)
    assert t.choose() == alive
    clock.move(1)                      # 15 s: re-enabled, and never connected since
    assert t.choose() == dead
    health = t.health(dead)
    assert health.disabled_until is None and not health.proven
    assert health.penalty == 0 and health.last_error == "connection refused"


def test_penalty_grows_while_the_host_stays_dead_and_is_capped(clock):
    t = table(clock, mxs=[(0, "dead.example.com", ["192.0.2.1"])])
    delays = []
    for _ in range(20):
        route = open_one(t)
        delays.append(t.route_error(route, "timeout"))
        t.session_closed(route)
        wait = t.choose()
        assert wait.until == clock.now + delays[-1]
        clock.move(delays[-1])
    assert delays[:5] == [15, 60, 135, 240, 375]
    assert delays[14] == 15 * 15 * 15
    assert delays[15:] == [3600] * 5
    assert t.health(route).penalty == 15      # 16, minus the re-enable's point


def test_a_re_enable_takes_one_penalty_point_off(clock):
    t = table(clock, mxs=[(0, "flaky.example.com", ["192.0.2.1"])])
    for expected in (15, 60, 135):
        route = open_one(t)
        assert t.route_error(route, "refused") == expected
        t.session_closed(route)
        clock.move(expected)
    route = open_one(t)               # the probe after the 135 s works
    assert t.health(route).penalty == 2
    t.route_ok(route)
    t.session_closed(route)
    assert t.health(route).penalty == 2
    for _ in range(4):                # proven now: four errors in a row to disable it
        t.session_opened(route)
    assert [t.route_error(route, "refused") for _ in range(4)] == [None, None, None, 135]
    for _ in range(4):
        t.session_closed(route)
    assert t.health(route).penalty == 3 and not t.health(route).proven


def test_errors_on_a_proven_route_reset_by_success(clock):
    t = table(clock, mxs=[(0, "mx.example.com", ["192.0.2.1"])])
    route = open_one(t)
    t.route_ok(route)
    for _ in range(3):
        assert t.route_error(route, "421 busy", ErrorKind.SMTP) is None
    t.route_ok(route)
    assert t.health(route).errors == 0
    assert t.route_error(route, "421 busy", ErrorKind.SMTP) is None


def test_a_probe_ending_without_a_verdict_failed(clock):
    t = table(clock, mxs=[(0, "mx.example.com", ["192.0.2.1"])])
    route = open_one(t)
    assert t.session_closed(route) == 15
    assert t.health(route).last_error == "session ended before the route was proven"


def test_a_failed_probe_is_penalised_once(clock):
    t = table(clock, mxs=[(0, "mx.example.com", ["192.0.2.1"])])
    route = open_one(t)
    assert t.route_error(route, "refused") == 15
    clock.move(20)                    # the session outlives the disable time
    assert t.session_closed(route) is None
    assert t.health(route).penalty == 0


def test_a_proven_route_closing_normally_is_not_penalised(clock):
    t = table(clock, mxs=[(0, "mx.example.com", ["192.0.2.1"])])
    route = open_one(t)
    t.route_ok(route)
    assert t.session_closed(route) is None
    assert t.health(route).penalty == 0 and t.health(route).proven


def test_a_dead_route_is_skipped_by_every_relay(clock):
    state = MtaState(clock)
    one = table(clock, state=state, mxs=[(0, "mx.example.com", ["192.0.2.1"])])
    route = open_one(one)
    one.route_error(route, "refused")
    one.session_closed(route)
    other = table(clock, state=state, mxs=[(0, "mx.example.com", ["192.0.2.1"])],
                  relay=Relay("example.com", scheme="smtp+tls"))
    assert other.choose().error is not None


def test_all_routes_dead_network_is_a_tempfail(clock):
    t = table(clock)
    for _ in range(3):
        route = open_one(t)
        t.route_error(route, "connection timed out")
        t.session_closed(route)
    wait = t.choose()
    assert isinstance(wait, Wait) and isinstance(wait.error, TempFail)
    # The latest route error, with its host, says what happened.
    assert str(wait.error.reply) == ("451 4.4.1 Network error on destination MXs"
                                     f" ({route.host.address}: connection timed out)")
    assert wait.until == clock.now + 15
    assert "example.com" in wait.error.reason


def test_all_routes_refusing_smtp_is_no_valid_route(clock):
    t = table(clock, mxs=[(0, "mx.example.com", ["192.0.2.1"])])
    route = open_one(t)
    t.route_error(route, "554 go away", ErrorKind.SMTP)
    t.session_closed(route)
    wait = t.choose()
    assert str(wait.error.reply) == "451 4.4.0 No valid route to remote MX (192.0.2.1: 554 go away)"


def test_no_host_at_all_is_no_valid_route(clock):
    wait = table(clock, mxs=[]).choose()
    assert wait.error is not None and wait.error.reply.code == 451
    assert wait.until is None


def test_disabled_and_held_back_waits_without_error(clock):
    mxs = [(0, "a.example.com", ["192.0.2.1"]), (0, "b.example.com", ["192.0.2.2"])]
    t = table(clock, mxs=mxs, limits=replace(FAST, max_conn_per_host=1))
    dead = open_one(t)
    t.route_error(dead, "refused")
    t.session_closed(dead)
    busy = open_one(t)
    assert busy != dead
    wait = t.choose()                 # b at its limit: ask again soon, not an error
    assert wait.error is None and wait.until == clock.now + LIMIT_RECHECK
    slow = table(clock, mxs=mxs, limits=replace(FAST, conn_delay_route=20))
    dead = open_one(slow)
    slow.route_error(dead, "refused")
    slow.session_closed(dead)
    other = open_one(slow)
    slow.route_ok(other)
    wait = slow.choose()              # a back in 15 s comes before b's 20 s delay
    assert wait == Wait("connect delay", clock.now + 15) and wait.error is None


def test_report_misuse_is_refused(clock):
    t = table(clock)
    stranger = Route(Source(), Host("198.51.100.1"))
    with pytest.raises(ValueError):
        t.session_opened(stranger)
    with pytest.raises(ValueError):
        t.session_closed(Route(Source(), Host("192.0.2.1")))


def test_idle_entries_are_forgotten(clock):
    state = MtaState(clock)
    t = table(clock, state=state)
    route = open_one(t)
    t.route_ok(route)
    t.session_closed(route)
    assert state.routes and state.hosts
    clock.move(FORGET_AFTER + 1)
    state.prune(clock.now)
    assert not state.routes and not state.hosts and not state.sources and not state.domains


# ------------------------------------------------------------------ sources and HELO


def test_sources_are_cycled_across_sessions(clock):
    t = table(clock, sources=["192.0.2.101", "192.0.2.102", "192.0.2.103"])
    seen = []
    for _ in range(6):
        route = open_one(t)
        t.route_ok(route)
        seen.append(route.source.address)
    assert seen == ["192.0.2.101", "192.0.2.102", "192.0.2.103"] * 2


def test_a_source_at_its_limit_is_passed_over(clock):
    t = table(clock, sources=["192.0.2.101", "192.0.2.102"],
              limits=replace(FAST, max_conn_per_connector=1))
    a = open_one(t)
    b = open_one(t)
    assert {a.source.address, b.source.address} == {"192.0.2.101", "192.0.2.102"}
    assert t.choose() == Wait("max-conn-per-connector reached", clock.now + 5)


def test_helo_per_source():
    relay = Relay("example.com", helo="relay.example.net", helo_src="helos")
    names = {"192.0.2.101": "out1.example.net"}
    assert helo_name(Source("192.0.2.101"), relay, "mx.example.net", names) == "out1.example.net"
    assert helo_name(Source("192.0.2.102"), relay, "mx.example.net", names) == "relay.example.net"
    assert helo_name(Source(), relay, "mx.example.net", names) == "relay.example.net"
    assert helo_name(Source("192.0.2.101"), Relay("example.com"), "mx.example.net", names) \
        == "mx.example.net"
    with pytest.raises(LookupUnavailable):
        helo_name(Source("192.0.2.101"), relay, "mx", {"192.0.2.101": "bad name\r\nMAIL"})


# ------------------------------------------------------------------ property


ADDRESSES = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::1"]


class NeverBeyondLimits(RuleBasedStateMachine):
    """Random sessions, errors and clock moves over two relays sharing hosts."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.state = MtaState(self.clock)
        self.tables: list[RouteTable] = []
        self.open: list[tuple[RouteTable, Route]] = []

    @initialize(data=st.data())
    def setup(self, data):
        small = st.sampled_from([0, 1, 2, 3, 3, 4])
        delay = st.sampled_from([0, 0, 0, 1, 5])
        limits = MtaLimits(**{f"max_conn_per_{s}": data.draw(small) for s in SCOPES},
                           **{f"conn_delay_{s}": data.draw(delay) for s in SCOPES},
                           **{f"reconn_delay_{s}": data.draw(delay) for s in SCOPES})
        mxs = [(data.draw(st.integers(0, 2)), f"mx{i}.example.com", [a])
               for i, a in enumerate(ADDRESSES)]
        sources = data.draw(st.sampled_from([[None], ["192.0.2.101", "192.0.2.102"]]))
        for relay in (Relay("example.com"), Relay("example.com", scheme="smtp+tls")):
            self.tables.append(RouteTable(relay, limits, self.state, mxs, sources))

    @rule(which=st.integers(0, 1))
    def open_session(self, which):
        t = self.tables[which]
        route = t.choose()
        if isinstance(route, Route):
            health = t.health(route)
            assert health.disabled_until is None
            assert health.proven or health.sessions == 0     # never two unproven at once
            t.session_opened(route)
            self.open.append((t, route))
        else:
            assert route.until is None or route.until > self.clock.now

    @precondition(lambda self: self.open)
    @rule(data=st.data(), outcome=st.sampled_from(["ok", "error", "smtp", "silent"]))
    def close_session(self, data, outcome):
        t, route = self.open.pop(data.draw(st.integers(0, len(self.open) - 1)))
        if outcome == "ok":
            t.route_ok(route)
        elif outcome in ("error", "smtp"):
            kind = ErrorKind.NETWORK if outcome == "error" else ErrorKind.SMTP
            delay = t.route_error(route, "boom", kind)
            assert delay is None or 15 <= delay <= 3600
        t.session_closed(route)

    @rule(seconds=st.sampled_from([0.5, 1, 3, 15, 100, 4000]))
    def move(self, seconds):
        self.clock.move(seconds)

    @invariant()
    def within_limits(self):
        limits = self.tables[0].limits
        count: dict[tuple[str, object], int] = {}

        def bump(key):
            count[key] = count.get(key, 0) + 1
            return count[key]

        for t, route in self.open:
            assert bump(("host", route.host.address)) <= limits.max_conn_per_host
            assert bump(("route", route)) <= limits.max_conn_per_route
            assert bump(("source", route.source)) <= limits.max_conn_per_source
            assert bump(("connector", (id(t), route.source))) <= limits.max_conn_per_connector
            assert bump(("relay", id(t))) <= limits.max_conn_per_relay
            assert bump(("domain", t.relay.domain)) <= limits.max_conn_per_domain
        for t in self.tables:
            assert t.sessions == sum(1 for u, _ in self.open if u is t)
            for route in {r for u, r in self.open if u is t}:
                health = t.health(route)
                assert health.sessions == sum(1 for _, r in self.open if r == route)
                assert 0 <= health.penalty <= limits.max_penalty


NeverBeyondLimits.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                               deadline=None)
test_never_beyond_limits = NeverBeyondLimits.TestCase


@given(st.lists(st.tuples(st.integers(0, 65535), st.sampled_from(["a", "b", "c"]),
                          st.lists(st.sampled_from(ADDRESSES), max_size=3)), max_size=6))
def test_hosts_sorted_unique_and_bounded(mxs):
    t = RouteTable(RELAY, MtaLimits(), MtaState(Clock()), mxs)
    prefs = [h.preference for h in t.hosts]
    assert prefs == sorted(prefs)
    assert len({h.address for h in t.hosts}) == len(t.hosts)
    assert len({h.name for h in t.hosts}) <= MtaLimits().max_mx_tried
