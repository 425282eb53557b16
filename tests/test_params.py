"""protocols/params.py: every protocol's typed parameters refuse what cannot work,
before anything is sent, with a message that says what to change."""

import pytest

import protocols
from protocols import ParameterError

BAD = {
    "capc": [({"queries": 0}, "queries must be at least 1"), ({"queries": -5}, "queries"),
             ({"mode": "fast"}, "mode must be"), ({"sigma": 1}, "unknown parameter"),
             ({"batch_size": "ten"}, "batch_size' must be int")],
    "argmax2pc": [({"batch": 0}, "batch must be at least 1"), ({"classes": 1}, "classes must be")],
    "hcsetup": [({"levels": 0}, "levels"), ({"lo": 1, "hi": 0}, "hi must be greater than lo"),
                ({"threshold": "3"}, "threshold' must be int")],
    "hcrecover": [({}, "recovering"), ({"recovering": "o1", "timeout": 0}, "timeout")],
    "hcfl": [({"rounds": 0}, "rounds"), ({"encoding": "zip"}, "encoding")],
}


@pytest.mark.parametrize("protocol", sorted(BAD))
def test_bad_values_are_refused_with_what_to_change(protocol):
    for params, message in BAD[protocol]:
        with pytest.raises(ParameterError, match=message):
            protocols.check_params(protocol, params)


def test_every_registered_protocol_has_frozen_params_with_working_defaults():
    for name in protocols.protocols():
        params = {"recovering": "o1"} if name == "hcrecover" else {}
        typed = protocols.check_params(name, params)
        with pytest.raises(AttributeError):
            typed.timeout = 1.0           # frozen
        assert type(typed).from_dict(typed.to_dict()) == typed


def test_integral_floats_from_json_become_ints_and_null_is_kept_where_allowed():
    p = protocols.check_params("capc", {"queries": 20.0, "threshold": None})
    assert p.queries == 20 and isinstance(p.queries, int) and p.threshold is None
    with pytest.raises(ParameterError, match="needs a value"):
        protocols.check_params("capc", {"queries": None})


def test_unknown_protocol_is_named():
    with pytest.raises(ParameterError, match="unknown protocol 'nosuchprotocol'"):
        protocols.load("nosuchprotocol")
