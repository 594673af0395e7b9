"""``ratewatch policies``: policies as code, applied directly to the store (also while the
service runs: every limiter has the change in force within a second)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ratewatch.cli.keys import CLI_ACTOR, store_options, store_session
from ratewatch.cli.options import run

if TYPE_CHECKING:
    from control.durable.records import DurableRecords
    from limiter.policies.model import Override, Policy
    from limiter.policies.store import PolicyStore
    from ratewatch.cli.policies_file import Change
    from stream.audit_outbox import AuditOutbox


@click.group()
def policies() -> None:
    """Apply and export a tenant's named policies (docs/policies.md)."""


@policies.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tenant", required=True, help="The tenant whose policies the file declares.")
@click.option("--dry-run", is_flag=True, help="Print the changes, make none.")
@store_options
def apply(
    file: Path,
    tenant: str,
    dry_run: bool,
    data_dir: Path,
    redis_url: str | None,
    clickhouse_url: str | None,
    key_prefix: str,
) -> None:
    """Make the tenant's policies exactly those of FILE (YAML): create and change what
    differs, delete what the file does not name.  Prints each change; applying the same
    file again changes nothing."""
    from ratewatch.cli.policies_file import PolicyFileError, diff, parse

    try:
        desired = parse(file.read_text(encoding="utf-8"), str(file))
    except (PolicyFileError, UnicodeDecodeError) as exc:
        raise click.ClickException(str(exc)) from None

    async def go() -> list[Change]:
        from limiter.policies.store import PolicyStore

        async with store_session(data_dir, redis_url, key_prefix, clickhouse_url) as session:
            store = PolicyStore(session.redis, session.keyspace)
            current, overrides = await _read(store, tenant)
            changes = diff(desired, current, overrides)
            if not dry_run:
                for change in changes:
                    await _apply(store, session.durable, session.audit, tenant, change, overrides)
            return changes

    changes = run(go())
    for change in changes:
        click.echo(change.describe())
    verb = "would change" if dry_run else "changed"
    click.echo(f"{len(changes)} {'change' if len(changes) == 1 else 'changes'}; {verb} "
               f"tenant {tenant}'s policies." if changes else "No changes.")  # fmt: skip


@policies.command(name="export")
@click.option("--tenant", required=True, help="The tenant whose policies to print.")
@store_options
def export_policies(
    tenant: str,
    data_dir: Path,
    redis_url: str | None,
    clickhouse_url: str | None,
    key_prefix: str,
) -> None:
    """Print the tenant's policies as a file `ratewatch policies apply` takes."""
    from ratewatch.cli.policies_file import export

    async def go() -> str:
        from limiter.policies.store import PolicyStore

        async with store_session(data_dir, redis_url, key_prefix, clickhouse_url) as session:
            return export(*await _read(PolicyStore(session.redis, session.keyspace), tenant))

    click.echo(run(go()), nl=False)


async def _read(store: PolicyStore, tenant: str) -> tuple[list[Policy], dict[str, list[Override]]]:
    current = await store.policies(tenant)
    return current, {p.name: await store.overrides(tenant, p.name) for p in current}


async def _apply(
    store: PolicyStore,
    durable: DurableRecords,
    audit: AuditOutbox,
    tenant: str,
    change: Change,
    overrides: dict[str, list[Override]],
) -> None:
    """One change, as the API makes it: journaled (a deletion before Redis), audited."""
    from stream.audit import (
        OVERRIDE_DELETED,
        OVERRIDE_SAVED,
        POLICY_DELETED,
        POLICY_SAVED,
        new_audit_event,
    )

    name, identifier, rule = change.policy, change.identifier, change.rule
    target = name if identifier is None else f"{name}/{identifier}"
    if identifier is None and rule is not None:
        policy, _ = await store.put_policy(tenant, name, rule)
        await durable.policy_saved(tenant, policy)
        action = POLICY_SAVED
    elif identifier is None:
        policy = await store.policy(tenant, name)
        await durable.policy_deleted(tenant, policy, overrides.get(name, []))
        await store.delete_policy(tenant, name)
        action = POLICY_DELETED
    elif rule is not None:
        override, _ = await store.put_override(tenant, name, identifier, rule)
        await durable.override_saved(tenant, override)
        action = OVERRIDE_SAVED
    else:
        override = await store.override(tenant, name, identifier)
        await durable.override_deleted(tenant, override)
        await store.delete_override(tenant, name, identifier)
        action = OVERRIDE_DELETED
    details = {"policy": name, "identifier": identifier, "via": "policies apply"}
    await audit.record(new_audit_event(tenant, CLI_ACTOR, action, target, details))
