"""The AWS limits the service works within, each stated once with where AWS states it.

Settings bound what an operator may configure by them, the publishers pack and check entries by
them, the consumers read by them. AWS raised the largest EventBridge entry and SQS message from
256 KiB to 1 MB on 2026-01-29; documents older than that still say 256 KiB.
"""

from __future__ import annotations

# EventBridge, PutEvents (API reference "PutEvents"; user guide "Calculating PutEvents event
# entry size").
PUT_EVENTS_MAX_ENTRIES = 10  # entries in one call
PUT_EVENTS_MAX_BYTES = 1_048_576  # one entry, by the AWS size formula
TIME_FIELD_BYTES = 14  # what an entry's Time counts in that formula, when it is set
EVENT_BUS_NAME_MAX_LENGTH = 256  # CreateEventBus: Name

# EventBridge, rule targets (API reference "RetryPolicy"): the longest an event is retried.
TARGET_MAX_EVENT_AGE_SECONDS = 86_400  # 24 hours
TARGET_MAX_RETRY_ATTEMPTS = 185

# SQS (developer guide "Amazon SQS message quotas", "Amazon SQS queue quotas").
SQS_MAX_MESSAGE_BYTES = 1_048_576  # one message body
SQS_RECEIVE_MAX = 10  # messages one ReceiveMessage returns
SQS_MAX_WAIT_SECONDS = 20  # a long poll's WaitTimeSeconds
SQS_MAX_VISIBILITY_SECONDS = 43_200  # 12 hours
SQS_MAX_RETENTION_SECONDS = 1_209_600  # 14 days
SQS_QUEUE_NAME_MAX_LENGTH = 80

# The service's own defaults, below what AWS accepts: the 256 KiB every consumer built for the
# earlier limit can take. CDC_MAX_ENTRY_BYTES and CDC_SYNC_MAX_BODY_BYTES change them.
DEFAULT_ENTRY_BYTES = 262_144  # an entry published
DEFAULT_BODY_BYTES = DEFAULT_ENTRY_BYTES  # a message body read from SQS
