"""The durable queue: envelopes, the filesystem store and the scheduler.

`store` keeps the promise behind every `250`: nothing acknowledged is lost.
`scheduler` hands envelopes to the agents the daemon gives it and applies
the outcome.  This package imports only the stdlib and `postillion.errors`;
it never imports smtp, mda or mta.
"""

from postillion.queue.envelope import Envelope, EnvelopeCorrupt
from postillion.queue.scheduler import Scheduler
from postillion.queue.store import Incoming, QueueStore

__all__ = ["Envelope", "EnvelopeCorrupt", "Incoming", "QueueStore", "Scheduler"]
