"""tiergate's Gradio UI: chat, presenter and admin tabs, mounted at `/` by `ui.app.mount`.

Modules: `app` (layout, `/chat` API, mounting), `chat`, `presenter`, `admin` (one tab
each), `status` (the live tier table), `engine` (conversation -> streamed answer, the
per-session work a closed page cancels, which files may be read), `session` (logins and
roles), `access` (who may call each UI event), `dashboard` (cost numbers), `format`
(texts and badges).
"""
