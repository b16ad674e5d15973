"""The ``logical`` source: PostgreSQL's own change stream (logical decoding, ``pgoutput``).

Three parts, as in Debezium's PostgreSQL connector: ``stream`` is the transport (the
``replication=database`` connection, ``START_REPLICATION``, CopyBoth frames, standby status
updates); ``assembly`` turns the decoded messages into Changes and keeps the safe LSN;
``source`` is ``LogicalSource`` itself (batches, acknowledgements, what is confirmed to
PostgreSQL and when, the checkpoint, the heartbeat). The slot is checked and measured in
``cdc.capture.slots``; the wire format is read in ``cdc.capture.pgoutput`` and
``cdc.capture.pgoutput_rows``.

What may be confirmed to PostgreSQL (the flush LSN, after which the slot's WAL can go) is only
ever a position whose changes the bus accepted: the end of the last transaction whose every
change sits in an acknowledged batch, or a keepalive's WAL end seen between transactions. A
large transaction is published in batches as it streams; PostgreSQL re-sends it whole after a
crash, and its events get the same ids (commit LSN and index within the transaction).
"""

from cdc.capture.sources.logical.source import LogicalSource

__all__ = ["LogicalSource"]
