"""Step 5 (part): rate limits keyed on the verified identity (SEMANTICS §1, §6).

A request is counted against every rule that covers its operation's risk tier, per cloud
account or per mapped payment customer, never per IP address or client-chosen header. The
decision is a GCRA (:mod:`.gcra`); the counters live in one process (:mod:`.memory`) or in
Redis, shared by every instance, one atomic round trip per request (:mod:`.redis_limiter`).
:mod:`.stage` is the pipeline step; :mod:`.factory` builds it from settings.
"""
