"""`attune doctor`: is this host, and this configuration, fit to run the worker?

Three steps, so the decisions are testable without a host to break:

    gather_host(config, facts)   I/O: host facts (runner/host.py), cgroups, disks, accounts
    probe_sandbox(config, facts) I/O: one trivial action through the real sandbox
    probe_services(config)       I/O: PostgreSQL reachable and migrated, RabbitMQ reachable
    build_checks(snapshot, config, services, smoke)   pure: OK / WARN / FAIL checks

`run-worker` runs the host half at start-up (`preflight`) and refuses to start when a
check marked `unsafe` fails: a worker that would run untrusted code without one of
the sandbox's layers, or as an account that already exists, is worse than no worker.
`sandbox.allow_unsafe: true` overrides that, loudly. Other FAILs (a full disk, an
unreachable database) are logged; the worker's own retries deal with services.

    attune.doctor.checks   the rules, pure (build_checks, refusal, render_text)
    attune.doctor.probes   the I/O (gather_host, probe_sandbox, probe_services, run_doctor)
"""

from attune.doctor.checks import (
    CgroupView,
    Check,
    Disk,
    HostSnapshot,
    Report,
    ServiceProbe,
    Services,
    blocking,
    build_checks,
    refusal,
    render_text,
    sandbox_fix,
    slot_uid_range,
)
from attune.doctor.probes import (
    gather_host,
    preflight,
    probe_broker,
    probe_database,
    probe_sandbox,
    probe_services,
    run_doctor,
)

__all__ = [
    "CgroupView",
    "Check",
    "Disk",
    "HostSnapshot",
    "Report",
    "ServiceProbe",
    "Services",
    "blocking",
    "build_checks",
    "gather_host",
    "preflight",
    "probe_broker",
    "probe_database",
    "probe_sandbox",
    "probe_services",
    "refusal",
    "render_text",
    "run_doctor",
    "sandbox_fix",
    "slot_uid_range",
]
