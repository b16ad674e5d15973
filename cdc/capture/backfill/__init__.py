"""Backfill: the rows that already exist, published as ``read`` events beside the live stream.

A run flows through four modules:

- ``runs``: the run registry in the ``backfills`` state table (start, resume, cancel, list,
  progress), shared by the operator's command and the worker that does the chunks;
- ``pages``: the chunk reader, keyset pages of a table (the snapshot of what a read saw, and
  the watermark, are the database's: ``cdc.capture.dialects``);
- ``chunks``: a chunk in flight, what the stream drops from it and where it goes in;
- ``backfiller``: the ``Backfiller`` the capture worker calls around each stream batch.

The worker runs backfills itself, one chunk at a time between its stream batches, so backfill
events and stream events share one publisher, one position order and one lease. A chunk meets
the stream by the watermark method of Netflix's DBLog (the README's "Why a backfill never
overwrites a newer change"):

1. take a snapshot of which transactions are visible, just before the read;
2. read the next keyset page of the table;
3. write a high watermark into the stream: a change-log row, or a logical message;
4. while the stream runs up to the watermark, drop from the chunk every key that a transaction
   *invisible to the snapshot* changed: the stream carries that key's newer value;
5. at the watermark, the chunk's other rows become events positioned right after it
   (``<watermark position>.<index>``), and once the bus accepted them the run's progress moves
   to the chunk's last key.

DBLog drops the keys changed between a low and a high watermark. The snapshot names exactly
the transactions the read could not see, so no low watermark is written; and since dropping a
key is always safe (the stream has its value), a snapshot taken just before the read may stand
for the read's own. Each mode needs one more wait, for a change the stream could otherwise
deliver on the wrong side of the chunk:

- change log: a row's id is taken when the trigger writes it, not when its transaction
  commits, so a transaction still open when the watermark is written may commit rows with
  lower ids later. Emitted before such a row, the chunk would not have dropped its key, and
  its old copy would come after the row's newer value in ``position`` order. Such a writer
  took its xid before the watermark took its own, so the chunk waits until the oldest running
  xid is past the watermark's (``Pending.ready``), then goes in at the first change past the
  watermark in a read that began after that: the read returns every lower id first. The
  in-progress list of the chunk's snapshot is not enough: a writer that began after the
  snapshot (its xid at or past ``xmax``) is not listed, yet may hold a lower id.
- logical: a transaction is streamed once its commit is in the WAL, a moment before new
  snapshots see it. A chunk read in that moment would miss its rows, while its changes went
  by before the chunk existed and dropped none of its keys: the chunk's old copies would come
  after them. So a chunk whose snapshot does not see a transaction the worker has just
  streamed is not read yet, and is tried again next round (``_RECENT_XIDS``).

For every key, the last event in ``position`` order carries the row's current value; a killed
backfill resumes after the last chunk the bus accepted, and a chunk read again gives its rows
the same event ids (``backfill:<run>:<key>``).
"""
