"""A local Ray cluster listens on loopback only: checked with `ss -ltn` on a real cluster."""
import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from explorer.executors import Ray
from explorer.sweep import plan


def descendants(root: int) -> set[int]:
    """Every process started (directly or not) by `root`: Ray's GCS, raylet, agents and workers."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                parent[int(d.name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    out, grew = {root}, True
    while grew:
        more = {p for p, pp in parent.items() if pp in out} - out
        out |= more
        grew = bool(more)
    return out


def listening(pids: set[int]) -> list[tuple[str, str]]:
    """(local address, process) of every TCP socket listening in one of `pids`."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            found.append((fields[3], re.findall(r'\("([^"]+)"', line)[0]))
    return found


def loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host in ("*", "0.0.0.0", "::"):
        return False
    ip = ipaddress.ip_address(host)
    ip = ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip
    return ip.is_loopback


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to list listening sockets")
def test_a_local_ray_cluster_listens_on_loopback_only():
    jobs = plan(["zoo-xs"], ["addition"], n=2)
    rows = Ray(workers=1).map(jobs)
    first = next(rows)  # the cluster is up and its worker has run a real job
    try:
        assert first["config_hash"] == jobs[0].config_hash
        sockets = listening(descendants(os.getpid()))
        names = {name for _, name in sockets}
        assert {"gcs_server", "raylet"} <= names, sockets  # we are looking at the cluster's servers
        exposed = [s for s in sockets if not loopback(s[0])]
        assert not exposed, f"Ray servers listening beyond loopback: {exposed}"
    finally:
        rows.close()  # shuts the cluster down
