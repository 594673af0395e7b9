"""``ratewatch up``: everything on one machine, as one process tree.

The supervisor (this process) owns the embedded Valkey server and starts the children: the
lean limiter (``ratewatch serve``) and the pipeline worker, which owns chDB and detects
abuse (``ratewatch pipeline`` reading the Valkey event stream); with ``--kafka``, ``ratewatch
stream`` and ``ratewatch detect`` instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from ratewatch.cli.metrics import METRICS_VARIABLES, check_bindable, metrics_options
from ratewatch.cli.options import (
    api_limit_args,
    api_limit_values,
    backlog_options,
    batch_args,
    batch_bounds,
    batch_options,
    connection_args,
    hold_args,
    hold_options,
    limiter_options,
    option,
    service_options,
    user_errors,
)
from ratewatch.processes.handover import HeldServer, hand_over
from ratewatch.processes.supervisor import Child, Supervisor

# The embedded pipeline worker runs without docstrings and asserts (python -OO): nothing in
# it reads a docstring, and those of the libraries it loads (scikit-learn, SciPy, polars,
# NumPy) are 16-20 MB of its memory for as long as it runs.  Its polars computes on one
# thread: detection's frames are small, and handing each step to a second thread cost more
# than it saved on a box whose other core answers the checks (docs/performance.md).
LEAN_WORKER_ENV = {"PYTHONOPTIMIZE": "2", "POLARS_MAX_THREADS": "1"}


@click.command()
@service_options
@batch_options
@metrics_options
@option(
    "--pipeline-nice",
    type=click.IntRange(0, 19),
    default=10,
    show_default=True,
    help="How much lower the CPU priority of the pipeline worker (and, with --kafka, of the "
    "consumer and the detector) is than the limiter's; 0: the same.",
)
@hold_options
@backlog_options()
@limiter_options
def up(
    host: str,
    port: int,
    data_dir: Path,
    redis_url: str | None,
    kafka: str | None,
    clickhouse_url: str | None,
    fail_mode: str,
    workers: int,
    key_prefix: str,
    webhooks_allow_private: bool,
    batch_max_decisions: int,
    batch_max_age: float,
    batch_min_decisions: int,
    batch_min_age: float,
    metrics_port: int | None,
    metrics_host: str,
    pipeline_nice: int,
    pipeline_hold_above: float,
    pipeline_hold_max: float,
    backlog_max_mb: int,
    backlog_max_age: float,
    control_rate_limit: str,
    test_ping_rate_limit: str,
    privacy_rate_limit: str,
    auth_failure_limit: str,
    trusted_proxies: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    header_timeout: float,
    body_timeout: float,
    keep_alive_timeout: float,
    max_connections: int,
    max_header_bytes: int,
    metrics_token: str | None,
    tracing: bool,
    denial_cache_entries: int,
    grpc_port: int | None,
) -> None:
    """Run RateWatch on this machine: the limiter API, the decision pipeline into the
    analytics store, and an embedded Valkey (unless --redis-url). Ready when /health answers.

    --metrics-port serves the pipeline worker's metrics (the limiter has /metrics); with
    --kafka, the consumer's on that port and the detector's on the next one."""
    if metrics_port is not None and kafka and metrics_port == 65535:
        raise click.BadParameter(
            "65535 leaves no port for the detector's metrics (it takes the next one)",
            param_hint="'--metrics-port'",
        )
    if grpc_port is not None and grpc_port == port:
        raise click.BadParameter(f"{grpc_port} is the HTTP port", param_hint="'--grpc-port'")
    if pipeline_hold_above > 0 and pipeline_hold_max >= backlog_max_age:
        raise click.BadParameter(
            f"{pipeline_hold_max:g} s is not below --backlog-max-age ({backlog_max_age:g} s): "
            "a held stream would be reported as behind",
            param_hint="'--pipeline-hold-max'",
        )
    if metrics_port is not None:
        check_bindable(metrics_host, [metrics_port, metrics_port + 1] if kafka else [metrics_port])
    api_limits = api_limit_values(
        control_rate_limit, test_ping_rate_limit, privacy_rate_limit, auth_failure_limit
    )
    bounds = batch_bounds(batch_max_decisions, batch_max_age, batch_min_decisions, batch_min_age)
    with user_errors():
        from limiter.embedded import EmbeddedValkey
        from limiter.redis_client import check_redis_url
        from limiter.settings import check_metrics_token
        from limiter.state.bootstrap import check_bootstrap_key
        from ratewatch.cli.serve import check_grpc_port, parse_api_limits
        from ratewatch.processes.private import make_private
        from ratewatch.processes.serving import parse_trusted_proxies
        from ratewatch.processes.tls import tls_files

        # refused here, once, rather than by a limiter child the supervisor restarts
        bootstrap_key = os.environ.get("RATEWATCH_BOOTSTRAP_KEY")
        if bootstrap_key:
            check_bootstrap_key(bootstrap_key)
        if metrics_token:
            check_metrics_token(metrics_token)

        # checked here, so that a bad value stops up before anything starts
        tls = tls_files(tls_cert, tls_key)
        parse_trusted_proxies(trusted_proxies)
        parse_api_limits(api_limits)
        if grpc_port is not None:  # refused here rather than by every restart of the limiter
            check_grpc_port(host, grpc_port)
        data_dir = data_dir.resolve()
        # before Valkey and the children start: they inherit the umask
        make_private(data_dir)
        valkey = None
        if redis_url is None:
            valkey = EmbeddedValkey(data_dir)
            redis_url = valkey.start()
        else:
            check_redis_url(redis_url)
    try:
        common = ["--data-dir", str(data_dir), "--key-prefix", key_prefix]
        # the limiter checks webhook targets at creation, the worker at each delivery
        webhooks = ["--webhooks-allow-private"] if webhooks_allow_private else []
        limiter = [
            "serve",
            "--host",
            host,
            "--port",
            str(port),
            "--fail-mode",
            fail_mode,
            "--workers",
            str(workers),
            *common,
            *webhooks,
            *api_limit_args(api_limits, trusted_proxies),
            *connection_args(
                header_timeout, body_timeout, keep_alive_timeout, max_connections, max_header_bytes
            ),
            "--denial-cache-entries",
            str(denial_cache_entries),
        ]
        if tracing:  # the limiter's check path; the pipeline has no spans
            limiter.append("--tracing")
        if grpc_port is not None:
            limiter += ["--grpc-port", str(grpc_port)]
        if tls is not None:
            limiter += ["--tls-cert", str(tls.cert.resolve()), "--tls-key", str(tls.key.resolve())]
        run_dir = data_dir / "run"
        # a metrics port in the environment would reach every child that takes one (stream
        # and detect with --kafka), and all but the first would fail to bind it; the URLs,
        # which may hold passwords, go through the environment, where `ps` does not show them
        env = {name: value for name, value in os.environ.items() if name not in METRICS_VARIABLES}
        if metrics_token:  # by the environment: a command line is visible to other users
            env["RATEWATCH_METRICS_TOKEN"] = metrics_token
        env.pop("RATEWATCH_CLICKHOUSE_URL", None)
        env["RATEWATCH_REDIS_URL"] = redis_url
        analytics = {"RATEWATCH_CLICKHOUSE_URL": clickhouse_url} if clickhouse_url else {}
        worker_env = {**env, **analytics}
        # the limiter's analytics routes ask the pipeline worker, which owns chDB
        limiter_env = {
            **env,
            "RATEWATCH_CLICKHOUSE_URL": clickhouse_url or f"chdb://{data_dir / 'clickhouse'}",
        }
        others: list[Child] = []

        def metrics(offset: int) -> list[str]:
            if metrics_port is None:
                return []
            return ["--metrics-port", str(metrics_port + offset), "--metrics-host", metrics_host]

        if kafka:
            limiter += ["--kafka", kafka]
            # with the Redis URL it also drains the audit and alert outboxes (into Kafka too)
            worker = ["stream", "--kafka", kafka, *common, *webhooks, *metrics(0)]
            detector = ["detect", "--kafka", kafka, *common, *metrics(1)]
            others.append(
                Child(
                    "detect", detector, pid_file=run_dir / "detect.pid", env=env, nice=pipeline_nice
                )
            )
        else:
            # the pipeline worker also detects abuse in the Valkey stream
            limiter += ["--redis-events", "--backlog-max-mb", str(backlog_max_mb)]
            limiter += ["--backlog-max-age", str(backlog_max_age)]
            worker = ["pipeline", *common, *webhooks]
            worker += metrics(0)
            # the checks first: the worker holds its inserts while the limiter is busy
            worker += hold_args(run_dir / "limiter.pid", pipeline_hold_above, pipeline_hold_max)
            worker_env = {**LEAN_WORKER_ENV, **worker_env}  # the user's own setting stands
        worker += batch_args(bounds)
        children = [
            Child("limiter", limiter, pid_file=run_dir / "limiter.pid", env=limiter_env),
            # the checks come first: the worker catches up when they leave it the time
            Child(
                "pipeline",
                worker,
                pid_file=run_dir / "pipeline.pid",
                env=worker_env,
                nice=pipeline_nice,
            ),
            *others,
        ]
        released = valkey.release() if valkey is not None else None
        if valkey is None or released is not None:
            # what checking the options imported would stay behind: a lean supervisor takes
            # over this process (ratewatch/processes/handover.py)
            server = None if released is None else HeldServer(*released)
            try:
                hand_over(children, server)
            except OSError as exc:
                if server is not None:
                    server.stop()
                raise click.ClickException(f"cannot start the supervisor: {exc}") from None
        Supervisor(children).run()  # the Valkey's pid is not known: supervised from here
    finally:
        if valkey is not None:
            valkey.stop()
