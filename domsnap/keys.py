"""Every Redis key name of domsnap, built here and nowhere else.

All keys of one domain share the hash tag ``{<domain uuid>}`` (and of one job
``{<job id>}``, of one host ``{<host>}``) so that multi-key transactions stay in
one slot on Redis Cluster.
"""

from __future__ import annotations


class Keys:
    def __init__(self, prefix: str = "domsnap") -> None:
        self.prefix = prefix

    # one domain
    def _dom(self, uuid: str) -> str:
        return f"{self.prefix}:dom:{{{uuid}}}"

    def snapshots(self, uuid: str) -> str:
        """hash: snapshot name -> SnapshotRecord JSON (only ready snapshots)."""
        return self._dom(uuid) + ":snapshots"

    def summaries(self, uuid: str) -> str:
        """hash: snapshot name -> SnapshotSummary JSON (schemas/summary.py), written with
        the record in the same atomic write: what a listing reads."""
        return self._dom(uuid) + ":summaries"

    def by_time(self, uuid: str) -> str:
        """sorted set: snapshot names scored by created_at (ties by name): the order and
        the pages of a listing."""
        return self._dom(uuid) + ":bytime"

    def meta(self, uuid: str) -> str:
        """hash: current -> name of the domain's current snapshot."""
        return self._dom(uuid) + ":meta"

    def reserved(self, uuid: str) -> str:
        """hash: snapshot name -> job id of the create that claimed it."""
        return self._dom(uuid) + ":reserved"

    def lock(self, uuid: str) -> str:
        """string: job id of the mutating operation running on the domain (a lease)."""
        return self._dom(uuid) + ":lock"

    def lock_token(self, uuid: str) -> str:
        """string: the fencing token of the lock's current holder (expires with it)."""
        return self._dom(uuid) + ":lock:token"

    def fence(self, uuid: str) -> str:
        """string: the domain's fencing counter (monotonic, never expires)."""
        return self._dom(uuid) + ":fence"

    # one job
    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{{{job_id}}}"

    def job_fence(self, job_id: str) -> str:
        """string: the fencing token of whoever may end the job now."""
        return f"{self.prefix}:job:{{{job_id}}}:fence"

    def job_events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{{{job_id}}}:events"

    def job_notify(self, job_id: str) -> str:
        """pub/sub channel: a message after each event and each change of the job record
        (:mod:`domsnap.jobwatch`); it carries no state."""
        return f"{self.prefix}:job:{{{job_id}}}:notify"

    def job_cancel(self, job_id: str) -> str:
        """string: set when someone asked to cancel the job (the engine checks it)."""
        return f"{self.prefix}:job:{{{job_id}}}:cancel"

    # one caller's request id
    def request(self, request_id: str) -> str:
        """string: job id of the first request that carried this request id."""
        return f"{self.prefix}:request:{{{request_id}}}"

    # one host
    def inventory(self, host: str) -> str:
        return f"{self.prefix}:host:{{{host}}}:inventory"

    def alive(self, host: str) -> str:
        return f"{self.prefix}:host:{{{host}}}:alive"

    # fleet-wide single keys
    @property
    def hosts(self) -> str:
        return f"{self.prefix}:hosts"

    @property
    def index_uuid(self) -> str:
        """hash: domain uuid -> owning host."""
        return f"{self.prefix}:index:uuid"

    @property
    def index_name(self) -> str:
        """hash: domain name -> domain uuid."""
        return f"{self.prefix}:index:name"

    @property
    def audit(self) -> str:
        """stream (capped): the audit log of every mutating operation."""
        return f"{self.prefix}:audit"

    @property
    def seq(self) -> str:
        """counter giving every job event a fleet-wide order."""
        return f"{self.prefix}:seq"

    # scheduled backups (domsnap.policies)
    def labels(self, uuid: str) -> str:
        """hash: label key -> value, set by ``domsnap domain-label``."""
        return self._dom(uuid) + ":labels"

    def protected(self, uuid: str) -> str:
        """set: names of the domain's snapshots that pruning never deletes."""
        return self._dom(uuid) + ":protected"

    @property
    def policies(self) -> str:
        """hash: policy name -> Policy JSON."""
        return f"{self.prefix}:policies"

    def policy_runs(self, policy: str) -> str:
        """list: the policy's last runs, PolicyRun JSON, newest first."""
        return f"{self.prefix}:policy:{{{policy}}}:runs"

    def policy_jobs(self, policy: str) -> str:
        """hash: domain uuid -> job id of the policy's last create on it."""
        return f"{self.prefix}:policy:{{{policy}}}:jobs"

    def policy_running(self, policy: str) -> str:
        """string: run id of the policy's run in progress (short TTL, renewed)."""
        return f"{self.prefix}:policy:{{{policy}}}:running"

    @property
    def beat_prefix(self) -> str:
        """Prefix of the scheduler's own keys (celery-redbeat entries, lock)."""
        return f"{self.prefix}:beat"

    # metrics (domsnap.metrics)
    @property
    def metrics_jobs(self) -> str:
        """hash: '<op>:<state>' -> count of ended jobs."""
        return f"{self.prefix}:metrics:jobs"

    def metrics_hist(self, name: str) -> str:
        """hash: histogram buckets ('le:<bound>', 'sum', 'count')."""
        return f"{self.prefix}:metrics:hist:{name}"

    @property
    def metrics_policy_success(self) -> str:
        """hash: policy -> time of its last run in which every domain succeeded."""
        return f"{self.prefix}:metrics:policy_success"
