"""The browser editor: `python -m dreamlayer_jax.app` (or `dreamlayer-app`) serves a page
to compose, generate, edit, decompose and download layered scenes (docs/APP.md).

`server` starts it, `routes` is the HTTP interface, `jobs` the one-at-a-time queue on
the model, `tasks` what a request asks of the pipeline, `storage` the working folder
every upload and result is confined to, `static/` the page (plain HTML / JS / CSS).
"""
