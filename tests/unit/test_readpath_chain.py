"""The chain's links as a batch extends them: every hash is `link`'s over the records before it, and the
rows do not depend on how the log was cut into batches."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.persistence import Notification
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.history import StoredRecord
from projections.chain import GENESIS, LINK_SPAN, PREFIX, ChainRow, chained, link


@st.composite
def logs(draw: st.DrawFn) -> list[StoredRecord]:
    """Records in log order, with gaps (positions a rolled back write skipped), over a few links."""
    gaps = draw(st.lists(st.integers(min_value=1, max_value=LINK_SPAN + 3), min_size=1, max_size=300))
    topics = st.sampled_from(["domain.meter:MeterDay.ReadingRecorded", "domain.device:Device.Added", "t\u00e9"])
    records, position = [], 0
    for gap in gaps:
        position += gap
        records.append(StoredRecord(position, UUID(int=draw(st.integers(0, 3))), draw(st.integers(1, 2**40)),
                                    draw(topics), draw(st.binary(max_size=40))))  # fmt: skip
    return records


def expected(records: list[StoredRecord]) -> dict[int, ChainRow]:
    """The links, from their definition: each event's hash chained with `link`, grouped by span."""
    rows: dict[int, ChainRow] = {}
    previous = GENESIS
    for record in records:
        previous = link(previous, record)
        span = (record.notification_id - 1) // LINK_SPAN
        row = rows.get(span) or ChainRow(link=span, position=0, hash="", present="0", prefixes="")
        mask = int(row.present, 16) | 1 << (record.notification_id - 1 - span * LINK_SPAN)
        rows[span] = ChainRow(link=span, position=record.notification_id, hash=previous.hex(),
                              present=format(mask, "x"), prefixes=row.prefixes + previous[:PREFIX].hex())  # fmt: skip
    return rows


@settings(max_examples=60, deadline=None)
@given(logs(), st.lists(st.integers(min_value=0, max_value=300), max_size=6), st.integers(0, 5))
def test_batches_cut_anywhere_write_the_links_of_the_whole_log(
    records: list[StoredRecord], cuts: list[int], overlap: int
) -> None:
    notifications = [r.notification() for r in records]
    edges = sorted({0, len(records), *(min(c, len(records)) for c in cuts)})
    table: dict[int, ChainRow] = {}
    newest: ChainRow | None = None
    for start, stop in zip(edges, edges[1:], strict=False):
        # A batch may begin with events already chained (a section read again): they are skipped.
        for row in chained(newest, notifications[max(0, start - overlap):stop]):
            assert newest is None or row.link >= newest.link
            table[row.link] = newest = row
    assert table == expected(records)


def test_a_batch_of_events_already_chained_writes_nothing() -> None:
    notifications = [Notification(id=i, originator_id=UUID(int=1), originator_version=i, topic="t", state=b"s")
                     for i in range(1, 5)]  # fmt: skip
    newest = chained(None, notifications)[-1]

    assert chained(newest, notifications) == []
    assert newest.hash == expected([StoredRecord(n.id, UUID(int=1), n.id, "t", b"s") for n in notifications])[0].hash
