"""Deployment cooldowns on a clock the test moves: the failure rule, the probe after a
cooldown, doubling, the shared key refused, and the message format replicas exchange."""

from __future__ import annotations

from cognitude.config import UpstreamConfig
from cognitude.providers.cooldowns import WINDOW_S, Cooldowns, decode, encode

D = "mock/gpt-4o-mini"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cooldowns(**kw: float) -> tuple[Cooldowns, Clock, list[tuple[str, float, int]]]:
    clock = Clock()
    cfg = UpstreamConfig(**{"cooldown_s": 30.0, "cooldown_failure_rate": 0.5,
                            "cooldown_min_calls": 4, **kw})  # type: ignore[arg-type]
    cd = Cooldowns(cfg, clock)
    sent: list[tuple[str, float, int]] = []
    cd.publish = lambda d, s, level: sent.append((d, s, level))
    return cd, clock, sent


def test_failures_below_the_minimum_sample_never_cool_down():
    cd, _, sent = cooldowns()
    for _ in range(3):
        cd.failed(D)
    assert not cd.cooled(D) and sent == []
    cd.failed(D)  # the 4th call, all failed: rate 1.0 over the minimum sample
    assert cd.cooled(D) and sent == [(D, 30.0, 0)]


def test_the_rate_is_judged_over_the_calls_of_a_window():
    cd, clock, _ = cooldowns()
    for _ in range(6):
        cd.succeeded(D)
    for _ in range(5):
        cd.failed(D)
    assert not cd.cooled(D)  # 5 of 11 failed: under half
    cd.failed(D)
    assert cd.cooled(D)  # 6 of 12
    other, clock2, _ = cooldowns()
    for _ in range(10):
        other.succeeded(D)
    clock2.now += WINDOW_S + 1  # those successes are old news now
    for _ in range(4):
        other.failed(D)
    assert other.cooled(D)


def test_a_cooldown_ends_and_a_failed_probe_doubles_it():
    cd, clock, sent = cooldowns(cooldown_min_calls=1)
    cd.failed(D)
    assert cd.cooled(D)
    clock.now += 29
    assert cd.cooled(D)
    clock.now += 2
    assert not cd.cooled(D) and cd.cooled_now() == []
    cd.failed(D)  # the first call back fails: twice as long
    assert sent[-1] == (D, 60.0, 1)
    for level in (2, 3, 3):  # up to 8x, no further
        clock.now += 1000
        cd.failed(D)
        assert sent[-1] == (D, 30.0 * 2 ** level, level)
    clock.now += 1000
    cd.succeeded(D)  # the probe answers: the episode is over
    cd.failed(D)
    assert sent[-1] == (D, 30.0, 0)


def test_failures_while_cooled_change_nothing():
    cd, _, sent = cooldowns(cooldown_min_calls=1)
    cd.failed(D)
    for _ in range(5):
        cd.failed(D)  # requests that were in flight, or tried anyway
        cd.failed(D, refused_key=True)
    assert sent == [(D, 30.0, 0)]


def test_a_refused_shared_key_cools_down_at_once():
    cd, _, sent = cooldowns(cooldown_min_calls=100)
    cd.failed(D, refused_key=True)
    assert cd.cooled(D) and sent == [(D, 30.0, 0)] and cd.started == 1


def test_a_success_of_a_cooled_deployment_ends_its_cooldown():
    cd, _, _ = cooldowns(cooldown_min_calls=1)
    cd.failed(D)
    cd.succeeded(D)  # it was tried anyway (the model's only deployment) and answered
    assert not cd.cooled(D)


def test_replicas_exchange_seconds_left_not_times():
    cd, clock, _ = cooldowns()
    message = encode("b/claude sonnet", 12.5, 2)
    assert decode(message) == ("b/claude sonnet", 12.5, 2)
    cd.apply(*decode(message))
    assert cd.cooled("b/claude sonnet")
    clock.now += 12.6
    assert not cd.cooled("b/claude sonnet")
