"""The stored form of events: compact MessagePack for readings, the library's JSON for the rest.

Readings are nearly every row of the store, and in the library's JSON each of them spends
most of its bytes on `{"_type_": "datetime_iso", "_data_": ...}` wrappers and text. A reading
(and a meter day's opening and snapshot) is stored as a MessagePack map of the same fields
instead, where a field named in `FIELDS` is written as its index there (other names as
text), a UUID is 16 bytes, a moment is its microseconds and UTC offset, and a value of a
registered transcoding is that transcoding's name and data. Every other event
stays JSON, readable in the table as text.

Reading tells the forms apart by their first byte: a JSON state starts with `{`, a
MessagePack map never does. So rows stored before the compact form read as they always did,
and a state the compact form cannot hold (an integer beyond 64 bits) is stored as JSON.
Both forms are maps of fields: the stored form of an event evolves only by added fields (and
`FIELDS` only by added names).
"""

from __future__ import annotations

import struct
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from collections.abc import Callable, Sequence
from typing import Any, Final
from uuid import UUID

import msgspec
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import JSONTranscoder, Mapper, StoredEvent, find_id_convertor
from eventsourcing.utils import get_topic, resolve_topic

from domain.meter import MeterDay

__all__ = ["COMPACT_EVENTS", "CompactMapper", "CompactTranscoder"]

COMPACT_EVENTS: Final[frozenset[type]] = frozenset({MeterDay.ReadingRecorded, MeterDay.Opened, MeterDay.Snapshot})
"""The event classes stored in the compact form."""

FIELDS: Final = (
    "timestamp", "originator_topic", "device_id", "day", "measured_at", "is_on", "power_w", "voltage_v",
    "current_a", "total_wh", "outlets", "actor", "rssi", "outlet_id", "index", "alias", "outlet_reading",
    "topic", "state", "recent", "forgotten", "count", "_recalled", "_created_on", "_modified_on",
)  # fmt: skip
"""Names the compact form writes as their index here. Append only: a stored index must keep its name."""
_CODES: Final = {name: code for code, name in enumerate(FIELDS)}

UUIDS_KEPT: Final = 100_000
"""At most this many UUIDs are kept for reuse (`CompactTranscoder._uuids`); then they are forgotten at once."""

_UUID, _MOMENT, _DECIMAL, _TRANSCODED = 1, 2, 3, 4
_MOMENT_FORM = struct.Struct(">qi")
_NAIVE = -(2**31)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_OFFSETS: dict[int, timezone] = {0: timezone.utc}


def _moment(value: datetime) -> bytes:
    offset = value.utcoffset()
    if offset is None:
        aware, seconds = value.replace(tzinfo=timezone.utc), _NAIVE
    else:
        aware, seconds = value, int(offset.total_seconds())
    delta = aware - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return _MOMENT_FORM.pack(micros, seconds)


def _from_moment(data: bytes | memoryview) -> datetime:
    micros, seconds = _MOMENT_FORM.unpack(data)
    utc = _EPOCH + timedelta(0, 0, micros)  # positional: the same value, made faster than by keyword
    if seconds == 0:
        return utc
    if seconds == _NAIVE:
        return utc.replace(tzinfo=None)
    zone = _OFFSETS.get(seconds)
    if zone is None:
        zone = _OFFSETS.setdefault(seconds, timezone(timedelta(seconds=seconds)))
    return utc.astimezone(zone)


def _coded(name: str) -> str | int:
    return _CODES.get(name, name)


def _name(key: Any) -> Any:
    return FIELDS[key] if type(key) is int else key


def _named(obj: Any) -> Any:
    """A decoded value with the indexes of `FIELDS` among its keys made names again."""
    if type(obj) is dict:
        return _named_map(obj)
    if type(obj) is list:
        return [_named(v) if type(v) is dict or type(v) is list else v for v in obj]
    return obj


def _named_map(obj: dict[Any, Any]) -> dict[Any, Any]:
    """`_named` of a map: only keys that are indexes are looked up, only maps and lists are walked into."""
    named: dict[Any, Any] = {}
    for key, value in obj.items():
        if type(key) is int:
            key = FIELDS[key]
        kind = type(value)
        if kind is dict:
            value = _named_map(value)
        elif kind is list:
            value = [_named(v) if type(v) is dict or type(v) is list else v for v in value] if value else []
        named[key] = value
    return named


class CompactTranscoder(JSONTranscoder):
    """The library's JSON transcoder, which also writes (`encode_compact`) and reads the compact form."""

    def __init__(self) -> None:
        super().__init__()
        self._packer = msgspec.msgpack.Encoder()
        self._unpacker = msgspec.msgpack.Decoder(ext_hook=self._from_ext)
        self._uuids: dict[bytes, UUID] = {}
        """The UUIDs read so far, by their bytes: one object for every reading of a device, so read models'
        dicts and sets keyed by device find it by identity instead of comparing two UUIDs in Python."""

    def encode_compact(self, obj: Any) -> bytes:
        """`obj` in the compact form, or in JSON when the compact form cannot hold it."""
        try:
            return self._packer.encode(self._packable(obj))
        except (OverflowError, TypeError, msgspec.EncodeError):
            return self.encode(obj)

    def encode_fields(self, state: dict[str, Any]) -> bytes:
        """`encode_compact` of an event's fields (a map keyed by names), the same bytes, made faster.

        Field values of the common kinds are made packable here, in one pass, rather than through
        `_packable`'s checks for every one; any other value still goes through `_packable`."""
        packable: dict[Any, Any] = {}
        try:
            for name, value in state.items():
                kind = type(value)
                if type(name) is not str:
                    return self.encode_compact(state)
                code = _CODES.get(name, name)
                if value is None or kind is float or kind is bool or kind is str or kind is int:
                    packable[code] = value
                elif kind is datetime:
                    packable[code] = msgspec.msgpack.Ext(_MOMENT, _moment(value))
                elif kind is UUID:
                    packable[code] = msgspec.msgpack.Ext(_UUID, value.bytes)
                elif kind is list and not value:
                    packable[code] = []
                else:
                    packable[code] = self._packable(value)
            return self._packer.encode(packable)
        except (OverflowError, TypeError, msgspec.EncodeError):
            return self.encode(state)

    def decode(self, data: bytes) -> Any:
        if data[:1] == b"{":
            return super().decode(data)
        return _named(self._unpacker.decode(data))

    def _packable(self, obj: Any) -> Any:
        """`obj` with every value MessagePack has no type for made an extension; raises TypeError as JSON would."""
        kind = type(obj)
        if obj is None or kind in (str, int, float, bool):
            return obj
        if kind is dict:
            return {_coded(self._key(k)): self._packable(v) for k, v in obj.items()}
        if kind in (list, tuple):
            return [self._packable(v) for v in obj]
        if kind is UUID:
            return msgspec.msgpack.Ext(_UUID, obj.bytes)
        if kind is datetime:
            return msgspec.msgpack.Ext(_MOMENT, _moment(obj))
        if kind is Decimal:
            return msgspec.msgpack.Ext(_DECIMAL, str(obj).encode())
        transcoding = self.types.get(kind)
        if transcoding is not None:
            inner = self._packer.encode([_coded(transcoding.name), self._packable(transcoding.encode(obj))])
            return msgspec.msgpack.Ext(_TRANSCODED, inner)
        if isinstance(obj, Enum) and isinstance(obj, (str, int, float)):
            return self._packable(obj.value)
        if isinstance(obj, str):
            return obj[:]
        if isinstance(obj, (int, float)):
            return self._packable(int(obj) if isinstance(obj, int) else float(obj))
        raise TypeError(f"Object of type {kind} is not serializable")

    @staticmethod
    def _key(key: Any) -> str:
        """JSON keys are text: keep the same keys in both forms, so a field reads the same from either."""
        if isinstance(key, str):
            return key[:]
        if key is None or isinstance(key, (bool, int, float)):
            return msgspec.json.encode(key).decode()
        raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")

    def _from_ext(self, code: int, data: memoryview) -> Any:
        if code == _MOMENT:  # the commonest: two or three in every reading
            return _from_moment(data)
        raw = bytes(data)
        if code == _UUID:
            found = self._uuids.get(raw)
            if found is None:
                if len(self._uuids) >= UUIDS_KEPT:
                    self._uuids.clear()
                found = self._uuids[raw] = UUID(bytes=raw)
            return found
        if code == _DECIMAL:
            return Decimal(raw.decode())
        if code == _TRANSCODED:
            name, inner = self._unpacker.decode(raw)
            return self.names[_name(name)].decode(_named(inner))
        raise ValueError(f"unknown extension {code} in a stored event")


class CompactMapper(Mapper[UUID]):
    """The library's mapper, storing the events of `COMPACT_EVENTS` in the compact form."""

    transcoder: CompactTranscoder

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        if type(domain_event) not in COMPACT_EVENTS or self.compressor or self.cipher:
            return super().to_stored_event(domain_event)
        state = dict(vars(domain_event))
        originator_id = state.pop("originator_id")
        originator_version = state.pop("originator_version")
        class_version = getattr(type(domain_event), "class_version", 1)
        if class_version > 1:
            state["class_version"] = class_version
        return StoredEvent(
            originator_id=originator_id,
            originator_version=originator_version,
            topic=get_topic(type(domain_event)),
            state=self.transcoder.encode_fields(state),
        )

    def to_domain_events(self, stored_events: Sequence[StoredEvent]) -> list[DomainEventProtocol[UUID]]:
        """`to_domain_event` of each of `stored_events`, in their order: the same events, made faster.

        A log's section holds a few topics thousands of times, so each topic's class, class version
        and id conversion are looked up once here rather than for every event. A stored event that
        needs more (a cipher, a compressor, an upcast) and any failure take `to_domain_event`, which
        raises what it always raised; so do all of them when this mapper's `to_domain_event` was
        replaced (as a test replaces it to make an event undecodable)."""
        if self.cipher or self.compressor or "to_domain_event" in vars(self):
            return [self.to_domain_event(s) for s in stored_events]
        decode = self.transcoder.decode
        kinds: dict[tuple[str, type], tuple[type, Callable[[Any], Any]] | None] = {}
        events: list[DomainEventProtocol[UUID]] = []
        append, new, assign = events.append, object.__new__, object.__setattr__
        try:
            for stored in stored_events:
                originator_id = stored.originator_id
                id_type: Any = type(originator_id)
                kind = kinds.get((stored.topic, id_type), _UNSEEN)
                if kind is _UNSEEN:
                    cls = resolve_topic(stored.topic)
                    plain = getattr(cls, "class_version", 1) == 1
                    kind = kinds[stored.topic, id_type] = (cls, find_id_convertor(cls, id_type)) if plain else None
                if kind is None:
                    append(self.to_domain_event(stored))
                    continue
                state = decode(stored.state)
                if "class_version" in state:  # stored by a class that had versions: the library pops it
                    append(self.to_domain_event(stored))
                    continue
                state["originator_id"] = kind[1](originator_id)
                state["originator_version"] = stored.originator_version
                event = new(kind[0])
                assign(event, "__dict__", state)
                append(event)
        except Exception:
            return [self.to_domain_event(s) for s in stored_events]
        return events


_UNSEEN: Final[Any] = object()
