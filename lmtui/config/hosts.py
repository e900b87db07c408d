"""Which nodes share one machine's memory: the one rule, from the config.

``core/hosts.py`` budgets those nodes together through ``PoolSettings.hosts``; the engine
(``engine/settings.py``) and ``lmtui replay --cluster`` both take the map from here.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from lmtui.config.schema import Config

#: Names of this machine in a URL or an SSH host.
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def host_keys(config: Config) -> dict[str, str]:
    """Nodes that share a machine's memory, by host (the one rule; ``core/hosts.py`` uses
    it through ``PoolSettings.hosts``): node name -> host key.

    - A node's own ``host`` names its machine.
    - Else a node reached over SSH is on its SSH host (on port 22 that is the address
      itself; another port may be another machine behind one gateway), and a node
      without SSH on its URL's address: two LM Studio servers on ports 1234 and 1235 of
      one Mac share it.
    - A loopback address is this machine only when the node's memory is read here
      (psutil or SSH, no ``memory_gb``): the simulator runs many "machines" of configured
      memory on 127.0.0.1.

    Nodes left out (a loopback node with ``memory_gb``, an address nobody shares) are
    hosts of their own.
    """
    keys: dict[str, str] = {}
    for n in config.nodes:
        if n.host is not None:
            keys[n.name] = f"host:{n.host.strip().lower()}"
            continue
        address = ((n.ssh.host if n.ssh else None) or urlsplit(n.url).hostname or "").lower()
        if not address:
            continue
        if address in _LOOPBACK:
            if n.memory_gb is not None:
                continue
            address = "localhost"
        if n.ssh is not None and n.ssh.port != 22:
            keys[n.name] = f"ssh:{address}:{n.ssh.port}"
        else:
            keys[n.name] = f"addr:{address}"
    shared: dict[str, int] = {}
    for key in keys.values():
        shared[key] = shared.get(key, 0) + 1
    return {name: key for name, key in keys.items() if shared[key] > 1}
