"""Redis key names, in one place.

Everything a tenant owns sits under the hash tag ``{<prefix>:<tenant>}``: on Redis Cluster a
tenant's counters and blocks share one slot, so a check and the blocks it must honour are
decided by one atomic script (a tenant's load lands on one shard; tenants spread over the
cluster).  Keys that are not a tenant's (API-key lookups, the tenant registry) are only ever
used one at a time.

Layout (``rw`` is the default prefix):

- ``rw:{rw:T}:c:<algorithm>:<window_ms>:<key>``   counter state (string, with a TTL)
- ``rw:{rw:T}:bk:<scope>:<value>``                 block enforcement key (string = block id,
  PX = time left); its presence is what the check script honours
- ``rw:{rw:T}:blocks``                             block records (hash id -> JSON)
- ``rw:{rw:T}:blocks:v``                           block version: incremented by every
  block write, so a reader tells whether a tenant's blocks changed with one GET
- ``rw:{rw:T}:keys``                               API-key records (hash id -> JSON)
- ``rw:{rw:T}:allow:<scope>``                      allowlist (hash value -> JSON note; ``ip``
  values are addresses or CIDR networks; ``limiter/state/allowlist.py``)
- ``rw:{rw:T}:off:<scope>:<value>``                a subject's offences (hash ``count``,
  ``last_ms``; expires when they have decayed; ``detectors/offenders.py``)
- ``rw:{rw:T}:claim:<scope>:<value>``              short-lived claim of the detector action
  acting on a subject (string token, PX), so concurrent actions make one block
- ``rw:{rw:T}:throttle:<what>``                    once-per-period marker of a throttled
  alert (string, EX = the period)
- ``rw:{rw:T}:policies``                           named policies (hash name -> JSON;
  ``limiter/policies/store.py``)
- ``rw:{rw:T}:policies:v``                         the tenant's policy version: a new unique
  value at every policy or override write
- ``rw:{rw:T}:ovr:<policy>``                       a policy's overrides (hash identifier -> JSON)
- ``rw:{rw:T}:incidents``                          incident records (hash id -> JSON, expiring
  a week after the last update; ``detectors/incident_store.py``)
- ``rw:{rw:T}:webhooks``                           webhook records (hash id -> JSON, with
  the signing secret; ``webhooks/registry.py``)
- ``rw:{rw:T}:wh:<id>:health``                     a webhook's delivery health (hash)
- ``rw:{rw:T}:wh:<id>:attempts``                   its latest delivery attempts (list of JSON,
  newest first, capped)
- ``rw:auth:<hash>``                               API-key lookup by keyed BLAKE3 hash
- ``rw:revoked``                                   hashes of revoked keys (set): tombstones
  that keep a revoked bootstrap key from being registered again
- ``rw:keyids``                                    key id -> tenant
- ``rw:tenants``                                   tenant registry (hash name -> JSON config)
- ``rw:policies:v``                                the version of every tenant's policies (a new
  unique value at each write): one GET tells a limiter's policy cache whether anything changed
- ``rw:policies:tenants``                          tenants that have policies (set)
- ``rw:incidents:tenants``                         tenants that have incident records (set),
  for a restarted detector to find the open ones
- ``rw:meta``                                      store metadata (secret fingerprint, …)
- ``rw:epoch``                                     the store's epoch: written once the
  control-plane records are in Redis; its absence means Redis lost its data
  (``control/durable/restore.py``)
- ``rw:events``                                    decision event stream (embedded mode)
- ``rw:events:replayed:<run>``                     the last spooled record of one limiter
  run appended to the stream (string, EX; ``limiter/outage/replay.py``)
- ``rw:audit``                                     audit outbox (stream, never capped: the
  audit drain trims what it stored; ``stream/audit_outbox.py``)
- ``rw:audit:dlq``                                 outbox entries that are not audit events
- ``rw:alerts``                                    alert outbox (stream, approximately capped;
  ``stream/alerts.py`` says why)
- ``rw:incident-log``                              incident outbox (stream, never capped: the
  incident drain trims what it stored; ``stream/incidents.py``)
- ``rw:{rw:.webhooks}:due``                        webhook deliveries by due time (sorted
  set of delivery ids; ``webhooks/queue.py``)
- ``rw:{rw:.webhooks}:pending``                    the deliveries themselves (hash id -> JSON)
- ``rw:{rw:.webhooks}:stats``                      delivery attempts by outcome, every
  tenant's (hash outcome -> count; ``webhooks/stats.py``)

The webhook queue's keys share a hash tag of their own (no tenant name has a dot), so
one transaction or script updates several of them on Redis Cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

from limiter.algorithms import Algorithm

BLOCK_SCOPES = ("ip", "key", "user_id")
# the counters' algorithm part, without a property lookup per key on the hot path
_CODES = {algorithm: algorithm.code for algorithm in Algorithm}


@dataclass(frozen=True, slots=True)
class Keyspace:
    prefix: str = "rw"

    def tenant_tag(self, tenant: str) -> str:
        return f"{self.prefix}:{{{self.prefix}:{tenant}}}"

    def counter(self, tenant: str, algorithm: Algorithm, window_ms: int, key: str) -> str:
        return self.counter_prefix(tenant, algorithm, window_ms) + key

    def counter_prefix(self, tenant: str, algorithm: Algorithm, window_ms: int) -> str:
        """What every counter of ``tenant``'s ``algorithm`` and window starts with: a store
        deciding many checks of one window joins it to each key."""
        return f"{self.prefix}:{{{self.prefix}:{tenant}}}:c:{_CODES[algorithm]}:{window_ms}:"

    def block(self, tenant: str, scope: str, value: str) -> str:
        return self.block_prefix(tenant, scope) + value

    def block_prefix(self, tenant: str, scope: str) -> str:
        return f"{self.prefix}:{{{self.prefix}:{tenant}}}:bk:{scope}:"

    def lifted(self, tenant: str, scope: str, value: str) -> str:
        return f"{self.tenant_tag(tenant)}:lifted:{scope}:{value}"

    def block_records(self, tenant: str) -> str:
        return f"{self.tenant_tag(tenant)}:blocks"

    def block_version(self, tenant: str) -> str:
        return f"{self.tenant_tag(tenant)}:blocks:v"

    def key_records(self, tenant: str) -> str:
        return f"{self.tenant_tag(tenant)}:keys"

    def allowlist(self, tenant: str, scope: str) -> str:
        return f"{self.tenant_tag(tenant)}:allow:{scope}"

    def offences(self, tenant: str, scope: str, value: str) -> str:
        return f"{self.tenant_tag(tenant)}:off:{scope}:{value}"

    def action_claim(self, tenant: str, scope: str, value: str) -> str:
        return f"{self.tenant_tag(tenant)}:claim:{scope}:{value}"

    def throttle(self, tenant: str, what: str) -> str:
        return f"{self.tenant_tag(tenant)}:throttle:{what}"

    def policies(self, tenant: str) -> str:
        return f"{self.tenant_tag(tenant)}:policies"

    def policy_version(self, tenant: str) -> str:
        return f"{self.tenant_tag(tenant)}:policies:v"

    def policy_overrides(self, tenant: str, policy: str) -> str:
        return f"{self.tenant_tag(tenant)}:ovr:{policy}"

    @property
    def policies_version(self) -> str:
        return f"{self.prefix}:policies:v"

    @property
    def policy_tenants(self) -> str:
        return f"{self.prefix}:policies:tenants"

    def incidents(self, tenant: str) -> str:
        return f"{self.tenant_tag(tenant)}:incidents"

    @property
    def incident_tenants(self) -> str:
        return f"{self.prefix}:incidents:tenants"

    def webhooks(self, tenant: str) -> str:
        return f"{self.tenant_tag(tenant)}:webhooks"

    def webhook_health(self, tenant: str, webhook_id: str) -> str:
        return f"{self.tenant_tag(tenant)}:wh:{webhook_id}:health"

    def webhook_attempts(self, tenant: str, webhook_id: str) -> str:
        return f"{self.tenant_tag(tenant)}:wh:{webhook_id}:attempts"

    def auth(self, key_hash: str) -> str:
        return f"{self.prefix}:auth:{key_hash}"

    @property
    def revoked_keys(self) -> str:
        return f"{self.prefix}:revoked"

    @property
    def key_ids(self) -> str:
        return f"{self.prefix}:keyids"

    @property
    def tenants(self) -> str:
        return f"{self.prefix}:tenants"

    @property
    def meta(self) -> str:
        return f"{self.prefix}:meta"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    def replay_mark(self, run: str) -> str:
        """The high-water mark of the spool records of the limiter run ``run``."""
        return f"{self.prefix}:events:replayed:{run}"

    @property
    def audit(self) -> str:
        return f"{self.prefix}:audit"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}:alerts"

    @property
    def incident_log(self) -> str:
        return f"{self.prefix}:incident-log"

    @property
    def webhook_due(self) -> str:
        return f"{self.prefix}:{{{self.prefix}:.webhooks}}:due"

    @property
    def webhook_pending(self) -> str:
        return f"{self.prefix}:{{{self.prefix}:.webhooks}}:pending"

    @property
    def webhook_stats(self) -> str:
        return f"{self.prefix}:{{{self.prefix}:.webhooks}}:stats"
