"""A worker that is a process on this machine: for demos, tests and single-box setups.

The process gets its own process group (so a stop takes its children too) and dies with
the gateway (PR_SET_PDEATHSIG). A pid file under `data_dir/pids` records which gateway
started it, so if a gateway is killed hard the next one to start finds and kills the
leftover instead of leaving it running, and a second gateway sharing the state can stop
a worker the first one started.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from pathlib import Path

from ..config import InstanceConfig
from .base import MachineState, MachineStatus, Misconfigured

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


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
    pgid = rec.get("pid", 0)
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


class LocalProvider:
    kind = "local"

    def __init__(self, data_dir: Path) -> None:
        self.pid_dir = data_dir / "pids"
        self.log_dir = data_dir / "logs"
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._children: dict[str, asyncio.subprocess.Process] = {}

    # --- pid files -------------------------------------------------------------------

    def _pid_file(self, inst: InstanceConfig) -> Path:
        return self.pid_dir / f"{inst.id}.json"

    def _record(self, inst: InstanceConfig) -> dict | None:
        """The live worker recorded for `inst`, or None (a stale file is removed)."""
        path = self._pid_file(inst)
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not _group_alive(rec):
            path.unlink(missing_ok=True)
            return None
        return rec

    def command(self, inst: InstanceConfig) -> list[str]:
        """`tiergate ...` runs with this interpreter, so an unactivated venv still works."""
        cmd = [inst.render(part) for part in inst.command]
        if cmd and cmd[0] == "tiergate":
            cmd = [sys.executable, "-m", "router.cli", *cmd[1:]]
        return cmd

    # --- the provider interface ---------------------------------------------------------

    async def start(self, inst: InstanceConfig) -> None:
        rec = self._record(inst)
        if rec and _alive(rec["gateway_pid"]):
            return  # already running for a live gateway: starting is idempotent
        if rec:
            self._kill(rec, signal.SIGKILL)  # a dead gateway's leftover
        log = open(self.log_dir / f"{inst.id}.log", "ab")  # noqa: SIM115, ASYNC230 - a local append-open; handed to the child
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command(inst),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                env={**os.environ, **inst.env, "TIERGATE_INSTANCE_ID": inst.id},
            )
        except OSError as exc:
            raise Misconfigured(f"{inst.id}: cannot run {inst.command[0]!r}: {exc.strerror or exc}") from exc
        finally:
            log.close()
        self._children[inst.id] = proc
        rec = {
            "pid": proc.pid,
            "start_time": _start_time(proc.pid),
            "gateway_pid": os.getpid(),
            "port": inst.port,
            "command": self.command(inst),
            "started_at": time.time(),
        }
        tmp = self._pid_file(inst).with_suffix(".tmp")
        tmp.write_text(json.dumps(rec))
        tmp.replace(self._pid_file(inst))

    async def stop(self, inst: InstanceConfig, grace: float = 10.0) -> None:
        rec = self._record(inst)
        if rec:
            self._kill(rec, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while _group_alive(rec) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if _group_alive(rec):
                self._kill(rec, signal.SIGKILL)
        proc = self._children.pop(inst.id, None)
        if proc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 5)
        self._pid_file(inst).unlink(missing_ok=True)

    async def status(self, inst: InstanceConfig) -> MachineStatus:
        if self._record(inst):
            return MachineStatus(MachineState.RUNNING)
        proc = self._children.get(inst.id)
        if proc is not None and proc.returncode is not None:
            return MachineStatus(MachineState.STOPPED, detail=self._exit_detail(inst, proc.returncode))
        return MachineStatus(MachineState.STOPPED)

    async def url(self, inst: InstanceConfig) -> str:
        return inst.render(inst.url)

    async def aclose(self) -> None:
        self.kill_own()

    # --- crash safety -------------------------------------------------------------------

    def kill_leftovers(self) -> list[str]:
        """Kill workers whose gateway died without stopping them; returns their instance ids."""
        killed = []
        for path in self.pid_dir.glob("*.json"):
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                path.unlink(missing_ok=True)
                continue
            if _alive(rec.get("gateway_pid", 0)):
                continue
            if _group_alive(rec):
                self._kill(rec, signal.SIGKILL)
                killed.append(path.stem)
            path.unlink(missing_ok=True)
        return killed

    def kill_own(self) -> None:
        """At exit, synchronously: the workers this process started must not outlive it."""
        for inst_id, proc in list(self._children.items()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            (self.pid_dir / f"{inst_id}.json").unlink(missing_ok=True)
        self._children.clear()

    def _kill(self, rec: dict, sig: int) -> None:
        """Signal the worker's whole process group, never a recycled pid's."""
        if not _group_alive(rec):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(rec["pid"], sig)

    def _exit_detail(self, inst: InstanceConfig, code: int) -> str:
        try:
            tail = (self.log_dir / f"{inst.id}.log").read_text(errors="replace").strip().splitlines()[-3:]
        except OSError:
            tail = []
        return f"worker process exited with code {code}" + (f": {' | '.join(tail)}" if tail else "")
