"""The compiled proto3 JSON codec matches json_format exactly and reports precise violations."""

from __future__ import annotations

import math

import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from towerco.sites.v1 import sites_pb2
from towerco.testing.v1 import transcoding_pb2 as pb

from gateway.transcode import codec

I32 = st.integers(-(2**31), 2**31 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)  # the edge refuses NUL (tested below)
DOUBLE = st.floats(allow_nan=True, allow_infinity=True)
FLOAT32 = st.floats(width=32, min_value=-(2.0**127), max_value=2.0**127)  # json_format refuses its own FLT_MAX output
COLOUR = st.sampled_from([0, 1, 2, 7])  # 7: an unknown number, kept as a number
SECS = st.integers(-62135596800, 253402300799)
NANOS = st.integers(0, 999_999_999)


@st.composite
def inners(draw, depth: int = 0) -> pb.Inner:
    m = pb.Inner(label=draw(TEXT), count=draw(I64))
    if depth < 2 and draw(st.booleans()):
        m.child.CopyFrom(draw(inners(depth + 1)))
    return m


@st.composite
def everything(draw) -> pb.Everything:
    m = pb.Everything(
        text=draw(TEXT), i32=draw(I32), i64=draw(I64), u32=draw(U32), u64=draw(U64), s32=draw(I32),
        s64=draw(I64), f32=draw(U32), f64=draw(U64), sf32=draw(I32), sf64=draw(I64), fl=draw(FLOAT32),
        db=draw(DOUBLE), flag=draw(st.booleans()), data=draw(st.binary(max_size=16)), colour=draw(COLOUR),
        renamed=draw(TEXT),
    )
    m.tags.extend(draw(st.lists(TEXT, max_size=3)))
    m.colours.extend(draw(st.lists(COLOUR, max_size=3)))
    m.numbers.extend(draw(st.lists(I64, max_size=3)))
    if draw(st.booleans()):
        m.inner.CopyFrom(draw(inners()))
    for item in draw(st.lists(inners(), max_size=2)):
        m.inners.add().CopyFrom(item)
    for k, v in draw(st.dictionaries(TEXT, I64, max_size=3)).items():
        m.counts[k] = v
    for k, v in draw(st.dictionaries(I32, inners(), max_size=2)).items():
        m.by_id[k].CopyFrom(v)
    for k, v in draw(st.dictionaries(st.booleans(), TEXT, max_size=2)).items():
        m.by_flag[k] = v
    if draw(st.booleans()):
        m.when.seconds, m.when.nanos = draw(SECS), draw(NANOS)
    if draw(st.booleans()):
        s = draw(st.integers(-315576000000, 315576000000))
        n = draw(NANOS) * (-1 if s < 0 else 1) if s != 0 else draw(st.integers(-999_999_999, 999_999_999))
        m.took.seconds, m.took.nanos = s, n
    if draw(st.booleans()):
        m.mask.paths.extend(draw(st.lists(st.sampled_from(["a", "b_c", "d_e.f_g"]), max_size=3)))
    if draw(st.booleans()):
        m.maybe_count.value = draw(I64)
    if draw(st.booleans()):
        m.maybe_text.value = draw(TEXT)
    if draw(st.booleans()):
        m.maybe_flag.value = draw(st.booleans())
    if draw(st.booleans()):
        m.maybe_double.value = draw(DOUBLE)
    if draw(st.booleans()):
        m.maybe_bytes.value = draw(st.binary(max_size=8))
    if draw(st.booleans()):
        m.maybe_u32.value = draw(U32)
    if draw(st.booleans()):
        m.attributes.update({"a": 1.5, "b": [True, None, "x"], "c": {"d": "e"}})
    if draw(st.booleans()):
        m.anything.string_value = draw(TEXT)
    if draw(st.booleans()):
        m.list.extend([1.0, "two", None])
    choice = draw(st.sampled_from(["", "text", "number"]))
    if choice == "text":
        m.choice_text = draw(TEXT)
    elif choice == "number":
        m.choice_number = draw(I32)
    if draw(st.booleans()):
        m.opt = draw(I32)
    m.times.add(seconds=draw(SECS), nanos=draw(NANOS))
    return m


def _same(a, b) -> bool:
    """Equality that treats NaN as equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b and type(a) is type(b)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(everything())
def test_encode_is_exactly_json_format(msg: pb.Everything) -> None:
    assert _same(codec.to_json_obj(msg), json_format.MessageToDict(msg))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(everything())
def test_decode_round_trips_like_parse_dict(msg: pb.Everything) -> None:
    obj = json_format.MessageToDict(msg)
    ours = pb.Everything()
    codec.Decoder().decode(obj, ours)
    theirs = json_format.ParseDict(obj, pb.Everything())
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True) or _same(
        codec.to_json_obj(ours), codec.to_json_obj(theirs)
    )


def test_sites_message_matches_json_format() -> None:
    site = sites_pb2.Site(id="NBO-0001", name="Kasarani", region="nairobi", type=sites_pb2.SITE_TYPE_ROOFTOP)
    site.location.latitude, site.location.longitude = -1.22, 36.9
    site.power.dg_capacity_kva = 20
    site.create_time.FromSeconds(1_700_000_000)
    site.tenant_ids.extend(["safaricom", "airtel"])
    out = codec.to_json_obj(sites_pb2.GetSiteResponse(site=site))
    assert out == json_format.MessageToDict(sites_pb2.GetSiteResponse(site=site))
    assert out["site"]["createTime"] == "2023-11-14T22:13:20Z"
    assert out["site"]["type"] == "SITE_TYPE_ROOFTOP"
    assert out["site"]["power"] == {"dgCapacityKva": 20.0}


JSON_RULES = [
    # (JSON in, expected JSON out): both spellings in, camelCase out, int64 strings, enums by name
    ({"i64": 5}, {"i64": "5"}),
    ({"i64": "-9223372036854775808"}, {"i64": "-9223372036854775808"}),
    ({"u64": "18446744073709551615"}, {"u64": "18446744073709551615"}),
    ({"i32": "7"}, {"i32": 7}),
    ({"i32": 7.0}, {"i32": 7}),
    ({"maybe_count": "3"}, {"maybeCount": "3"}),
    ({"maybeCount": 3}, {"maybeCount": "3"}),
    ({"colour": "COLOUR_RED"}, {"colour": "COLOUR_RED"}),
    ({"colour": 2}, {"colour": "COLOUR_GREEN"}),
    ({"when": "2026-01-31T12:00:00.5+01:00"}, {"when": "2026-01-31T11:00:00.500Z"}),
    ({"took": "1.5s"}, {"took": "1.500s"}),
    ({"took": "-0.000000001s"}, {"took": "-0.000000001s"}),
    ({"mask": "a.bC,d"}, {"mask": "a.bC,d"}),
    ({"data": "aGk="}, {"data": "aGk="}),
    ({"data": "aGk"}, {"data": "aGk="}),  # unpadded and url-safe accepted
    ({"db": "NaN"}, {"db": "NaN"}),
    ({"db": "-Infinity"}, {"db": "-Infinity"}),
    ({"db": 1e308}, {"db": 1e308}),
    ({"otherName": "x"}, {"otherName": "x"}),  # custom json_name
    ({"renamed": "x"}, {"otherName": "x"}),
    ({"by_flag": {"true": "y"}}, {"byFlag": {"true": "y"}}),
    ({"byId": {"5": {"label": "z"}}}, {"byId": {"5": {"label": "z"}}}),
    ({"inner": None, "text": None}, {}),  # null means unset
    ({"anything": None}, {"anything": None}),  # except for Value, where it is a JSON null
    ({"opt": 0}, {"opt": 0}),  # proto3 optional keeps presence
    ({"choice_number": 0}, {"choiceNumber": 0}),  # so do oneof members
    ({"attributes": {"k": [1, "a", None]}}, {"attributes": {"k": [1.0, "a", None]}}),
]


@pytest.mark.parametrize(("given_json", "expected"), JSON_RULES)
def test_json_rules(given_json: dict, expected: dict) -> None:
    msg = pb.Everything()
    codec.Decoder().decode(given_json, msg)
    assert _same(codec.to_json_obj(msg), expected)
    assert _same(json_format.MessageToDict(msg), expected)


BAD_JSON = [
    ({"i32": 2**31}, "i32", "out of range"),
    ({"i32": 1.5}, "i32", "integer"),
    ({"i64": "12abc"}, "i64", "integer"),
    ({"u32": -1}, "u32", "out of range"),
    ({"flag": "true"}, "flag", "true or false"),
    ({"text": 5}, "text", "string"),
    ({"colour": "PURPLE"}, "colour", "COLOUR_RED"),
    ({"when": "yesterday"}, "when", "RFC 3339"),
    ({"when": "2026-02-30T00:00:00Z"}, "when", "invalid date"),
    ({"took": "5 minutes"}, "took", "duration"),
    ({"data": "!!"}, "data", "base64"),
    ({"tags": "a"}, "tags", "array"),
    ({"tags": [None]}, "tags[0]", "null"),
    ({"inner": {"count": "x"}}, "inner.count", "integer"),
    ({"inners": [{}, {"label": 1}]}, "inners[1].label", "string"),
    ({"counts": {"a": "b"}}, "counts[a]", "integer"),
    ({"byId": {"x": {}}}, "by_id[x]", "bad key"),
    ({"nope": 1}, "nope", "unknown field"),
    ({"inner": {"nope": 1}}, "inner.nope", "unknown field"),
    ({"choiceText": "a", "choiceNumber": 1}, "choice_number", "oneof"),
    ({"text": "a", "text_": 1}, "text_", "unknown"),
    ({"fl": 1e39}, "fl", "out of float range"),
    ({"inner": []}, "inner", "object"),
    ({"list": 5}, "list", ""),  # json_format.ParseError (not a ValueError) from a free-form type
]


@pytest.mark.parametrize(("given_json", "field", "words"), BAD_JSON)
def test_bad_json_names_the_field(given_json: dict, field: str, words: str) -> None:
    with pytest.raises(codec.JsonError) as info:
        codec.Decoder().decode(given_json, pb.Everything())
    fields = {v.field: v.description for v in info.value.violations}
    assert field in fields, fields
    assert words.lower() in fields[field].lower()


def test_unknown_fields_can_be_ignored() -> None:
    msg = pb.Everything()
    codec.Decoder(ignore_unknown=True).decode({"nope": 1, "text": "kept"}, msg)
    assert msg.text == "kept"


def test_every_violation_is_reported_at_once() -> None:
    with pytest.raises(codec.JsonError) as info:
        codec.Decoder().decode({"i32": "x", "flag": 1, "nope": 2}, pb.Everything())
    assert {v.field for v in info.value.violations} == {"i32", "flag", "nope"}


def test_nul_characters_are_refused_in_every_string() -> None:
    """PostgreSQL text cannot hold U+0000: the edge refuses it (body, map keys, path and query)."""
    with pytest.raises(codec.JsonError, match="NUL"):
        codec.Decoder().decode({"text": "a\x00b"}, pb.Everything())
    with pytest.raises(ValueError, match="NUL"):
        codec.scalar_from_text(pb.Everything.DESCRIPTOR.fields_by_name["text"], "a\x00")
