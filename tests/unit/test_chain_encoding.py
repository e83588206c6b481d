"""The chain's canonical record encoding: any change of a stored byte changes the hash."""

from __future__ import annotations

from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from adapters.history import StoredRecord
from projections.chain import GENESIS, encode_record, link

records = st.builds(
    StoredRecord,
    st.integers(min_value=1, max_value=2**62),
    st.uuids(),
    st.integers(min_value=1, max_value=2**40),
    st.text(max_size=60),
    st.binary(max_size=300),
)


@given(records, st.data())
def test_flipping_any_byte_of_the_state_changes_the_link(record: StoredRecord, data: st.DataObject) -> None:
    if not record.state:
        return
    index = data.draw(st.integers(min_value=0, max_value=len(record.state) - 1))
    changed = bytearray(record.state)
    changed[index] ^= data.draw(st.integers(min_value=1, max_value=255))
    tampered = StoredRecord(record.notification_id, record.originator_id, record.version, record.topic, bytes(changed))
    assert link(GENESIS, tampered) != link(GENESIS, record)


@given(records, st.integers(min_value=1, max_value=59))
def test_moving_bytes_between_topic_and_state_is_not_the_same_record(record: StoredRecord, cut: int) -> None:
    joined = record.topic.encode() + record.state
    if cut >= len(record.topic.encode()):
        return
    other = StoredRecord(record.notification_id, record.originator_id, record.version,
                         record.topic.encode()[:cut].decode("utf-8", "ignore"), joined[cut:])  # fmt: skip
    assert encode_record(other) != encode_record(record)


@given(records, records)
def test_each_link_depends_on_its_predecessor(first: StoredRecord, second: StoredRecord) -> None:
    assert link(link(GENESIS, first), second) != link(GENESIS, second)


def test_the_encoding_and_hash_are_pinned_so_old_chains_stay_verifiable() -> None:
    record = StoredRecord(7, UUID(int=1), 2, "domain.device:Device.Added", b'{"a":1}')
    assert link(GENESIS, record).hex() == "e67c0f10092a1257d7172444a87b8b9581f6323bb9cddd5af2044eaa1a63e184"
    assert encode_record(record) == (
        (7).to_bytes(8, "big") + (2).to_bytes(8, "big") + UUID(int=1).bytes
        + (26).to_bytes(4, "big") + b"domain.device:Device.Added" + (7).to_bytes(8, "big") + b'{"a":1}'
    )  # fmt: skip
