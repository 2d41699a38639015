"""The pure side of partition leases (mesh.leases): the plan every replica computes from the live
members, and the moves one replica makes from the plan and the leases it reads."""

from __future__ import annotations

import itertools
import math

import pytest

from mesh.leases import Lease, Moves, decide, new_token, plan


@pytest.mark.parametrize("partitions", [1, 3, 16, 64])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_plan_gives_every_partition_to_exactly_one_member_fairly(partitions, n):
    members = [f"r{i}" for i in range(n)]
    out = plan(members, partitions)
    assert set(out) == set(members)
    owned = list(itertools.chain.from_iterable(out.values()))
    assert sorted(owned) == list(range(partitions))  # each once, none missing
    sizes = sorted(len(v) for v in out.values())
    assert sizes[0] == partitions // n and sizes[-1] == math.ceil(partitions / n)


def test_plan_is_the_same_whatever_the_order_or_repeats():
    assert plan(["b", "a", "c"], 16) == plan(["c", "a", "b", "a"], 16)


def test_plan_moves_only_what_must_move():
    before = plan(["r1", "r2", "r3"], 16)
    after = plan(["r1", "r2"], 16)  # r3 died
    # what r1 and r2 had, they keep; r3's partitions are spread over them
    for m in ("r1", "r2"):
        kept = before[m] & after[m]
        assert len(kept) >= len(before[m]) - 1, (m, before[m], after[m])
    assert before["r3"] <= after["r1"] | after["r2"]
    joined = plan(["r1", "r2", "r3", "r4"], 16)  # a newcomer takes about a quarter
    moved = sum(len(before[m] - joined[m]) for m in ("r1", "r2", "r3"))
    assert moved <= 6 and len(joined["r4"]) == 4


def test_plan_of_nobody_and_bad_counts():
    assert plan([], 16) == {}
    with pytest.raises(ValueError):
        plan(["a"], 0)


def _leases(owners: dict[int, str | None], expired: set[int] = frozenset()) -> dict[int, Lease]:
    return {p: Lease(p, o, p in expired) for p, o in owners.items()}


def test_a_lone_member_acquires_every_free_partition():
    moves = decide(member="r1", token="r1#a", members=["r1"], partitions=4, leases={}, held=set())
    assert moves == Moves(acquire=frozenset(range(4)))


def test_a_live_owners_partition_is_not_taken_even_when_planned():
    mine = plan(["r1", "r2"], 8)["r1"]
    leases = _leases(dict.fromkeys(range(8), "r2#old"))  # r2 holds everything (r1 just joined)
    moves = decide(member="r1", token="r1#a", members=["r1", "r2"], partitions=8, leases=leases, held=set())
    assert moves.acquire == frozenset()  # wait for r2 to release them
    # r2's view of the same round: release what is r1's now, keep its own
    moves2 = decide(member="r2", token="r2#old", members=["r1", "r2"], partitions=8, leases=leases,
                    held=set(range(8)))
    assert moves2.release == mine and not moves2.acquire and not moves2.lost
    # next round, released: r1 takes them
    after = _leases({p: (None if p in mine else "r2#old") for p in range(8)})
    moves3 = decide(member="r1", token="r1#a", members=["r1", "r2"], partitions=8, leases=after, held=set())
    assert moves3.acquire == mine


def test_an_expired_lease_of_a_dead_member_is_taken():
    leases = _leases(dict.fromkeys(range(4), "r2#dead"), expired=set(range(4)))
    moves = decide(member="r1", token="r1#a", members=["r1"], partitions=4, leases=leases, held=set())
    assert moves.acquire == frozenset(range(4))


def test_a_restarted_incarnation_does_not_mistake_its_old_lease_for_its_own():
    # r1 restarted (new token): its old incarnation's leases are live until they expire
    leases = _leases(dict.fromkeys(range(4), "r1#old"))
    moves = decide(member="r1", token="r1#new", members=["r1"], partitions=4, leases=leases, held=set())
    assert moves.acquire == frozenset()
    expired = _leases(dict.fromkeys(range(4), "r1#old"), expired=set(range(4)))
    assert decide(member="r1", token="r1#new", members=["r1"], partitions=4, leases=expired,
                  held=set()).acquire == frozenset(range(4))


def test_a_partition_held_here_but_owned_by_another_is_lost():
    leases = _leases({0: "r2#b", 1: "r1#a"})
    moves = decide(member="r1", token="r1#a", members=["r1", "r2"], partitions=2, leases=leases, held={0, 1})
    assert moves.lost == frozenset({0})
    assert 0 not in moves.release and 0 not in moves.acquire


def test_members_list_need_not_contain_me_yet():
    moves = decide(member="r9", token="r9#x", members=[], partitions=2, leases={}, held=set())
    assert moves.acquire == frozenset({0, 1})


def test_tokens_name_their_member_and_differ():
    a, b = new_token("r1"), new_token("r1")
    assert a.startswith("r1#") and b.startswith("r1#") and a != b
