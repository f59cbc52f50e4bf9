"""The operator's web console: deliveries, one delivery, one user's balance, the overview.

A Flask app of its own (`create_app` in `app.py`), served by gunicorn as the Procfile's
`console` process, never on the webhook port. Pages are rendered on the server (Jinja) and work
without JavaScript, except the balance chart. Every page reads through `ops.queries` and every
action runs through `ops.actions`, as the CLI does: the two show the same facts from one copy.
Access: HTTP basic auth (CONSOLE_BASIC_AUTH); actions for CONSOLE_OPERATORS only, as POSTs with
a CSRF token, each recorded in the audit log. docs/operating.md ("The console").
"""
