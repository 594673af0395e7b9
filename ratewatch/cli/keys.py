"""``ratewatch keys``: manage API keys directly in the store, also while the service runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import click

from ratewatch.cli.options import data_dir_option, key_secret, option, redis_url_option, run

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from control.durable.records import DurableRecords
    from limiter.keyspace import Keyspace
    from limiter.state.apikeys import KeyRecord, KeyStore
    from stream.audit_outbox import AuditOutbox

# who the audit log names for changes made with this command
CLI_ACTOR = "cli"


class StoreSession(NamedTuple):
    redis: Redis
    keyspace: Keyspace
    keys: KeyStore
    audit: AuditOutbox
    durable: DurableRecords


@asynccontextmanager
async def key_store(
    data_dir: Path, redis_url: str | None, key_prefix: str, clickhouse_url: str | None = None
) -> AsyncIterator[tuple[KeyStore, AuditOutbox, DurableRecords]]:
    """``store_session``'s key store, audit outbox and durable copy."""
    async with store_session(data_dir, redis_url, key_prefix, clickhouse_url) as session:
        yield session.keys, session.audit, session.durable


@asynccontextmanager
async def store_session(
    data_dir: Path, redis_url: str | None, key_prefix: str, clickhouse_url: str | None = None
) -> AsyncIterator[StoreSession]:
    """A KeyStore on --redis-url, the running embedded Valkey, or one started for the
    call; the audit outbox of that store, where the CLI's changes are recorded; and the
    durable copy the limiters restore Redis from (``control/durable/``), which the CLI's
    changes go to as the API's do."""
    from control.durable.records import DurableRecords
    from control.durable.stores import open_journal
    from limiter.embedded import EmbeddedValkey, running_url
    from limiter.keyspace import Keyspace
    from limiter.redis_client import connect
    from limiter.state.apikeys import KeyHasher, KeyStore
    from limiter.state.tenants import TenantSettingsStore
    from stream.audit_outbox import AuditOutbox
    from webhooks.sealing import SecretSealer

    embedded = None
    url = redis_url or running_url(data_dir)
    redis = await connect(url, socket_timeout=5.0) if url else None
    if redis is None:
        embedded = EmbeddedValkey(data_dir)
        redis = await connect(embedded.start(), socket_timeout=5.0)
    secret = key_secret(data_dir)
    journal = open_journal(data_dir, clickhouse_url)
    try:
        keyspace = Keyspace(key_prefix)
        store = KeyStore(redis, keyspace, KeyHasher(secret))
        await store.verify_secret()
        durable = DurableRecords(
            journal, SecretSealer(secret), TenantSettingsStore(redis, keyspace)
        )
        yield StoreSession(redis, keyspace, store, AuditOutbox(redis, keyspace.audit), durable)
    finally:
        await journal.close()
        await redis.aclose()
        if embedded is not None:
            embedded.stop()


def store_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = data_dir_option(redis_url_option(f))
    f = option(
        "--clickhouse-url",
        default=None,
        help="The ClickHouse server whose durable copy of the keys the limiters use.",
    )(f)
    return option("--key-prefix", default="rw", show_default=True)(f)


@click.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command()
@click.option("--tenant", required=True, help="Tenant the key belongs to (created if new).")
@click.option("--admin", is_flag=True, help="The key may manage keys, blocks and settings.")
@click.option("--name", default="", help="A label to recognise the key by.")
@click.option("--segment", default="", help="Customer segment (tier) of the key's checks.")
@click.option(
    "--signed",
    is_flag=True,
    help="The key's requests must be HMAC-SHA256 signed with a signing secret, printed once "
    "(docs/security.md, 'Signed requests').",
)
@store_options
def create(
    tenant: str,
    admin: bool,
    name: str,
    segment: str,
    signed: bool,
    data_dir: Path,
    redis_url: str | None,
    clickhouse_url: str | None,
    key_prefix: str,
) -> None:
    """Create a key; it is printed once, as the last word of the output (a signed key's
    signing secret on the line before)."""
    from stream.audit import KEY_CREATED, new_audit_event

    async def go() -> tuple[str, KeyRecord, str | None]:
        async with key_store(data_dir, redis_url, key_prefix, clickhouse_url) as (
            store,
            audit,
            durable,
        ):
            api_key, record = await store.create(
                tenant, admin=admin, name=name, segment=segment, signed=signed
            )
            await durable.key_saved(record)
            details = {"admin": admin, "name": name, "segment": segment or None, "signed": signed}
            await audit.record(new_audit_event(tenant, CLI_ACTOR, KEY_CREATED, record.id, details))
            return api_key, record, store.signing_secret(record)

    api_key, record, secret = run(go())
    kind = ("signed " if signed else "") + ("admin key" if admin else "key")
    if secret is None:
        click.echo(
            f"Created {kind} {record.id} for tenant {tenant}. Store it now, it is not shown again:"
        )
    else:
        click.echo(
            f"Created {kind} {record.id} for tenant {tenant}: its requests must be signed with "
            "its signing secret (docs/security.md, 'Signed requests'). Store both now, they "
            "are not shown again."
        )
        click.echo(f"Signing secret: {secret}")
        click.echo("API key:")
    click.echo(api_key)


@keys.command(name="list")
@click.option("--tenant", default=None, help="Only this tenant's keys.")
@store_options
def list_keys(
    tenant: str | None,
    data_dir: Path,
    redis_url: str | None,
    clickhouse_url: str | None,
    key_prefix: str,
) -> None:
    """List keys (never the keys themselves: id, tenant, role, name, hint)."""

    async def go() -> list[KeyRecord]:
        async with key_store(data_dir, redis_url, key_prefix, clickhouse_url) as (store, _, _):
            return await store.list_keys(tenant)

    click.echo(f"{'ID':<22} {'TENANT':<20} {'ROLE':<8} {'HINT':<16} NAME")
    for record in run(go()):
        role = "admin" if record.admin else "standard"
        click.echo(f"{record.id:<22} {record.tenant:<20} {role:<8} {record.hint:<16} {record.name}")


@keys.command()
@click.argument("key_id")
@store_options
def revoke(
    key_id: str,
    data_dir: Path,
    redis_url: str | None,
    clickhouse_url: str | None,
    key_prefix: str,
) -> None:
    """Revoke the key KEY_ID; running limiters refuse it within a second."""

    from stream.audit import KEY_REVOKED, new_audit_event

    async def go() -> None:
        async with key_store(data_dir, redis_url, key_prefix, clickhouse_url) as (
            store,
            audit,
            durable,
        ):
            # journaled first: once revoked in the durable copy, no restore brings it back
            for known in await store.list_keys():
                if known.id == key_id:
                    await durable.key_revoked(known)
            record = await store.revoke(key_id)
            await audit.record(
                new_audit_event(
                    record.tenant, CLI_ACTOR, KEY_REVOKED, record.id, {"name": record.name}
                )
            )

    run(go())
    click.echo(f"Revoked {key_id}.")
