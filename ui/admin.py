"""The admin tab: config editing with validation, tier start/stop, the event log, the cost dashboard.

Every handler here calls `require_admin` before doing anything, so hiding the panel is
only for looks. The login is limited like every login (`router.auth.LoginLimiter`): per
source address and per user name, counted in Redis. The handlers are reachable from scripts too (gradio_client, api names
`/admin_*`, undocumented): log in with `/admin_login` first, in the same client session.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from router.auth import LoginLimiter, Throttled
from router.config import PACKAGED_CONFIG, ConfigError, parse_config
from router.errors import TiergateError
from router.gateway import Gateway

from . import dashboard
from . import format as fmt
from .session import admin_user as _admin_user
from .session import client_address, identity, login
from .session import require_admin as _require_admin

log = logging.getLogger("tiergate.ui")

EVENT_COLUMNS = ["time (UTC)", "tier", "instance", "event", "reason", "actor"]
PROBLEM = re.compile(r"^(?P<file>.*?):(?P<line>\d+): (?P<message>.*)$", re.DOTALL)


def problems_md(problems: list[str]) -> str:
    """`line N: message` per problem, the way an editor shows them."""
    lines = []
    for p in problems:
        m = PROBLEM.match(p)
        lines.append(f"- **line {m['line']}**: {fmt.esc(m['message'])}" if m else f"- {fmt.esc(p)}")
    return f"❌ **{len(problems)} problem(s); nothing was saved.**\n\n" + "\n".join(lines)


def events_frame(events: list[dict]) -> pd.DataFrame:
    rows = [
        [datetime.fromtimestamp(int(e.get("ts", 0)) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S"), e.get("tier", ""),
         e.get("instance", ""), e.get("event", ""), e.get("reason", ""), e.get("actor", "")]
        for e in events
    ]
    return pd.DataFrame(rows, columns=EVENT_COLUMNS)


class AdminTab:
    def __init__(self, gateway: Gateway, session: gr.State, limiter: LoginLimiter) -> None:
        self.gw = gateway
        self.session = session
        self.limiter = limiter
        self._bg: set[asyncio.Task] = set()

    def build(self) -> None:
        with gr.Column(visible=True, elem_id="admin-login") as self.login_box:
            gr.Markdown("### 🔒 Login 登录\nAdmins and presenters from `[admin] users` in tiers.toml, or `admin` with "
                        "`$TIERGATE_ADMIN_TOKEN` as password. A presenter login opens every cached answer on the "
                        "Presenter tab. 管理员与演示者登录。")
            with gr.Row():
                self.user = gr.Textbox(label="User 用户名", value="admin", elem_id="admin-user")
                self.password = gr.Textbox(label="Password 密码", type="password", elem_id="admin-password")
            self.login_btn = gr.Button("Log in 登录", variant="primary", elem_id="admin-login-btn")
            self.login_msg = gr.Markdown("", elem_id="admin-login-msg")
        with gr.Column(visible=False, elem_id="admin-panel") as self.panel:
            with gr.Row():
                self.whoami = gr.Markdown("", elem_id="admin-whoami")
                self.logout_btn = gr.Button("Log out 退出", size="sm", scale=0)
            with gr.Tabs():
                with gr.Tab("Tiers 算力层", id="admin-tiers"):
                    with gr.Row():
                        self.tier = gr.Dropdown(list(self.gw.cfg.tiers), value=next(iter(self.gw.cfg.tiers)), label="Tier",
                                                elem_id="admin-tier")
                        self.start_btn = gr.Button("▶ Start", variant="primary", elem_id="admin-start")
                        self.prewarm_btn = gr.Button("🔥 Pre-warm", elem_id="admin-prewarm")
                        self.stop_btn = gr.Button("⏹ Stop", variant="stop", elem_id="admin-stop")
                    self.tier_msg = gr.Markdown("", elem_id="admin-tier-msg")
                    with gr.Row():
                        gr.Markdown("#### Lifecycle events 生命周期事件")
                        self.events_btn = gr.Button("🔄 Refresh", size="sm", scale=0)
                    self.events = gr.Dataframe(headers=EVENT_COLUMNS, interactive=False, wrap=True, max_height=420,
                                               elem_id="admin-events")
                with gr.Tab("Config 配置", id="admin-config"):
                    self.config_path = gr.Markdown("")
                    self.code = gr.Code(language=None, lines=24, max_lines=40, label="tiers.toml",
                                        interactive=True, elem_id="admin-config-code")
                    with gr.Row():
                        self.validate_btn = gr.Button("✔ Validate 校验", elem_id="admin-validate")
                        self.save_btn = gr.Button("💾 Save & reload 保存并热加载", variant="primary",
                                                  elem_id="admin-save")
                        self.reload_btn = gr.Button("↺ Discard edits (reload file)", elem_id="admin-reload")
                    self.problems = gr.Markdown("", elem_id="admin-problems")
                with gr.Tab("Costs 成本", id="admin-costs"):
                    with gr.Row():
                        self.days = gr.Radio([7, 14, 30], value=7, label="Days", scale=3)
                        self.costs_btn = gr.Button("🔄 Refresh", scale=1)
                    self.summary = gr.Dataframe(interactive=False, label="Per tier over the period",
                                                elem_id="admin-cost-summary")
                    self.policy = gr.Dataframe(interactive=False, wrap=True, elem_id="admin-policy",
                                               label="Idle policy now, and last week replayed through it "
                                                     "(the simulator on the gateway's own trace) 空闲策略")
                    with gr.Row():
                        self.hours_plot = gr.BarPlot(x="day", y="gpu_hours", color="tier", title="GPU hours per day",
                                                     y_title="GPU hours", height=260)
                        self.cost_plot = gr.BarPlot(x="day", y="cost", color="tier", title="Cost per day",
                                                    y_title="cost", height=260)
                    with gr.Row():
                        self.starts_plot = gr.BarPlot(x="day", y="cold_starts", color="tier", title="Cold starts per day",
                                                      y_title="starts", height=260)
                        self.saving_plot = gr.BarPlot(x="day", y="saving", color="tier",
                                                      title="Saved vs an always-on GPU, per day", y_title="saved",
                                                      height=260)
                    self.hits_plot = gr.BarPlot(x="day", y="cache_hits", color="tier",
                                                title="Cache hits per day (answers that cost no GPU)", height=220)
        self.events_timer = gr.Timer(5.0, active=False)

    def wire(self) -> None:
        s = self.session
        api = {"api_visibility": "undocumented"}
        private: dict[str, Any] = {"api_visibility": "private"}
        shown = self._shown = [self.session, self.login_box, self.panel, self.whoami, self.login_msg, self.password,
                               self.events_timer, self.tier]
        filled = self._filled = [self.code, self.config_path, self.events, *self.cost_outputs()]
        gr.on([self.login_btn.click, self.password.submit], self.login, [self.user, self.password], shown,
              api_name="admin_login", **api).then(self.load_all, [s], filled, api_name="admin_load_all", **private)
        self.logout_btn.click(self.logout, None, shown, api_name="admin_logout", **private)
        self.start_btn.click(self.start, [s, self.tier], [self.tier_msg], api_name="admin_start", **api)
        self.prewarm_btn.click(self.prewarm, [s, self.tier], [self.tier_msg], api_name="admin_prewarm", **api)
        self.stop_btn.click(self.stop, [s, self.tier], [self.tier_msg], api_name="admin_stop", **api)
        self.events_btn.click(self.list_events, [s], [self.events], api_name="admin_events", **api)
        self.events_timer.tick(self.poll_events, [s], [self.events], show_progress="hidden",
                               api_name="admin_poll_events", **private)
        self.validate_btn.click(self.validate, [s, self.code], [self.problems], api_name="admin_validate", **api)
        self.save_btn.click(self.save, [s, self.code], [self.problems, self.tier], api_name="admin_save", **api)
        self.reload_btn.click(self.read_config, [s], [self.code, self.config_path], api_name="admin_config", **api)
        gr.on([self.costs_btn.click, self.days.change], self.costs, [s, self.days], self.cost_outputs(),
              api_name="admin_costs", **api)

    def wire_page_load(self, demo: gr.Blocks) -> None:
        """With `require_login`, open the panel for the user Gradio's login page admitted."""
        demo.load(self.from_gradio_auth, None, self._shown, api_name="admin_from_login_page",
                  api_visibility="private").then(self.load_all, [self.session], self._filled,
                                                 api_name="admin_load_all_on_page_load", api_visibility="private")

    def _admin(self, session: Any, request: gr.Request) -> str:
        return _admin_user(self.gw.cfg, session, request)

    def _require(self, session: Any, request: gr.Request) -> str:
        return _require_admin(self.gw.cfg, session, request)

    def cost_outputs(self) -> list:
        return [self.summary, self.policy, self.hours_plot, self.cost_plot, self.starts_plot, self.saving_plot,
                self.hits_plot]

    # --- login ----------------------------------------------------------------------------

    async def login(self, user: str, password: str, request: gr.Request) -> tuple:
        try:
            session = await login(self.limiter, self.gw.cfg, user, password, client_address(request))
        except Throttled as exc:
            return self._login_message(None, f"⏳ Too many failed logins: try again in {exc.retry_after} s. "
                                             f"登录失败次数过多，请 {exc.retry_after} 秒后再试。")
        if session is None:
            return self._login_message(None, "❌ Wrong user or password. 用户名或密码错误。")
        if session["role"] != "admin":
            return self._login_message(session, f"✅ Logged in as **{fmt.esc(session['user'])}** (presenter): the "
                                                "Presenter tab now shows every cached answer. Admin tools need an "
                                                "admin login. 已以演示者身份登录。")
        return (session, gr.Column(visible=False), gr.Column(visible=True), f"Logged in as **{fmt.esc(session['user'])}**",
                "", "", gr.Timer(active=True), gr.Dropdown(choices=list(self.gw.cfg.tiers)))

    @staticmethod
    def _login_message(session: dict | None, message: str) -> tuple:
        """The panel stays closed: only the session and the message under the login box change."""
        return (session, gr.skip(), gr.skip(), gr.skip(), message, "", gr.skip(), gr.skip())

    async def from_gradio_auth(self, request: gr.Request) -> tuple:
        """With `require_login`, Gradio's login page already admitted an admin: open the panel."""
        user, role = identity(self.gw.cfg, None, request)
        if role != "admin":
            return (gr.skip(),) * 8
        return ({"user": user, "role": role, "at": time.time()}, gr.Column(visible=False), gr.Column(visible=True),
                f"Logged in as **{fmt.esc(user)}**", "", "", gr.Timer(active=True), gr.skip())

    def logout(self) -> tuple:
        return (None, gr.Column(visible=True), gr.Column(visible=False), "", "Logged out.", "",
                gr.Timer(active=False), gr.skip())

    async def load_all(self, session: Any, request: gr.Request) -> tuple:
        """After a login: fill the editor, the event log and the dashboard in one go."""
        if not self._admin(session, request):
            return (gr.skip(),) * (3 + len(self.cost_outputs()))
        code, path = await self.read_config(session, request)
        return (code, path, await self.list_events(session, request), *await self.costs(session, 7, request))

    # --- tiers ----------------------------------------------------------------------------

    def _tier(self, name: str) -> str:
        if name not in self.gw.cfg.tiers:
            raise gr.Error(f"Pick a tier first (one of: {', '.join(self.gw.cfg.tiers)}).", title="No tier")
        return name

    async def start(self, session: Any, tier: str, request: gr.Request) -> str:
        user = self._require(session, request)
        tier = self._tier(tier)
        task = asyncio.create_task(self.gw.start_tier(tier, actor=f"{user} (UI)"))
        self._bg.add(task)
        task.add_done_callback(self._done)
        await asyncio.wait({task}, timeout=1.0)  # a quick refusal shows here; a boot goes on in the background
        if task.done() and task.exception() is not None:
            return f"❌ {fmt.esc(getattr(task.exception(), 'message', task.exception()))}"
        state = await self.gw.tier_state(tier)
        return f"▶ Start of **{tier}** requested; it is **{state}** (watch the status table)."

    async def prewarm(self, session: Any, tier: str, request: gr.Request) -> str:
        user = self._require(session, request)
        tier = self._tier(tier)
        await self.gw.prewarm(tier, actor=f"{user} (UI)")
        return f"🔥 Pre-warming **{tier}**: it boots now and idles out as usual if nobody uses it."

    async def stop(self, session: Any, tier: str, request: gr.Request) -> str:
        user = self._require(session, request)
        tier = self._tier(tier)
        try:
            state = await self.gw.stop_tier(tier, actor=f"{user} (UI)")
        except TiergateError as exc:
            return f"❌ {fmt.esc(exc.message)}"
        return f"⏹ **{tier}** is **{state}**."

    def _done(self, task: asyncio.Task) -> None:
        self._bg.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("admin start failed: %s", task.exception())

    # --- events ---------------------------------------------------------------------------

    async def list_events(self, session: Any, request: gr.Request) -> pd.DataFrame:
        self._require(session, request)
        return events_frame(await self.gw.events(200))

    async def poll_events(self, session: Any, request: gr.Request) -> Any:
        if not self._admin(session, request):
            return gr.skip()  # the timer of a logged-out page: nothing to show, no error toast
        return events_frame(await self.gw.events(200))

    # --- config ---------------------------------------------------------------------------

    async def read_config(self, session: Any, request: gr.Request) -> tuple[str, str]:
        self._require(session, request)
        path = Path(self.gw.cfg.path or PACKAGED_CONFIG)
        text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        where = f"Editing `{path}`"
        if path.resolve() == PACKAGED_CONFIG.resolve():
            where += " (the packaged default; Save writes `./tiers.toml`)"
        return text, where + ". Validate checks it without saving; Save keeps a `.bak` and hot-reloads."

    async def validate(self, session: Any, text: str, request: gr.Request) -> str:
        self._require(session, request)
        try:
            cfg = await asyncio.to_thread(parse_config, text or "", self.gw.cfg.path or "tiers.toml")
        except ConfigError as exc:
            return problems_md(exc.problems)
        return f"✅ Valid: {len(cfg.tiers)} tier(s), {len(cfg.routing.tasks)} routed task(s). Not saved yet."

    async def save(self, session: Any, text: str, request: gr.Request) -> tuple:
        user = self._require(session, request)
        problems = await self.gw.save_config(text or "")
        if problems:
            return problems_md(problems), gr.skip()
        log.info("config saved and reloaded by %s", user)
        tiers = list(self.gw.cfg.tiers)
        saved = f"✅ Saved to `{self.gw.cfg.path}` (previous version kept as `.bak`) and reloaded: {len(tiers)} tier(s)."
        return saved, gr.Dropdown(choices=tiers)

    # --- costs ----------------------------------------------------------------------------

    async def costs(self, session: Any, days: int, request: gr.Request) -> tuple:
        self._require(session, request)
        df = await dashboard.daily(self.gw, int(days or 7))
        return dashboard.summary(df), await dashboard.policy(self.gw), df, df, df, df, df
