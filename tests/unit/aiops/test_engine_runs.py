"""runs_of: a fetched batch of TELEMETRY messages is cut into transactions of whole messages, in
stream order, of at most `max_samples` samples (a bigger message alone)."""

from towerco.telemetry.v1 import telemetry_pb2

from workers.aiops_engine.consumer import runs_of


def _msg(key: str, n: int) -> tuple[str, telemetry_pb2.TelemetryBatch]:
    b = telemetry_pb2.TelemetryBatch()
    for i in range(n):
        b.samples.add(site_id=f"s{i}", metric="mains_present", value=1.0)
    return key, b


def _keys(runs: list[list[tuple[str, telemetry_pb2.TelemetryBatch]]]) -> list[list[str]]:
    return [[k for k, _ in run] for run in runs]


def test_small_messages_share_one_run() -> None:
    assert _keys(runs_of([_msg("a", 10), _msg("b", 20), _msg("c", 30)], 100)) == [["a", "b", "c"]]


def test_runs_are_cut_at_the_limit_in_order() -> None:
    runs = runs_of([_msg("a", 40), _msg("b", 40), _msg("c", 40), _msg("d", 20), _msg("e", 30)], 80)
    assert _keys(runs) == [["a", "b"], ["c", "d"], ["e"]]
    assert all(sum(len(b.samples) for _, b in run) <= 80 for run in runs)


def test_a_message_bigger_than_the_limit_is_a_run_by_itself() -> None:
    assert _keys(runs_of([_msg("a", 5), _msg("big", 500), _msg("b", 5)], 100)) == [["a"], ["big"], ["b"]]


def test_every_message_once_and_nothing_for_nothing() -> None:
    msgs = [_msg(str(i), i % 7) for i in range(50)]
    assert [k for run in _keys(runs_of(msgs, 9)) for k in run] == [str(i) for i in range(50)]
    assert runs_of([], 10) == []
