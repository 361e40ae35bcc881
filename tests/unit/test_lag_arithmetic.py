"""Consumer lag arithmetic: end offset minus the group's committed offset, as Kafka tooling reports it."""

from __future__ import annotations

from aiokafka.structs import TopicPartition

from streams.lag import lags, partition_lag


def test_lag_is_the_end_offset_minus_the_committed_offset():
    # Committed offset = the next record the group will read; end offset = the next record to be written.
    assert partition_lag(end=10, committed=7, beginning=0) == 3
    assert partition_lag(end=10, committed=10, beginning=0) == 0


def test_a_partition_never_committed_counts_every_retained_record():
    assert partition_lag(end=10, committed=None, beginning=0) == 10
    assert partition_lag(end=10, committed=-1, beginning=4) == 6  # -1 is Kafka's "no offset"


def test_records_deleted_by_retention_are_not_lag():
    assert partition_lag(end=10, committed=2, beginning=6) == 4


def test_lag_is_never_negative():
    assert partition_lag(end=5, committed=9, beginning=0) == 0


def test_partitions_without_an_end_offset_are_left_out():
    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    assert lags([a, b], {a: 8}, {a: 0, b: 0}, {a: 3}) == {a: 5}
