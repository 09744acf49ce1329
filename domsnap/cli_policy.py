"""CLI of scheduled backups: policies, labels, protection, pruning, the scheduler and
the metrics. Registered on ``domsnap``'s main group (one import in domsnap/cli.py)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import click

from domsnap.cli import _client, _dumps, _when, main

if TYPE_CHECKING:  # imported where used: the CLI starts without pydantic (domsnap/cli.py)
    from schemas.policy import Policy, PolicyRun


def parse_labels(items: list[str]) -> dict[str, str]:
    """:func:`domsnap.policies.parse_labels`, imported when a command needs it."""
    from domsnap.policies import parse_labels as parse

    return parse(items)

_json = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _schedule(p: Policy) -> str:
    when = f"cron '{p.cron}' {p.timezone}" if p.cron else f"every {p.interval_s:g} s"
    return when + (" (paused)" if p.paused else "")


def _retention(p: Policy) -> str:
    parts = [f"{k.replace('_', '-')}={v:g}" if isinstance(v, float) else
             f"{k.replace('_', '-')}={v}"
             for k, v in p.retention.model_dump().items() if v is not None]
    return " ".join(parts) or "keep everything"


@main.command("policy-create")
@click.argument("name")
@click.option("--cron", help="5-field cron expression (minute hour dom month dow).")
@click.option("--every", "interval", type=float, help="Or: run every SECONDS.")
@click.option("--timezone", default="UTC", show_default=True, help="IANA zone of --cron.")
@click.option("--domain", "domains", multiple=True, help="A domain name or uuid (repeat).")
@click.option("--host", "hosts", multiple=True, help="Every domain of a host (repeat).")
@click.option("--label", "labels", multiple=True, help="key=value the domains carry (repeat: "
              "all must match).")
@click.option("--disk-only", is_flag=True, help="Disks only, no memory.")
@click.option("--type", "snap_type", type=click.Choice(["internal", "external"]),
              default="internal", show_default=True)
@click.option("--name-template", help="Snapshot name: str.format with policy, domain, "
              "time, utc, epoch (default {policy}-{utc:%Y%m%dT%H%M%SZ}).")
@click.option("--keep-last", type=int)
@click.option("--keep-hourly", type=int)
@click.option("--keep-daily", type=int)
@click.option("--keep-weekly", type=int)
@click.option("--keep-monthly", type=int)
@click.option("--keep-yearly", type=int)
@click.option("--expire-after", type=float, help="Delete snapshots older than SECONDS.")
@click.option("--missed", type=click.Choice(["skip", "run-once"]), default="run-once",
              show_default=True, help="A run missed while no scheduler ran.")
@click.option("--max-per-host", type=int, default=4, show_default=True,
              help="Creates in flight per host at once.")
@click.option("--max-chain-depth", type=int, default=10, show_default=True,
              help="External: links per disk before the oldest are merged.")
@click.option("--paused", is_flag=True, help="Create it paused.")
@click.option("--replace", is_flag=True, help="Change an existing policy.")
@_json
def policy_create(name: str, cron: str | None, interval: float | None, timezone: str,
                  domains: tuple[str, ...], hosts: tuple[str, ...], labels: tuple[str, ...],
                  disk_only: bool, snap_type: str, name_template: str | None,
                  keep_last: int | None, keep_hourly: int | None, keep_daily: int | None,
                  keep_weekly: int | None, keep_monthly: int | None, keep_yearly: int | None,
                  expire_after: float | None, missed: str, max_per_host: int,
                  max_chain_depth: int, paused: bool, replace: bool, as_json: bool) -> None:
    """Create (or --replace) backup policy NAME."""
    data: dict[str, Any] = {
        "name": name, "cron": cron, "interval_s": interval, "timezone": timezone,
        "select": {"domains": list(domains), "hosts": list(hosts),
                   "labels": parse_labels(list(labels))},
        "disk_only": disk_only, "type": snap_type, "missed": missed,
        "max_per_host": max_per_host, "max_chain_depth": max_chain_depth, "paused": paused,
        "retention": {"keep_last": keep_last, "keep_hourly": keep_hourly,
                      "keep_daily": keep_daily, "keep_weekly": keep_weekly,
                      "keep_monthly": keep_monthly, "keep_yearly": keep_yearly,
                      "expire_after_s": expire_after}}
    if name_template:
        data["name_template"] = name_template
    policy = _client().policies.create(data, replace=replace)
    click.echo(_dumps(policy.model_dump(mode="json")) if as_json else
               f"policy {policy.name} (revision {policy.revision}): {_schedule(policy)}")


@main.command("policy-list")
@_json
def policy_list(as_json: bool) -> None:
    """Every policy: schedule, selection, retention."""
    policies = _client().policies.all()
    if as_json:
        click.echo(_dumps([p.model_dump(mode="json") for p in policies]))
        return
    for p in policies:
        click.echo(f"{p.name:<24} {_schedule(p):<40} {p.type:<8} {_retention(p)}")


def _run_lines(run: PolicyRun) -> list[str]:
    end = _when(run.finished_at) if run.finished_at else "running"
    counts = {o: sum(1 for d in run.domains if d.outcome == o)
              for o in ("succeeded", "failed", "skipped")}
    pw = run.pause_window
    lines = [f"  run {run.run_id[:8]} {_when(run.started_at)} -> {end}: "
             + ", ".join(f"{n} {o}" for o, n in counts.items())
             + (f"; pauses {pw[0]:.1f}-{pw[1]:.1f} ms" if pw else "")]
    for d in run.domains:
        lines.append(f"    {d.domain_name or d.domain:<24} {d.outcome:<9} "
                     f"{d.snapshot or '-'}" + (f"  ({d.reason})" if d.reason else "")
                     + (f"  pruned {', '.join(d.pruned)}" if d.pruned else ""))
    lines.extend(f"    error: {e}" for e in run.errors)
    return lines


@main.command("policy-show")
@click.argument("name")
@click.option("--runs", "n_runs", type=int, default=5, show_default=True,
              help="How many of the last runs.")
@_json
def policy_show(name: str, n_runs: int, as_json: bool) -> None:
    """A policy in full and its last runs (per-domain outcome, pauses, pruning)."""
    pst = _client().policies
    policy = pst.get(name)
    runs = pst.runs(name, n_runs)
    if as_json:
        click.echo(_dumps({"policy": policy.model_dump(mode="json"),
                           "runs": [r.model_dump(mode="json") for r in runs]}))
        return
    sel = policy.select
    click.echo(f"policy {policy.name} (revision {policy.revision}): {_schedule(policy)}")
    click.echo(f"  select: domains={list(sel.domains)} hosts={list(sel.hosts)} "
               f"labels={dict(sel.labels)}")
    click.echo(f"  snapshot: {policy.type}{', disk-only' if policy.disk_only else ''}, "
               f"name {policy.name_template}")
    click.echo(f"  retention: {_retention(policy)}; missed runs: {policy.missed}; "
               f"max per host {policy.max_per_host}; max chain depth {policy.max_chain_depth}")
    click.echo(f"last {len(runs)} run(s):" if runs else "no runs yet")
    for run in runs:
        for line in _run_lines(run):
            click.echo(line)


@main.command("policy-delete")
@click.argument("name")
def policy_delete(name: str) -> None:
    """Delete a policy (its snapshots stay, and are no longer pruned)."""
    _client().policies.delete(name)
    click.echo(f"policy {name} deleted")


def _pause(name: str, paused: bool, as_json: bool) -> None:
    policy = _client().policies.set_paused(name, paused)
    click.echo(_dumps(policy.model_dump(mode="json")) if as_json else
               f"policy {name} {'paused' if paused else 'resumed'}")


@main.command("policy-pause")
@click.argument("name")
@_json
def policy_pause(name: str, as_json: bool) -> None:
    """Stop firing a policy (until policy-resume)."""
    _pause(name, True, as_json)


@main.command("policy-resume")
@click.argument("name")
@_json
def policy_resume(name: str, as_json: bool) -> None:
    """Fire a paused policy again."""
    _pause(name, False, as_json)


@main.command("domain-label")
@click.argument("domain")
@click.argument("labels", nargs=-1)
@click.option("--remove", multiple=True, help="Remove a label key (repeat).")
@_json
def domain_label(domain: str, labels: tuple[str, ...], remove: tuple[str, ...],
                 as_json: bool) -> None:
    """Set (key=value) or remove labels of DOMAIN; prints its labels."""
    result = _client().label(domain, parse_labels(list(labels)), list(remove))
    click.echo(_dumps(result) if as_json else
               " ".join(f"{k}={v}" for k, v in sorted(result.items())))


def _protect(domain: str, name: str, on: bool, as_json: bool) -> None:
    _client().protect(domain, name, on)
    click.echo(_dumps({"domain": domain, "name": name, "protected": on}) if as_json else
               f"snapshot {name} {'protected' if on else 'unprotected'}")


@main.command("snapshot-protect")
@click.option("-n", "--name", required=True, help="The snapshot.")
@_json
@click.argument("domain")
def snapshot_protect(name: str, as_json: bool, domain: str) -> None:
    """Never prune snapshot NAME of DOMAIN (it counts toward no keep rule)."""
    _protect(domain, name, True, as_json)


@main.command("snapshot-unprotect")
@click.option("-n", "--name", required=True, help="The snapshot.")
@_json
@click.argument("domain")
def snapshot_unprotect(name: str, as_json: bool, domain: str) -> None:
    """Let pruning consider snapshot NAME of DOMAIN again."""
    _protect(domain, name, False, as_json)


@main.command("prune")
@click.option("--policy", help="Only this policy (default: every policy).")
@click.option("--dry-run", is_flag=True, help="Print what would go; delete nothing.")
@_json
@click.argument("domain", required=False)
def prune(policy: str | None, dry_run: bool, as_json: bool, domain: str | None) -> None:
    """Apply retention now: print what is kept (by which rule) and deleted (and why).

    Only snapshots a policy made are ever pruned; protected ones never."""
    plans = _client().prune(policy=policy, domain=domain, dry_run=dry_run)
    failed = any(p.errors for p in plans)
    if as_json:
        click.echo(_dumps([{"policy": p.policy, "domain": p.domain,
                            "domain_name": p.domain_name, "keep": p.decision.keep,
                            "delete": p.decision.delete, "protected": p.decision.protected,
                            "deleted": p.deleted, "errors": p.errors, "dry_run": dry_run}
                           for p in plans]))
    else:
        for p in plans:
            d = p.decision
            if domain and not (d.keep or d.delete or d.protected):
                continue  # a policy with no snapshot of this domain
            click.echo(f"policy {p.policy}, domain {p.domain_name}:")
            for n, rules in p.decision.keep.items():
                click.echo(f"  keep    {n}  ({', '.join(rules)})")
            for n in p.decision.protected:
                click.echo(f"  keep    {n}  (protected)")
            for n, why in p.decision.delete.items():
                verb = "would delete" if dry_run else (
                    "deleted" if n in p.deleted else "NOT deleted")
                click.echo(f"  {verb:<7} {n}  ({why})")
            for e in p.errors:
                click.echo(f"  error: {e}", err=True)
    if failed:
        sys.exit(10)


@main.command("scheduler")
@click.option("-c", "--concurrency", type=int, default=4, show_default=True,
              help="Policy runs at once.")
@click.option("--metrics-port", type=int, default=None,
              help="Serve Prometheus metrics here (default DOMSNAP_METRICS_PORT, 0 = off).")
@click.option("--loglevel", default="INFO", show_default=True)
def scheduler(concurrency: int, metrics_port: int | None, loglevel: str) -> None:
    """Run the policy scheduler: Celery beat (celery-redbeat) + the policy-run worker."""
    from domsnap.settings import get_settings
    from workers.scheduler import run

    settings = get_settings()
    port = settings.metrics_port if metrics_port is None else metrics_port
    sys.exit(run(settings, concurrency=concurrency, loglevel=loglevel, metrics_port=port))


@main.command("metrics")
@click.option("--port", type=int, default=None, help="Serve /metrics on PORT until stopped "
              "(default: print them once).")
def metrics(port: int | None) -> None:
    """Prometheus metrics of the fleet, read from Redis."""
    from domsnap import metrics as m

    store = _client().store
    if port is None:
        click.echo(m.exposition(store), nl=False)
        return
    m.serve(store, port)
    click.echo(f"serving metrics on port {port}", err=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
