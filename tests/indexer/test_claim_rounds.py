"""The order the indexer indexes a batch in when faces wait on other messages' claims (pure logic)."""

from __future__ import annotations

from facepipe.indexer.claims import Claimed, rounds
from facepipe.store.dedup import NOT_DUPLICATE, DedupResult, Owner


def message(image: str, event: str, *waits_on: Owner) -> Claimed:
    """A message of one face per entry: a new face, then one face pending on each owner given."""
    faces = [(f"{n:016x}", Owner(image * 64, n, event)) for n in range(1 + len(waits_on))]
    results = [NOT_DUPLICATE] + [DedupResult(False, owner, "0" * 16, 1, pending=True) for owner in waits_on]
    return Claimed.of("demo", faces, results)


def owner(image: str, event: str) -> Owner:
    return Owner(image * 64, 0, event)


def test_messages_wait_for_the_messages_of_the_batch_they_depend_on() -> None:
    first = message("a", "1-0")
    second = message("b", "2-0", owner("a", "1-0"))
    third = message("c", "3-0", owner("b", "2-0"), owner("a", "1-0"))
    free = message("d", "4-0")
    ordered, outside = rounds([third, free, second, first])
    assert ordered == [[free, first], [second], [third]]
    assert outside == []
    assert (second.kept, second.skipped, list(second.waits)) == ([0], [], [1])
    second.waited_out()  # the message it waited on was indexed: its pending face is a duplicate
    assert (second.kept, second.skipped, second.waits) == ([0], [1], {})


def test_a_message_waiting_on_a_claim_from_outside_the_batch_is_left_out() -> None:
    inside = message("a", "1-0")
    elsewhere = message("b", "2-0", owner("z", "9-0"))
    behind_it = message("c", "3-0", owner("b", "2-0"))
    ordered, outside = rounds([inside, elsewhere, behind_it])
    assert ordered == [[inside]]
    assert outside == [elsewhere, behind_it]  # what waits on a left-out message waits too
    assert elsewhere.claims() == ("demo", [elsewhere.faces[0]])  # what it claimed, to release
