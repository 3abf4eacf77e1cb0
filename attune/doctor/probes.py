"""`attune doctor`'s probes: everything it reads from the host and the services.

Each probe returns data (a HostSnapshot, a ServiceProbe) for the pure rules of
attune.doctor.checks; nothing here decides OK / WARN / FAIL.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Final

from attune.doctor.checks import (
    SERVICE_TIMEOUT,
    CgroupView,
    Check,
    Disk,
    HostSnapshot,
    Report,
    ServiceProbe,
    Services,
    build_checks,
    slot_uid_range,
)
from attune.runner import host

if TYPE_CHECKING:
    from attune.config import Config

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")


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
    from attune.config import describe_amqp_url
    from attune.errors import AttuneError

    try:
        async with open_broker(url, connect_timeout=timeout):
            pass
    except AttuneError as exc:
        return ServiceProbe(False, str(exc))
    return ServiceProbe(True, f"RabbitMQ at {describe_amqp_url(url)}")


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
