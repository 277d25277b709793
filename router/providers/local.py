"""A worker that is a process on this host: for demos, tests and single-box setups.

The process gets its own process group (so a stop takes its children too) and dies with
the gateway that started it (PR_SET_PDEATHSIG). Its handle (host, process id, the kernel's
start time of that pid, port) lives in shared state, so any gateway on this host can tell
whether it runs and stop it, whichever gateway started it and from whichever folder.
A pid file under `data_dir/pids` is the crash net: if a gateway is killed hard, the next
one to start in that folder kills the leftover even if the shared state was lost.

The worker gets a clean environment: only what a program needs to run (PATH, locale, a
virtualenv, the GPU selection), the instance's own `env`, and its identity. Never the
gateway's secrets (admin token, Redis URL with its password, cloud keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

from ..config import InstanceConfig
from .base import Handle, MachineState, MachineStatus, Misconfigured, ProviderError

_PR_SET_PDEATHSIG = 1
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
# What a worker may inherit from the gateway's environment; everything else stays out.
PASS_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
            "VIRTUAL_ENV", "PYTHONPATH", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
PASS_ENV_PREFIXES = ("LC_",)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def host_id() -> str:
    """This host and this boot of it: a pid means nothing on another host or after a reboot."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = "?"
    return f"{socket.gethostname()}/{boot}"


HOST = host_id()


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid`, so a recycled pid is never mistaken for our worker."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 and fields[0] != "Z" else None


def _alive(pid: int) -> bool:
    return pid > 0 and _start_time(pid) is not None


def _group_alive(rec: dict) -> bool:
    """Is anything left of the worker's process group (the leader, or children it left)?

    While a group has members the kernel does not hand its id out as a new pid, so when
    no live process has pid == pgid, members found in that group are ours.
    """
    pgid = int(rec.get("pid") or 0)
    if pgid <= 0:
        return False
    leader = _start_time(pgid)
    if leader is not None:
        return leader == rec.get("start_time")  # a different process now owns that pid: not ours
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def free_port() -> int:
    """A port nothing listens on now (the worker binds it a moment later, as llama-swap does)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(inst: InstanceConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items() if k in PASS_ENV or k.startswith(PASS_ENV_PREFIXES)}
    return {**env, **inst.env, "TIERGATE_INSTANCE_ID": inst.id}


class LocalProvider:
    kind = "local"
    billed = True
    poll_interval = 0.25
    check_every = 5.0  # /proc is free to read

    def __init__(self, data_dir: Path) -> None:
        self.pid_dir = data_dir / "pids"
        self.log_dir = data_dir / "logs"
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._children: dict[str, asyncio.subprocess.Process] = {}

    def command(self, inst: InstanceConfig, port: int) -> list[str]:
        """`tiergate ...` runs with this interpreter, so an unactivated venv still works."""
        cmd = [inst.render(part, port=str(port)) for part in inst.command]
        if cmd[:2] == ["tiergate", "worker"]:  # the stand-in worker itself: starts faster, catches SIGTERM at once
            cmd = [sys.executable, "-m", "worker", *cmd[2:]]
        elif cmd and cmd[0] == "tiergate":
            cmd = [sys.executable, "-m", "router.cli", *cmd[1:]]
        return cmd

    def reachable(self, handle: Handle) -> bool:
        return not handle or handle.get("host") == HOST

    def dies_with_gateway(self, handle: Handle) -> bool:
        return bool(handle) and handle.get("host") == HOST and handle.get("gateway_pid") == os.getpid()

    # --- the provider interface ---------------------------------------------------------

    async def start(self, inst: InstanceConfig) -> Handle:
        old = self._pid_record(inst)
        if old:
            self._kill(old, signal.SIGKILL)  # a leftover nobody stopped: never two workers for one instance
        port = inst.port or free_port()
        log = open(self.log_dir / f"{inst.id}.log", "ab")  # noqa: SIM115, ASYNC230 - a local append-open; handed to the child
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command(inst, port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                env=worker_env(inst),
            )
        except OSError as exc:
            raise Misconfigured(f"{inst.id}: cannot run {inst.command[0]!r}: {exc.strerror or exc}") from exc
        finally:
            log.close()
        self._children[inst.id] = proc
        handle = {"host": HOST, "pid": proc.pid, "start_time": _start_time(proc.pid), "port": port,
                  "gateway_pid": os.getpid(), "started_at": time.time()}
        tmp = self._pid_file(inst).with_suffix(".tmp")
        tmp.write_text(json.dumps(handle))
        tmp.replace(self._pid_file(inst))
        return handle

    async def stop(self, inst: InstanceConfig, handle: Handle, *, standby: bool = False) -> None:
        if handle and not self.reachable(handle):
            raise ProviderError(f"{inst.id} runs on {handle.get('host')}; a gateway there must stop it")
        for rec in (handle, self._pid_record(inst)):
            if rec and _group_alive(rec):
                self._kill(rec, signal.SIGTERM)
                deadline = time.monotonic() + STOP_GRACE
                while _group_alive(rec) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                self._kill(rec, signal.SIGKILL)
        proc = self._children.pop(inst.id, None)
        if proc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 5)
        self._pid_file(inst).unlink(missing_ok=True)

    async def status(self, inst: InstanceConfig, handle: Handle) -> MachineStatus:
        if handle and not self.reachable(handle):
            return MachineStatus(MachineState.UNKNOWN, detail=f"runs on {handle.get('host')}")
        if handle and _group_alive(handle):
            return MachineStatus(MachineState.RUNNING)
        proc = self._children.get(inst.id)
        if proc is not None and proc.returncode is None:
            # reaped by the child watcher's thread, its exit code not yet handed to the loop (a
            # loaded machine widens the gap): wait for it, so the reason says how the worker ended
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 1)
        if proc is not None and proc.returncode is not None:
            return MachineStatus(MachineState.STOPPED, detail=self._exit_detail(inst, proc.returncode))
        return MachineStatus(MachineState.STOPPED)

    async def url(self, inst: InstanceConfig, handle: Handle) -> str:
        return inst.render(inst.url, port=str(handle.get("port") or inst.port or ""))

    async def aclose(self) -> None:
        self.on_gateway_stop()

    # --- crash safety -------------------------------------------------------------------

    async def on_gateway_start(self) -> list[str]:
        """Kill workers whose gateway died without stopping them; returns their instance ids."""
        killed = []
        for path in self.pid_dir.glob("*.json"):
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                path.unlink(missing_ok=True)
                continue
            if _alive(int(rec.get("gateway_pid") or 0)):
                continue  # another live gateway's worker
            if _group_alive(rec):
                self._kill(rec, signal.SIGKILL)
                killed.append(path.stem)
                deadline = time.monotonic() + 5
                while _group_alive(rec) and time.monotonic() < deadline:  # gone before reconcile looks
                    await asyncio.sleep(0.05)
            path.unlink(missing_ok=True)
        return killed

    def on_gateway_stop(self) -> None:
        for inst_id, proc in list(self._children.items()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            (self.pid_dir / f"{inst_id}.json").unlink(missing_ok=True)
        self._children.clear()

    # --- helpers --------------------------------------------------------------------------

    def _pid_file(self, inst: InstanceConfig) -> Path:
        return self.pid_dir / f"{inst.id}.json"

    def _pid_record(self, inst: InstanceConfig) -> dict | None:
        """The live worker recorded for `inst` in this folder, or None (a stale file is removed)."""
        path = self._pid_file(inst)
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not _group_alive(rec):
            path.unlink(missing_ok=True)
            return None
        return rec

    def _kill(self, rec: dict, sig: int) -> None:
        """Signal the worker's whole process group, never a recycled pid's."""
        if not _group_alive(rec):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(rec["pid"]), sig)

    def _exit_detail(self, inst: InstanceConfig, code: int) -> str:
        try:
            tail = (self.log_dir / f"{inst.id}.log").read_text(errors="replace").strip().splitlines()[-3:]
        except OSError:
            tail = []
        return f"worker process exited with code {code}" + (f": {' | '.join(tail)}" if tail else "")
