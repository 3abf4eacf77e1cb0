"""What isolation this host can give, checked once at start-up and reported.

`attune exec --explain` and the worker's registration both show these facts, so an
operator sees which layer is missing and why instead of assuming full isolation.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from attune.runner import cgroups

SANDBOX_PYTHON = "/usr/bin/python3"


@dataclass(frozen=True)
class Layer:
    name: str
    active: bool
    detail: str
    required: bool = True


@dataclass(frozen=True)
class HostFacts:
    bwrap: str | None
    bwrap_version: str | None
    is_root: bool
    cgroups: cgroups.CgroupSupport
    layers: list[Layer] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return all(layer.active for layer in self.layers if layer.required)

    def layer_active(self, name: str) -> bool:
        return any(layer.name == name and layer.active for layer in self.layers)

    def problems(self) -> list[str]:
        return [
            f"{layer.name}: {layer.detail}"
            for layer in self.layers
            if layer.required and not layer.active
        ]

    def capabilities(self) -> dict[str, object]:
        """The `sandbox` part of the worker's registered capabilities."""
        return {layer.name: layer.active for layer in self.layers} | {
            "bwrap_version": self.bwrap_version,
            "cgroup_version": self.cgroups.version,
            "cgroup_controllers": sorted(self.cgroups.controllers),
        }


def untraversable_ancestors(path: str | Path) -> list[str]:
    """Existing ancestors of `path` that others cannot search (no o+x): a slot uid's
    bwrap cannot reach a run directory below them. Missing ones are skipped: the
    worker creates them traversable."""
    blocked = []
    for ancestor in reversed(Path(path).absolute().parents):
        try:
            mode = ancestor.stat().st_mode
        except OSError:
            break
        if not mode & 0o001:
            blocked.append(str(ancestor))
    return blocked


def _bwrap_version(path: str) -> str | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().removeprefix("bubblewrap ") or None


def _userns_detail() -> tuple[bool, str]:
    try:
        value = Path("/proc/sys/user/max_user_namespaces").read_text().strip()
    except OSError:
        return False, "cannot read /proc/sys/user/max_user_namespaces"
    if value == "0":
        return False, "user namespaces disabled (user.max_user_namespaces = 0)"
    clone = Path("/proc/sys/kernel/unprivileged_userns_clone")
    if clone.exists() and clone.read_text().strip() == "0":
        return False, "kernel.unprivileged_userns_clone = 0; set it to 1"
    return True, f"user.max_user_namespaces = {value}"


def _seccomp_detail() -> tuple[bool, str]:
    try:
        from attune.runner.seccomp import default_bpf

        size = len(default_bpf())
    except Exception as exc:  # libseccomp missing or broken: reported, not raised
        return False, f"cannot build the filter: {exc} (apt-get install libseccomp2)"
    return True, f"denylist compiled to {size} bytes of BPF"


def egress_detail() -> tuple[bool, str]:
    """Whether the egress tools and the tun device are there (cheap: no process)."""
    from attune.runner import egress

    tools = (egress.SLIRP4NETNS, egress.NFT, egress.UNSHARE)
    missing = [tool for tool in tools if not os.access(tool, os.X_OK)]
    if missing:
        return False, (
            f"missing {', '.join(missing)} (apt-get install slirp4netns nftables iproute2 "
            "util-linux, or run scripts/setup)"
        )
    if not os.path.exists("/dev/net/tun"):
        return False, "/dev/net/tun missing (modprobe tun)"
    return True, "slirp4netns + nftables rules in the sandbox's namespace, for `network: egress`"


def detect(bwrap: str | None = None, *, probe_version: bool = True) -> HostFacts:
    """The host's isolation facts.

    `probe_version=False` (the `attune exec` path) skips running `bwrap --version`, a
    process spawn on every local run; the layer then only says bwrap is executable.
    """
    fallback = "/usr/bin/bwrap" if os.path.exists("/usr/bin/bwrap") else None
    path = bwrap or shutil.which("bwrap") or fallback
    if path and not probe_version:
        version: str | None = "present" if os.access(path, os.X_OK) else None
    else:
        version = _bwrap_version(path) if path else None
    is_root = os.geteuid() == 0
    userns_ok, userns_detail = _userns_detail()
    seccomp_ok, seccomp_detail = _seccomp_detail()
    cg = cgroups.detect() if is_root else cgroups.CgroupSupport(0, None, None, "not root")
    egress_ok, egress_text = egress_detail()
    layers = [
        Layer(
            "bubblewrap",
            version is not None,
            f"bubblewrap {version} at {path}"
            if version
            else "bwrap not found (apt-get install bubblewrap, or run scripts/setup)",
        ),
        Layer("user_namespaces", userns_ok, userns_detail),
        Layer("seccomp", seccomp_ok, seccomp_detail),
        Layer(
            "interpreter",
            os.path.exists(SANDBOX_PYTHON),
            f"{SANDBOX_PYTHON} present"
            if os.path.exists(SANDBOX_PYTHON)
            else f"{SANDBOX_PYTHON} missing (apt-get install python3)",
        ),
        Layer("network_isolation", True, "own network namespace: loopback only unless egress"),
        Layer("egress", egress_ok and is_root, egress_text if is_root else "needs root", False),
        Layer("rlimits", True, "cpu, address space, files, file size, processes, core 0"),
        Layer(
            "per_slot_uids",
            is_root,
            "each concurrency slot runs as its own unprivileged host uid"
            if is_root
            else "not root: sandboxes share the worker's uid (RLIMIT_NPROC is shared)",
            required=False,
        ),
        Layer("cgroups", cg.version != 0, cg.detail, required=False),
    ]
    return HostFacts(path if version else None, version, is_root, cg, layers)
