"""A world for egress tests, built from network namespaces this test process makes.

    fake host (H)                                    fake internet (I)
    lo: 127.0.0.1, ::1, 10.99.0.1 (a private        lo: 203.0.113.10, 203.0.113.53, 2001:db8::10
        address of the host), "PostgreSQL"             (the test servers), 10.77.0.5, fd12::5
        on :5432 for every host address                 (LAN boxes), 169.254.169.254 (metadata)
    veth vh0 198.51.100.2/24, 2001:db8:5::2/64 ----- veth vi0 198.51.100.1/24, 2001:db8:5::1/64
    `attune exec` runs here                          nft counter "stray": every packet not for
                                                     a test server is counted and dropped

No packet can leave: I has no other link. The stray counter must read 0 after a run
whose rules hold; the negative control (rules replaced by an empty table) makes it move.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
ATTUNE = str(REPO / ".venv" / "bin" / "attune")
PYTHON = str(REPO / ".venv" / "bin" / "python")
SERVERS = str(Path(__file__).resolve().parent / "networld_servers.py")

WEB4, DNS4, WEB6 = "203.0.113.10", "203.0.113.53", "2001:db8::10"
LAN4, LAN6, METADATA = "10.77.0.5", "fd12::5", "169.254.169.254"
HOST4, HOST6, HOST_PRIVATE = "198.51.100.2", "2001:db8:5::2", "10.99.0.1"
GW4, GW6 = "198.51.100.1", "2001:db8:5::1"
# ATTUNE_TEST_WARM_POOL set: every egress run of these tests takes a parked sandbox.
POOLED = bool(int(os.environ.get("ATTUNE_TEST_WARM_POOL") or 0))

COUNTER = f"""
table inet world {{
  counter stray {{ }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "lo" accept
    icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit,
                  nd-router-advert, mld-listener-report, mld2-listener-report }} accept
    ip protocol igmp accept
    ip daddr {{ {WEB4}, {DNS4}, {LAN4} }} accept
    ip6 daddr {{ {WEB6}, {LAN6} }} accept
    counter name "stray" drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    counter name "stray" drop
  }}
}}
"""


def sh(*argv: str, stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


class World:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.host, self.inet = f"ah{tag}", f"ai{tag}"
        self.root = Path(f"/tmp/attune-networld-{tag}")
        self.etc = Path("/etc/netns") / self.host
        self.servers: list[subprocess.Popen[str]] = []

    # --- building and removing --------------------------------------------------------

    def build(self) -> None:
        self.destroy()
        self.root.mkdir(mode=0o711)
        os.chmod(self.root, 0o711)
        (self.root / "runs").mkdir(mode=0o711)
        self.etc.mkdir(parents=True)
        (self.etc / "resolv.conf").write_text(f"nameserver {DNS4}\n")
        (self.etc / "hosts").write_text(f"127.0.0.1 localhost\n{WEB4} api.test\n{WEB6} api6.test\n")
        h, i = self.host, self.inet
        sh("ip", "netns", "add", h)
        sh("ip", "netns", "add", i)
        sh("ip", "-n", h, "link", "add", "vh0", "type", "veth", "peer", "name", "vi0", "netns", i)
        for ns, dev, a4, a6 in ((h, "vh0", HOST4, HOST6), (i, "vi0", GW4, GW6)):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{a4}/24", "dev", dev)
            sh("ip", "-n", ns, "addr", "add", f"{a6}/64", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", h, "addr", "add", f"{HOST_PRIVATE}/32", "dev", "lo")
        sh("ip", "-n", h, "route", "add", "default", "via", GW4)
        sh("ip", "-n", h, "-6", "route", "add", "default", "via", GW6)
        for address in (WEB4, DNS4, LAN4, METADATA):
            sh("ip", "-n", i, "addr", "add", f"{address}/32", "dev", "lo")
        for address in (WEB6, LAN6):
            sh("ip", "-n", i, "addr", "add", f"{address}/128", "dev", "lo", "nodad")
        sh("ip", "netns", "exec", i, "nft", "-f", "-", stdin=COUNTER)
        for ns, role in ((h, "host"), (i, "internet")):
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, SERVERS, role, str(self.log)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            self.servers.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def destroy(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()
        self.servers.clear()
        for ns in (self.host, self.inet):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        shutil.rmtree(self.etc, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)

    # --- observing --------------------------------------------------------------------

    @property
    def log(self) -> Path:
        return self.root / "servers.log"

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def stray(self) -> int:
        out = sh(
            "ip",
            "netns",
            "exec",
            self.inet,
            "nft",
            "-j",
            "list",
            "counter",
            "inet",
            "world",
            "stray",
        )
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise AssertionError("no stray counter")

    def host_netns_processes(self, name: str) -> list[int]:
        """Pids of processes called `name` whose network namespace is the fake host's."""
        target = os.stat(f"/run/netns/{self.host}").st_ino
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
                if comm == name and os.stat(f"/proc/{entry}/ns/net").st_ino == target:
                    found.append(int(entry))
            except OSError:
                continue
        return found

    # --- running actions --------------------------------------------------------------

    def exec_argv(
        self, action: Path, *args: str, unruled: bool = False, pooled: bool = POOLED
    ) -> list[str]:
        """`attune exec` in the fake host; `pooled`: its egress run in a parked sandbox
        of a warm pool (egress_pooled.py), else cold; `unruled`: the negative control."""
        if unruled:
            runner = [PYTHON, str(Path(__file__).with_name("egress_unruled.py"))]
        elif pooled:
            runner = [PYTHON, str(Path(__file__).with_name("egress_pooled.py"))]
        else:
            runner = [ATTUNE, "exec"]
        return ["ip", "netns", "exec", self.host, *runner, str(action), "--with-status", *args]

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "ATTUNE__SANDBOX__RUN_DIR": str(self.root / "runs"),
        }

    def run(
        self, action: Path, *args: str, unruled: bool = False, pooled: bool = POOLED
    ) -> dict[str, Any]:
        done = subprocess.run(
            self.exec_argv(action, *args, unruled=unruled, pooled=pooled),
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=120,
            check=False,
        )
        try:
            out = dict(json.loads(done.stdout))
        except ValueError:
            raise AssertionError(
                f"exit {done.returncode}: {done.stdout!r} {done.stderr!r}"
            ) from None
        if pooled and not unruled and "egress" in args:
            assert out.get("pool_taken") == 1, f"the run did not take a parked sandbox: {out}"
        return out
