"""Batch transform's split rules: one input object -> records -> mini-batches (request bodies).

SageMaker's semantics: SplitType None sends the whole object as one request; Line makes
one record per line; SingleRecord sends one record per request, MultiRecord as many
whole lines as fit in MaxPayloadInMB (0: no limit). A mini-batch never spans objects.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024
SPLIT_TYPES = ("None", "Line")
BATCH_STRATEGIES = ("SingleRecord", "MultiRecord")
ASSEMBLE_WITH = ("None", "Line")


@dataclass(frozen=True)
class Record:
    number: int  # 1-based, in the object
    line: int | None  # 1-based line in the object (None for SplitType None)
    data: bytes  # without the line terminator


@dataclass(frozen=True)
class MiniBatch:
    """One request body and the records it carries."""

    records: tuple[Record, ...]
    body: bytes


class PayloadTooLarge(ValueError):
    """One record alone is over MaxPayloadInMB."""

    def __init__(self, record: Record, limit: int) -> None:
        self.detail = f"{len(record.data)} bytes, over MaxPayloadInMB ({limit} bytes)"
        where = f"record {record.number}" + (f" (line {record.line})" if record.line else "")
        super().__init__(f"{where} is {self.detail}")
        self.record = record


def payload_limit(max_payload_mb: float) -> int | None:
    """MaxPayloadInMB in bytes; None for 0 (no limit, as SageMaker's chunked mode)."""
    if max_payload_mb < 0 or max_payload_mb > 100:
        raise ValueError(f"MaxPayloadInMB must be 0-100, got {max_payload_mb:g}")
    return None if max_payload_mb == 0 else int(max_payload_mb * MiB)


def split_records(data: bytes, split_type: str) -> list[Record]:
    """The object's records; an empty object (or one of blank lines) has none."""
    if split_type == "None":
        return [Record(1, None, data)] if data else []
    if split_type != "Line":
        raise ValueError(f"SplitType must be one of {SPLIT_TYPES}, got {split_type!r}")
    records = []
    for line_number, line in enumerate(data.split(b"\n"), start=1):
        line = line.removesuffix(b"\r")
        if line.strip():
            records.append(Record(len(records) + 1, line_number, line))
    return records


def mini_batches(records: list[Record], split_type: str, batch_strategy: str, limit: int | None) -> list[MiniBatch]:
    """Group records into request bodies; PayloadTooLarge if one record alone does not fit."""
    if batch_strategy not in BATCH_STRATEGIES:
        raise ValueError(f"BatchStrategy must be one of {BATCH_STRATEGIES}, got {batch_strategy!r}")
    if split_type == "None":
        return [_single(record, limit, record.data) for record in records]
    if batch_strategy == "SingleRecord":
        return [_single(record, limit, record.data) for record in records]
    batches: list[MiniBatch] = []
    current: list[Record] = []
    size = 0
    for record in records:
        needed = len(record.data) + 1
        if limit is not None and needed > limit:
            raise PayloadTooLarge(record, limit)
        if current and limit is not None and size + needed > limit:
            batches.append(_join(current))
            current, size = [], 0
        current.append(record)
        size += needed
    if current:
        batches.append(_join(current))
    return batches


def _single(record: Record, limit: int | None, body: bytes) -> MiniBatch:
    if limit is not None and len(body) > limit:
        raise PayloadTooLarge(record, limit)
    return MiniBatch((record,), body)


def _join(records: list[Record]) -> MiniBatch:
    return MiniBatch(tuple(records), b"".join(record.data + b"\n" for record in records))


def assemble(answers: list[bytes], assemble_with: str) -> bytes:
    """The .out object: answers in input order; Line ends each answer with a newline."""
    if assemble_with == "None":
        return b"".join(answers)
    if assemble_with != "Line":
        raise ValueError(f"AssembleWith must be one of {ASSEMBLE_WITH}, got {assemble_with!r}")
    return b"".join(answer if answer.endswith(b"\n") else answer + b"\n" for answer in answers)
