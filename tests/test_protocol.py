import math

import pytest

from cgt_twin.data import CampaignValidationError, Event, EventKind, Medium, Protocol

FEED = Medium("feed", {"glucose": 400.0})


def test_events_at_one_time_follow_the_time_ties():
    events = [Event(0, "sample", 0.004, "L"),
              Event(24, "setpoint", 34.0, "degC", target="temperature"),
              Event(24, "bolus", 0.03, "L", medium="feed"),
              Event(24, "sample", 0.004, "L")]
    protocol = Protocol(1.0, tuple(events), {"feed": FEED})
    assert [e.kind for e in protocol.events] == [EventKind.SAMPLE, EventKind.SAMPLE, EventKind.BOLUS,
                                                 EventKind.SETPOINT]


def test_events_listed_in_any_order_are_put_in_time_order():
    events = (Event(24, "sample", 0.004, "L"), Event(0, "sample", 0.004, "L"))
    assert [e.time_h for e in Protocol(1.0, events).events] == [0, 24]
    assert [e.time_h for e in Protocol(1.0).with_events(events).events] == [0, 24]


def test_volume_profile_integrates_rates_and_jumps():
    events = (Event(0, "feed_rate", 0.01, "L/h", medium="feed"), Event(10, "feed_rate", 0.0, "L/h", medium="feed"),
              Event(20, "bolus", 0.1, "L", medium="feed"), Event(20, "sample", 0.05, "L"))
    profile = Protocol(1.0, events, {"feed": FEED}).volume_profile()
    final = profile[-1][2]
    assert final == pytest.approx(1.0 + 0.1 + 0.1 - 0.05)


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        (dict(initial_volume=-1.0), "initial volume must be a positive"),
        (dict(initial_volume=1.0, events=(Event(1, "bolus", -0.1, "L", medium="feed"),)), "amount must be >= 0"),
        (dict(initial_volume=1.0, events=(Event(-1, "sample", 0.1, "L"),)), "time must be finite and >= 0"),
        (dict(initial_volume=1.0, events=(Event(1, "bolus", 0.1, "L", medium="nope"),)), "unknown medium 'nope'"),
        (dict(initial_volume=1.0, max_volume=1.05, events=(Event(1, "bolus", 0.1, "L", medium="feed"),)),
         "exceeds max_volume"),
        (dict(initial_volume=1.0, events=(Event(1, "sample", 2.0, "L"),)), "volume becomes negative"),
        (dict(initial_volume=1.0, events=(Event(5, "harvest"), Event(6, "sample", 0.1, "L"))), "after the harvest"),
        (dict(initial_volume=1.0, events=(Event(5, "setpoint", 30.0, "degC", target="pressure"),)),
         "set-point target"),
        (dict(initial_volume=1.0, events=(Event(5, "exchange", 1.5, "1", medium="feed"),)), "within 0..1"),
        (dict(initial_volume=1.0, media={"bad": Medium("bad", {"glucoze": 1.0})}), "unknown species 'glucoze'"),
        (dict(initial_volume=1.0, events=(Event(5, "exchange", 1.5, "L", medium="feed"),)),
         "more than the 1 L in the vessel"),
    ],
)
def test_bad_protocols_are_rejected_at_construction(kwargs, phrase):
    kwargs.setdefault("media", {"feed": FEED})
    with pytest.raises(CampaignValidationError) as info:
        Protocol(**kwargs)
    assert phrase in str(info.value)


def test_unknown_species_suggests_the_nearest_name():
    with pytest.raises(CampaignValidationError, match="did you mean 'glucose'"):
        Protocol(1.0, media={"bad": Medium("bad", {"glucoze": 1.0})})


def test_protocol_is_immutable_and_harvest_time():
    protocol = Protocol(1.0, (Event(100, "harvest"),))
    assert protocol.harvest_time == 100
    with pytest.raises(AttributeError):
        protocol.initial_volume = 2.0
    assert math.isnan(protocol.events[0].amount)
