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
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from attune.runner import host

if TYPE_CHECKING:
    from attune.config import Config

Status = Literal["OK", "WARN", "FAIL"]

MIB: Final = 1024 * 1024
DISK_FAIL_BYTES: Final = 100 * MIB
DISK_WARN_BYTES: Final = 1024 * MIB
CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
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


def _cgroup_check(snapshot: HostSnapshot) -> Check:
    support, view = snapshot.facts.cgroups, snapshot.cgroup
    have = ",".join(view.controllers) or "none"
    fix_rlimits = (
        "without per-run cgroups, memory is bounded per process (address space), not per run"
    )
    if not snapshot.facts.is_root:
        return Check(
            "cgroups",
            "WARN",
            f"{view.mode}, controllers {have}; not root, so no per-run cgroups",
            f"run the worker as root with Delegate=yes; {fix_rlimits}",
        )
    if support.version == 0:
        return Check(
            "cgroups",
            "WARN",
            f"{view.mode}, controllers {have}: {support.detail}",
            "give the worker a writable subtree with memory and pids (systemd: "
            f"Delegate=yes, see deploy/attune-worker.service); {fix_rlimits}",
        )
    if support.version == 2:
        enabled = set(view.child_controllers or ())
        missing = sorted({"memory", "pids"} - enabled)
        if missing:
            return Check(
                "cgroups",
                "WARN",
                f"v2 subtree {support.memory_parent} is writable (delegated) but "
                f"{','.join(missing)} is not enabled for its children, so per-run limits "
                "cannot be set",
                "the worker's own cgroup must not hold processes when it enables "
                "controllers for children (cgroup v2 'no internal processes' rule): start "
                "it in a leaf of the delegated subtree, or enable +memory +pids in "
                f"{support.memory_parent}/cgroup.subtree_control",
            )
        return Check(
            "cgroups",
            "OK",
            f"v2, controllers {have}; per-run memory+pids cgroups "
            f"under {support.memory_parent} (delegated)",
        )
    return Check(
        "cgroups",
        "OK",
        f"{view.mode}, controllers {have}; per-run memory+pids "
        f"cgroups under {support.memory_parent} (writable)",
    )


def slot_uid_range(config: Config) -> range:
    base = config.sandbox.slot_uid_base
    return range(base, base + config.worker.max_concurrent_tasks)


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
        f"slots run as uids {shown} (capacity {len(uids)}); no account uses them",
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


# --- I/O: gathering ----------------------------------------------------------------------


def _cgroup_view(facts: host.HostFacts) -> CgroupView:
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        own = "/"
        try:
            for line in Path("/proc/self/cgroup").read_text().splitlines():
                if line.startswith("0::"):
                    own = line[3:] or "/"
        except OSError:
            pass
        base = CGROUP_ROOT / own.lstrip("/")
        controllers = _words(base / "cgroup.controllers")
        child = None
        if facts.cgroups.version == 2 and facts.cgroups.memory_parent is not None:
            child = _words(facts.cgroups.memory_parent / "cgroup.subtree_control")
        return CgroupView("v2", controllers, child)
    try:
        rows = Path("/proc/cgroups").read_text().splitlines()[1:]
    except OSError:
        return CgroupView("none")
    enabled = tuple(
        sorted(r.split()[0] for r in rows if len(r.split()) >= 4 and r.split()[3] == "1")
    )
    mode = "hybrid" if (CGROUP_ROOT / "unified").is_dir() else "v1"
    return CgroupView(mode if enabled else "none", enabled)


def _words(path: Path) -> tuple[str, ...]:
    try:
        return tuple(path.read_text().split())
    except OSError:
        return ()


def _disk(role: str, configured: str) -> Disk:
    path = Path(configured)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError as exc:
        return Disk(role, configured, str(probe), None, False, exc.strerror or str(exc))
    return Disk(
        role, configured, str(probe), st.f_bavail * st.f_frsize, os.access(probe, os.W_OK | os.X_OK)
    )


def _accounts(uids: range) -> dict[int, str]:
    """Accounts that own any of `uids`, asked one uid at a time (no directory dump)."""
    found = {}
    for uid in uids:
        try:
            found[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            continue
    return found


def _subuid_ranges(path: Path = Path("/etc/subuid")) -> list[tuple[str, int, int]]:
    ranges = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            ranges.append((parts[0], int(parts[1]), int(parts[2])))
    return ranges


def _umask() -> int | None:
    """Read from /proc rather than os.umask(), which would change it, process-wide."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _python_version() -> str | None:
    try:
        out = subprocess.run(
            [host.SANDBOX_PYTHON, "--version"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout or out.stderr).strip() or None


def gather_host(config: Config, facts: host.HostFacts | None = None) -> HostSnapshot:
    """Everything the host checks need, read once (facts are reused when given)."""
    from attune.errors import AttuneError
    from attune.runner.profiles import load_profiles

    facts = facts if facts is not None else host.detect()
    profiles: list[str] | None
    error = None
    try:
        profiles = sorted(load_profiles(config.sandbox.effective_profiles_dir()))
    except (AttuneError, OSError) as exc:
        profiles, error = None, str(exc)
    return HostSnapshot(
        facts=facts,
        cgroup=_cgroup_view(facts),
        disks=[
            _disk("run_dir", config.sandbox.run_dir),
            _disk("artifacts_dir", config.artifacts_dir),
        ],
        accounts=_accounts(slot_uid_range(config)),
        subuid_ranges=_subuid_ranges(),
        untraversable=host.untraversable_ancestors(config.sandbox.run_dir),
        profiles=profiles,
        profiles_error=error,
        python_version=_python_version(),
        umask=_umask(),
        nftables_problem=_nftables_problem(config, facts),
    )


def _nftables_problem(config: Config, facts: host.HostFacts) -> str | None:
    layer = next((x for x in facts.layers if x.name == "egress"), None)
    if not config.network.egress or layer is None or not layer.active:
        return None
    from attune.runner.network import probe_nftables

    return probe_nftables()


def preflight(config: Config, facts: host.HostFacts) -> list[Check]:
    """The host checks `run-worker` runs before it registers (no service probes)."""
    return build_checks(gather_host(config, facts), config)


async def probe_database(url: str, timeout: float = SERVICE_TIMEOUT) -> ServiceProbe:
    from attune.db import Database
    from attune.db.database import describe_url
    from attune.errors import AttuneError

    try:
        where = f"PostgreSQL at {describe_url(url)}"
        async with Database.open_ctx(url, min_size=1, max_size=1, connect_timeout=timeout) as db:
            migrated = await db.is_migrated()
    except AttuneError as exc:
        return ServiceProbe(False, str(exc))
    return ServiceProbe(True, where, migrated)


async def probe_broker(url: str, timeout: float = SERVICE_TIMEOUT) -> ServiceProbe:
    from attune.broker import open_broker
    from attune.errors import AttuneError

    try:
        async with open_broker(url, connect_timeout=timeout):
            pass
    except AttuneError as exc:
        return ServiceProbe(False, str(exc))
    return ServiceProbe(True, f"RabbitMQ at {_amqp_where(url)}")


def _amqp_where(url: str) -> str:
    """host:port and vhost; never the URL itself, which may hold a password."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    try:
        port = parts.port or 5672
    except ValueError:
        port = 5672
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return f"{parts.hostname or 'localhost'}:{port} (vhost {vhost!r})"


async def probe_services(config: Config, timeout: float = SERVICE_TIMEOUT) -> Services:
    """Both probes at once, so two dead services cost one timeout, not two."""
    import trio

    found: dict[str, ServiceProbe] = {}

    async def database() -> None:
        found["database"] = await probe_database(config.database.url, timeout)

    async def broker() -> None:
        found["broker"] = await probe_broker(config.message_queue.url, timeout)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(database)
        nursery.start_soon(broker)
    return Services(found["database"], found["broker"])


async def probe_sandbox(
    config: Config, facts: host.HostFacts, timeout: float = 20.0
) -> ServiceProbe:
    """Run a trivial action through the worker's own sandbox code path.

    The layer checks say what the host offers; this says whether bwrap really starts
    here (a covered /proc, an AppArmor userns restriction or a hardened systemd unit
    pass those checks and still make every run fail).
    """
    from attune.errors import AttuneError
    from attune.runner.profiles import load_profiles
    from attune.runner.sandbox import RunSpec, Sandbox

    try:
        profiles = load_profiles(config.sandbox.effective_profiles_dir())
        shell = "python" not in profiles
        profile = profiles["shell" if shell else "python"]
        code = b"echo sandbox ok\n" if shell else b"print('sandbox ok')\n"
        spec = RunSpec(
            profile=profile,
            code=code,
            code_name="doctor.sh" if shell else "doctor.py",
            output_format="text",
            label="doctor",
        )
        sandbox = Sandbox(
            facts, Path(config.sandbox.run_dir), slot_uid_base=config.sandbox.slot_uid_base
        )
        outcome = await sandbox.run(spec, timeout=timeout, slot=0)
    except (AttuneError, KeyError, OSError) as exc:
        return ServiceProbe(False, str(exc) or type(exc).__name__)
    result = outcome.result
    if outcome.status == "completed" and "sandbox ok" in str(result.get("stdout", "")):
        return ServiceProbe(
            True, f"a {profile.name} action ran in the sandbox ({result.get('duration_ms')} ms)"
        )
    return ServiceProbe(False, str(result.get("error") or outcome.status))


async def run_doctor(config: Config) -> Report:
    """Every check, host, sandbox and services: what `attune doctor` prints."""
    import trio

    snapshot = await trio.to_thread.run_sync(gather_host, config)
    smoke = None
    if snapshot.facts.usable and snapshot.profiles:
        smoke = await probe_sandbox(config, snapshot.facts)
    services = await probe_services(config)
    return Report(build_checks(snapshot, config, services, smoke))
