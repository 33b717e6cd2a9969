"""The HTTP API: the FastAPI app (app.py), its routes by resource (routes/), the response
models (schemas.py) and how results become them (presenters.py), and the HTTP plumbing below
the app (guard.py, server.py)."""
