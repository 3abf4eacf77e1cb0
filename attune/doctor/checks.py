"""`attune doctor`'s decisions, pure: a host snapshot and probe results in, checks out.

Nothing here reads the host or talks to a service (attune.doctor.probes does that), so
every OK / WARN / FAIL rule has a unit test that needs no host to break.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from attune.runner import host
from attune.runner.pool import pool_uids

if TYPE_CHECKING:
    from attune.config import Config

Status = Literal["OK", "WARN", "FAIL"]

MIB: Final = 1024 * 1024
DISK_FAIL_BYTES: Final = 100 * MIB
DISK_WARN_BYTES: Final = 1024 * MIB
SERVICE_TIMEOUT: Final = 5.0

# What to do when a host layer is missing, by HostFacts layer name.
_LAYER_FIXES: Final = {
    "bubblewrap": "apt-get install bubblewrap (or run scripts/setup)",
    "user_namespaces": "sysctl -w user.max_user_namespaces=15000 kernel.unprivileged_userns_clone=1"
    " (and persist it in /etc/sysctl.d/)",
    "seccomp": "apt-get install libseccomp2; check that the .venv has pyseccomp",
    "interpreter": "apt-get install python3 (the sandbox runs Debian's /usr/bin/python3)",
}


@dataclass(frozen=True)
class Check:
    """One line of the report; `unsafe` FAILs stop `run-worker`."""

    name: str
    status: Status
    detail: str
    fix: str = ""
    unsafe: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Disk:
    """Free space where a configured directory is (or will be created)."""

    role: str  # "run_dir" or "artifacts_dir"
    path: str  # as configured
    probed: str  # the nearest existing ancestor that was measured
    free_bytes: int | None
    writable: bool
    error: str | None = None


@dataclass(frozen=True)
class CgroupView:
    """What the cgroup filesystem looks like, beyond what HostFacts decided."""

    mode: str  # "v2", "v1", "hybrid" or "none"
    controllers: tuple[str, ...] = ()  # available to the worker's own cgroup (v2) / enabled (v1)
    child_controllers: tuple[str, ...] | None = None  # enabled for per-run cgroups (v2)


@dataclass(frozen=True)
class HostSnapshot:
    facts: host.HostFacts
    cgroup: CgroupView
    disks: list[Disk]
    accounts: dict[int, str]  # slot uid -> name, where an account has it
    subuid_ranges: list[tuple[str, int, int]]  # (owner, first, count) from /etc/subuid
    untraversable: list[str]  # run_dir ancestors slot uids cannot enter
    profiles: list[str] | None  # loaded runtime profiles, None on error
    profiles_error: str | None = None
    python_version: str | None = None
    umask: int | None = None  # the worker process's, from /proc
    nftables_problem: str | None = None  # probed only when egress is enabled


@dataclass(frozen=True)
class ServiceProbe:
    reachable: bool
    detail: str
    migrated: bool | None = None


@dataclass(frozen=True)
class Services:
    database: ServiceProbe
    broker: ServiceProbe


@dataclass(frozen=True)
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.status == "FAIL" for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.to_json() for c in self.checks]}


# --- pure: snapshot -> checks -----------------------------------------------------------


def build_checks(
    snapshot: HostSnapshot,
    config: Config,
    services: Services | None = None,
    smoke: ServiceProbe | None = None,
) -> list[Check]:
    """Every check in report order; probes not run (at start-up) are left out."""
    checks = [
        *_layer_checks(snapshot),
        _cgroup_check(snapshot),
        _privilege_check(snapshot),
        _slot_uid_check(snapshot, config),
        _run_dir_access_check(snapshot, config),
        _umask_check(snapshot),
        _profiles_check(snapshot, config),
        _egress_check(snapshot, config),
    ]
    if smoke is not None:
        checks.append(_sandbox_run_check(smoke))
    checks += [_disk_check(disk) for disk in snapshot.disks]
    if services is not None:
        checks += [_database_check(services.database), _broker_check(services.broker)]
    return checks


def blocking(checks: Iterable[Check]) -> list[Check]:
    """The FAILs that make the sandbox unsafe: `run-worker` refuses to start on these."""
    return [c for c in checks if c.status == "FAIL" and c.unsafe]


def refusal(checks: Iterable[Check]) -> str | None:
    """The reason `run-worker` gives when it refuses to start, or None."""
    unsafe = blocking(checks)
    if not unsafe:
        return None
    return "; ".join(f"{c.name}: {c.detail} (fix: {c.fix})" for c in unsafe)


def _layer_checks(snapshot: HostSnapshot) -> list[Check]:
    checks = []
    for layer in snapshot.facts.layers:
        if layer.name in ("cgroups", "per_slot_uids", "egress"):
            continue  # reported in more detail below
        detail = layer.detail
        if layer.name == "interpreter" and layer.active and snapshot.python_version:
            detail = f"{host.SANDBOX_PYTHON} ({snapshot.python_version})"
        if layer.active:
            checks.append(Check(layer.name, "OK", detail))
        else:
            checks.append(
                Check(
                    layer.name,
                    "FAIL" if layer.required else "WARN",
                    detail,
                    _LAYER_FIXES.get(layer.name, "see attune exec --explain"),
                    unsafe=layer.required,
                )
            )
    return checks


def _egress_check(snapshot: HostSnapshot, config: Config) -> Check:
    """Egress is optional; when the operator enables it, its tools must work."""
    layer = next((x for x in snapshot.facts.layers if x.name == "egress"), None)
    if not config.network.egress:
        return Check("egress", "OK", "off: actions declaring `network: egress` fail unrun")
    if layer is None or not layer.active:
        detail = layer.detail if layer else "not detected"
        return Check("egress", "FAIL", detail, "run scripts/setup (as root)")
    if snapshot.nftables_problem:
        return Check(
            "egress",
            "FAIL",
            snapshot.nftables_problem,
            "a kernel with nf_tables and nft_reject (modprobe nf_tables nft_reject_inet)",
        )
    policy = config.network
    reach = f"{len(policy.allow)} allowlist entries" if policy.allow else "the public internet"
    return Check("egress", "OK", f"on: {reach}, dns {policy.dns}; nftables work in a namespace")


# What a run is limited by under each cgroup setup (docs/security.md has the table).
ENFORCED = {
    2: "memory.max, memory.swap.max=0, pids.max, cpu.max; OOM kills from memory.events; "
    "teardown by cgroup.kill",
    1: "memory.limit_in_bytes (+memsw), pids.max, cpu.cfs_quota_us; OOM kills from "
    "memory.oom_control",
    0: "rlimits only: address space and CPU seconds per process, processes per uid",
}
_RLIMITS_ONLY = (
    "without per-run cgroups, memory is bounded per process (address space), not per run, "
    "and OOM kills are not reported as such"
)


def _cgroup_check(snapshot: HostSnapshot) -> Check:
    support, view = snapshot.facts.cgroups, snapshot.cgroup
    have = ",".join(view.controllers) or "none"
    if not snapshot.facts.is_root:
        return Check(
            "cgroups",
            "WARN",
            f"{view.mode}, controllers {have}; not root, so no per-run cgroups ({ENFORCED[0]})",
            f"run the worker as root with Delegate=yes; {_RLIMITS_ONLY}",
        )
    if support.version == 0:
        if view.mode == "v2":
            fix = (
                "start the worker in a cgroup delegated to it with memory and pids available "
                "(systemd: Delegate=yes, as deploy/attune-worker.service sets); the worker "
                "moves itself into a leaf and enables the controllers itself"
            )
        else:
            fix = "mount the v1 memory and pids hierarchies writable for root"
        return Check(
            "cgroups",
            "WARN",
            f"{view.mode}, controllers {have}: {support.detail}; per run: {ENFORCED[0]}",
            f"{fix}; {_RLIMITS_ONLY}",
        )
    limited = "+".join(sorted(support.controllers)) or "memory+pids"
    where = "delegated" if support.version == 2 else "writable"
    missing_cpu = "" if "cpu" in support.controllers else "; no cpu controller, so no CPU quota"
    return Check(
        "cgroups",
        "OK",
        f"v{support.version} ({view.mode}), per-run {limited} cgroups under "
        f"{support.memory_parent} ({where}); per run: {ENFORCED[support.version]}{missing_cpu}",
    )


def _privilege_check(snapshot: HostSnapshot) -> Check:
    """Root is not required: say exactly what a worker without it keeps and loses."""
    if snapshot.facts.is_root:
        return Check("privileges", "OK", "root: every isolation layer is available")
    return Check(
        "privileges",
        "WARN",
        f"running as uid {os.getuid()} (unprivileged user namespaces): kept are bubblewrap's "
        "namespaces (mount, pid, network, ipc, uts, user, cgroup), the read-only minimal "
        "filesystem, seccomp, NoNewPrivs, no capabilities, no network, rlimits, timeouts, "
        "bounded output; lost are per-slot uids (every sandbox and the worker share one uid, "
        "its process-count limit and file ownership), per-run cgroups (memory, pids and CPU "
        "per run, OOM reporting, cgroup.kill teardown), and killing a crashed worker's "
        "leftover sandboxes at start-up",
        "run the worker as root (deploy/attune-worker.service) to get these back",
    )


def slot_uid_range(config: Config) -> range:
    """The worker's slot uids, the uid `attune exec` runs as, and the warm pool's uids
    (counted for up to 8 runtime profiles, more than any worker ships)."""
    base = config.sandbox.slot_uid_base
    capacity = config.worker.max_concurrent_tasks
    pool = pool_uids(base, capacity, config.sandbox.warm_pool, 8)
    return range(base, max(pool.stop, base + capacity + 1))


def _slot_uid_check(snapshot: HostSnapshot, config: Config) -> Check:
    if not snapshot.facts.is_root:
        return Check(
            "per_slot_uids",
            "WARN",
            f"not root: every sandbox runs as the worker's uid {os.getuid()}, so "
            "they share one process-count limit and one owner for their files",
            "run the worker as root (see deploy/attune-worker.service) so each slot "
            "gets its own unprivileged uid",
        )
    uids = slot_uid_range(config)
    shown = f"{uids.start}-{uids.stop - 1}"
    clash = [f"{uid} ({snapshot.accounts[uid]})" for uid in uids if uid in snapshot.accounts]
    if clash:
        return Check(
            "per_slot_uids",
            "FAIL",
            f"slot uids {shown} include existing accounts: {', '.join(clash[:5])}; "
            "that account could trace or read the sandboxed actions",
            "set sandbox.slot_uid_base to a range no account or subuid map uses (e.g. 1000000000)",
            unsafe=True,
        )
    overlaps = [
        owner
        for owner, first, count in snapshot.subuid_ranges
        if first < uids.stop and uids.start < first + count
    ]
    if overlaps:
        return Check(
            "per_slot_uids",
            "WARN",
            f"slot uids {shown} overlap the subordinate uids of "
            f"{', '.join(sorted(set(overlaps)))} (/etc/subuid): a rootless "
            "container of that user can own the sandboxes' files",
            "set sandbox.slot_uid_base outside every /etc/subuid range",
        )
    return Check(
        "per_slot_uids",
        "OK",
        f"slots run as uids {shown} (capacity {len(uids) - 1}, the last uid is attune "
        "exec's); no account uses them",
    )


def _run_dir_access_check(snapshot: HostSnapshot, config: Config) -> Check:
    run_dir = config.sandbox.run_dir
    if snapshot.facts.is_root and snapshot.untraversable:
        return Check(
            "run_dir_access",
            "FAIL",
            f"slot uids cannot traverse {', '.join(snapshot.untraversable)} on the way "
            f"to {run_dir}, so no sandbox can start",
            "chmod o+x those directories, or set sandbox.run_dir elsewhere "
            "(e.g. /var/lib/attune/runs)",
        )
    return Check("run_dir_access", "OK", f"{run_dir} reachable by the sandbox uids")


def _umask_check(snapshot: HostSnapshot) -> Check:
    if snapshot.umask is None:
        return Check(
            "umask",
            "WARN",
            "cannot read this process's umask",
            "make sure the worker runs with umask 022",
        )
    shown = f"{snapshot.umask:04o}"
    if snapshot.facts.is_root and snapshot.umask & 0o011:
        return Check(
            "umask",
            "FAIL",
            f"umask {shown} strips the execute bit from the run directories the "
            "worker creates, so the slot uids cannot enter them and every run fails",
            "run the worker with umask 022 (systemd: UMask=0022)",
        )
    return Check("umask", "OK", f"umask {shown}")


def _profiles_check(snapshot: HostSnapshot, config: Config) -> Check:
    where = config.sandbox.profiles_dir or "the bundled profiles/"
    if snapshot.profiles is None:
        return Check(
            "profiles",
            "FAIL",
            f"cannot load runtime profiles from {where}: {snapshot.profiles_error}",
            "fix the profile named above, or unset sandbox.profiles_dir to use the bundled ones",
        )
    if not snapshot.profiles:
        return Check(
            "profiles",
            "FAIL",
            f"no runtime profiles in {where}",
            "point sandbox.profiles_dir at a directory of *.toml profiles",
        )
    return Check("profiles", "OK", f"runtimes {', '.join(snapshot.profiles)} from {where}")


def sandbox_fix(error: str) -> str:
    """What usually causes a sandbox that the layer checks passed to fail anyway."""
    if "mount proc" in error:
        return (
            "/proc is partly covered (systemd ProtectKernelTunables=, ProtectKernelLogs=, "
            "or a container runtime's masked /proc paths), so bwrap may not mount a new "
            "one: lift those (see deploy/attune-worker.service)"
        )
    if "uid map" in error or "namespace" in error or "Operation not permitted" in error:
        return (
            "user namespaces are restricted beyond user.max_user_namespaces (AppArmor: "
            "sysctl kernel.apparmor_restrict_unprivileged_userns=0, or a profile that "
            "allows userns for /usr/bin/bwrap; systemd: RestrictNamespaces=, PrivateUsers=)"
        )
    return "run `attune exec --explain` and an action with `attune exec` to see the failure"


def _sandbox_run_check(smoke: ServiceProbe) -> Check:
    if smoke.reachable:
        return Check("sandbox_run", "OK", smoke.detail)
    return Check(
        "sandbox_run", "FAIL", f"a trivial action failed: {smoke.detail}", sandbox_fix(smoke.detail)
    )


def _disk_check(disk: Disk) -> Check:
    name = f"disk_{disk.role}"
    if disk.error is not None or disk.free_bytes is None:
        return Check(
            name,
            "FAIL",
            f"{disk.path}: {disk.error or 'cannot measure'}",
            f"create {disk.path} or set {_config_key(disk.role)} to a usable path",
        )
    if not disk.writable:
        return Check(
            name,
            "FAIL",
            f"{disk.probed} is not writable by the worker",
            f"fix the permissions of {disk.probed} or set {_config_key(disk.role)}",
        )
    free = _size(disk.free_bytes)
    where = disk.path if disk.probed == disk.path else f"{disk.path} (on {disk.probed})"
    if disk.free_bytes < DISK_FAIL_BYTES:
        return Check(
            name,
            "FAIL",
            f"{free} free at {where}",
            f"free space or move {_config_key(disk.role)}; lower "
            "artifacts.retention_days / max_count",
        )
    if disk.free_bytes < DISK_WARN_BYTES:
        return Check(
            name,
            "WARN",
            f"only {free} free at {where}",
            "free space; each run may write up to the profile's work_dir_mb",
        )
    return Check(name, "OK", f"{free} free at {where}")


def _config_key(role: str) -> str:
    return "sandbox.run_dir" if role == "run_dir" else role


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _database_check(probe: ServiceProbe) -> Check:
    if not probe.reachable:
        return Check(
            "database",
            "FAIL",
            probe.detail,
            "start PostgreSQL, or set database.url (ATTUNE__DATABASE__URL)",
        )
    if not probe.migrated:
        return Check(
            "database", "FAIL", f"{probe.detail}: schema not migrated", "attune db migrate"
        )
    return Check("database", "OK", f"{probe.detail}, schema migrated")


def _broker_check(probe: ServiceProbe) -> Check:
    if not probe.reachable:
        return Check(
            "broker",
            "FAIL",
            probe.detail,
            "start RabbitMQ, or set message_queue.url (ATTUNE__MESSAGE_QUEUE__URL)",
        )
    return Check("broker", "OK", probe.detail)


def render_text(checks: Sequence[Check]) -> str:
    """The report for people: one line per check, the fix under anything not OK."""
    lines = []
    for c in checks:
        lines.append(f"{c.status:<5} {c.name:<20} {c.detail}")
        if c.status != "OK" and c.fix:
            lines.append(f"{'':<5} {'':<20} fix: {c.fix}")
    counts = {s: sum(1 for c in checks if c.status == s) for s in ("OK", "WARN", "FAIL")}
    lines.append(f"{counts['OK']} OK, {counts['WARN']} WARN, {counts['FAIL']} FAIL")
    return "\n".join(lines) + "\n"
