"""Run one DhtRouter in its own process, driven by JSON lines on stdin/stdout.

    python -m tests.support.dhtnode --listen 127.0.1.11:0 --data-dir D \
        --peers /ip4/127.0.1.10/tcp/5001 --record-ttl 10m

Each input line is a command object, each output line one reply (in order):
  {"cmd": "peer_id"}                          -> {"peer_id", "addresses"}
  {"cmd": "ready"}                            -> {"ready", "peers"}
  {"cmd": "advertise", "keys": [...]}         -> {"elapsed_ms"}
  {"cmd": "withdraw", "keys": [...]}          -> {"elapsed_ms"}
  {"cmd": "resolve", "key": k, "count": n}    -> {"peers": [[id, ip]], "elapsed_ms"}
  {"cmd": "resolve_many", "keys": [...], "count": n}
                                              -> {"results": [[[id, ip]...], ms]...}
  {"cmd": "stats"}                            -> {"rss_bytes", "cpu_s", table sizes}
  {"cmd": "quit"}                             -> {} and the process exits
Errors come back as {"error": "..."}; the first line printed is {"started": true}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

from daemon.observability import logs
from daemon.routing.bootstrap import StaticBootstrapper
from daemon.routing.dht import DhtRouter
from daemon.values import parse_address, parse_duration, split_list


class NodeProcess:
    """Test/bench side: one dhtnode subprocess and its JSON-lines channel."""

    def __init__(self, proc: asyncio.subprocess.Process, listen: str) -> None:
        self.proc = proc
        self.listen = listen
        self.peer_id = ""
        self.addresses: list[str] = []

    @classmethod
    async def spawn(
        cls, listen: str, data_dir: Path, peers: list[str], *extra: str
    ) -> NodeProcess:
        """Start a node and wait for its peer id and addresses."""
        argv = [sys.executable, "-m", "tests.support.dhtnode", "--listen", listen]
        argv += ["--data-dir", str(data_dir), "--peers", ",".join(peers), *extra]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[2],
        )
        node = cls(proc, listen)
        started = await node._read(timeout_s=30.0)
        if not started.get("started"):
            raise RuntimeError(f"dhtnode did not start: {started}")
        info = await node.ask("peer_id")
        node.peer_id, node.addresses = info["peer_id"], info["addresses"]
        return node

    async def ask(self, cmd: str, timeout_s: float = 30.0, **args: Any) -> Any:
        """Send one command and return its reply (raises on an error reply)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        await self.proc.stdin.drain()
        reply = await self._read(timeout_s)
        if "error" in reply:
            raise RuntimeError(f"dhtnode {cmd}: {reply['error']}")
        return reply

    async def _read(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        if not line:
            raise RuntimeError("dhtnode exited")
        result: dict[str, Any] = json.loads(line)
        return result

    async def stop(self) -> None:
        """Quit politely, then kill; always reaps the process."""
        if self.proc.returncode is None:
            try:
                self.proc.send_signal(signal.SIGCONT)
                await self.ask("quit", timeout_s=5.0)
                await asyncio.wait_for(self.proc.wait(), 10.0)
            except (TimeoutError, Exception):
                self.proc.kill()
        await self.proc.wait()


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def _handle(router: DhtRouter, cmd: dict[str, Any]) -> dict[str, Any]:
    name = cmd.get("cmd")
    start = time.perf_counter()
    if name == "peer_id":
        return {"peer_id": router.peer_id, "addresses": router.addresses}
    if name == "ready":
        return {"ready": await router.ready(), "peers": await router.peer_count()}
    if name == "advertise":
        await router.advertise(cmd["keys"])
    elif name == "withdraw":
        await router.withdraw(cmd["keys"])
    elif name == "resolve":
        peers = await _resolve(router, cmd["key"], int(cmd.get("count", 3)))
        return {"peers": peers, "elapsed_ms": (time.perf_counter() - start) * 1e3}
    elif name == "resolve_many":
        results = []
        for key in cmd["keys"]:
            began = time.perf_counter()
            peers = await _resolve(router, key, int(cmd.get("count", 1)))
            results.append([peers, (time.perf_counter() - began) * 1e3])
        return {"results": results}
    elif name == "stats":
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "rss_bytes": _rss_bytes(),
            "cpu_s": usage.ru_utime + usage.ru_stime,
            **(await router.stats()),
        }
    elif name == "quit":
        return {}
    else:
        return {"error": f"unknown command {name!r}"}
    return {"elapsed_ms": (time.perf_counter() - start) * 1e3}


async def _resolve(router: DhtRouter, key: str, count: int) -> list[list[str]]:
    return [[peer.peer_id, peer.host] async for peer in router.resolve(key, count)]


async def _serve(args: argparse.Namespace) -> None:
    router = DhtRouter(
        listen=parse_address(args.listen),
        data_dir=Path(args.data_dir),
        bootstrapper=StaticBootstrapper(split_list(args.peers) if args.peers else ()),
        record_ttl_s=parse_duration(args.record_ttl),
        query_timeout_s=parse_duration(args.query_timeout),
        republish_interval_s=(
            parse_duration(args.republish_interval) if args.republish_interval else None
        ),
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    async with router:
        _emit({"started": True})
        while line := await reader.readline():
            try:
                cmd = json.loads(line)
                reply = await _handle(router, cmd)
            except Exception as err:
                reply = {"error": repr(err)}
            _emit(reply)
            if cmd.get("cmd") == "quit":
                break


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    """Parse flags and serve commands until stdin closes or `quit`."""
    parser = argparse.ArgumentParser(prog="dhtnode")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--peers", default="")
    parser.add_argument("--record-ttl", default="10m")
    parser.add_argument("--query-timeout", default="1s")
    parser.add_argument("--republish-interval", default="")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    logs.configure(args.log_level)
    logging.getLogger("daemon").setLevel(args.log_level)
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()


# clusters of node processes, for tests and benchmarks


def bare_address(address: str) -> str:
    return address.split("/p2p/")[0]


async def spawn_cluster(
    tmp_path: Path,
    size: int,
    *extra: str,
    first_ip: int = 10,
    min_peers: int | None = None,
    join_timeout_s: float = 30.0,
) -> list[NodeProcess]:
    """Start `size` node processes on 127.0.1.<first_ip + i>, all seeded with
    the first; return once each has `min_peers` (default size - 1) peers."""
    first = await NodeProcess.spawn(
        f"127.0.1.{first_ip}:0", tmp_path / "n0", [], *extra
    )
    seed = [bare_address(first.addresses[0])]
    rest = await asyncio.gather(
        *(
            NodeProcess.spawn(
                f"127.0.1.{first_ip + i}:0", tmp_path / f"n{i}", seed, *extra
            )
            for i in range(1, size)
        )
    )
    nodes = [first, *rest]
    peers = size - 1 if min_peers is None else min_peers
    try:
        await wait_joined(nodes, peers, join_timeout_s)
    except BaseException:
        await stop_all(nodes)
        raise
    return nodes


async def wait_joined(
    nodes: list[NodeProcess], peers: int, join_timeout_s: float = 30.0
) -> None:
    """Wait until every node is ready with at least `peers` peers."""
    deadline = time.monotonic() + join_timeout_s
    while True:
        states = [await node.ask("ready") for node in nodes]
        if all(s["ready"] and s["peers"] >= peers for s in states):
            return
        assert time.monotonic() < deadline, f"cluster did not join: {states}"
        await asyncio.sleep(0.2)


async def stop_all(nodes: list[NodeProcess]) -> None:
    await asyncio.gather(*(node.stop() for node in nodes), return_exceptions=True)
