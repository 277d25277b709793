"""tiergate's Gradio UI: chat, presenter and admin tabs, mounted at `/` by `ui.app.mount`.

Modules: `app` (layout, `/chat` API, mounting), `chat`, `presenter`, `admin` (one tab
each), `status` (the live tier table), `engine` (conversation -> streamed answer),
`session` (admin login), `dashboard` (cost numbers), `format` (texts and badges).
"""
