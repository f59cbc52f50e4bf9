"""The bare baseline for bench_receiver.py: a Flask route that does nothing, under the same gunicorn."""

from flask import Flask

app = Flask(__name__)


@app.post("/webhooks/clerk")
def accept():
    return {"status": "accepted"}


@app.get("/healthz")
def healthz():
    return {"status": "ok"}
