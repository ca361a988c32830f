"""`selftrain serve` and `selftrain keys`: run the API, manage who may use it.

Registered in cli.py (`app.command("serve")(serve)`, `app.add_typer(keys_app, name="keys")`).
"""

from __future__ import annotations

import typer

keys_app = typer.Typer(help="API keys for `selftrain serve`: create, list, revoke.\n\n"
                            "Examples:\n\n"
                            "  selftrain keys create --name alice            # a user key\n\n"
                            "  selftrain keys create --name ops --role admin\n\n"
                            "  selftrain keys revoke 3",
                       no_args_is_help=True)


def _settings_and_db():
    from selftrain.cli_common import database as _db
    from selftrain.cli_common import settings as _settings

    settings = _settings()
    return settings, _db(settings)


def serve(host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
          port: int = typer.Option(8000, help="TCP port.")):
    """Serve the active model over HTTP: an OpenAI-compatible API (/v1) and the native one (/api).

    Example: selftrain serve --port 8000, then
    curl -H "Authorization: Bearer $KEY" http://127.0.0.1:8000/v1/models
    (the schema is at /openapi.json, interactive docs at /docs).
    """
    import uvicorn

    from selftrain.serve.app import create_app

    from sqlalchemy import func, select

    from selftrain.serve.keys import ApiKey

    settings, db = _settings_and_db()
    with db.session() as session:
        if not session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))):
            typer.echo("No API key can use this server yet: `selftrain keys create --name NAME` makes one.",
                       err=True)
    app = create_app(settings, db)
    typer.echo(f"Loading the model, then serving on http://{host}:{port} (docs at /docs)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)


@keys_app.command("create")
def keys_create(name: str = typer.Option(..., "--name", help="Who the key acts for; their interactions are "
                                         "stored under this name (several keys may share it)."),
                role: str = typer.Option("user", "--role", help="user (ask, read and rate own interactions) "
                                         "or admin (everything).")):
    """Create a key and print it once (only its hash is stored).

    Example: selftrain keys create --name alice --role user
    """
    from selftrain.serve.keys import create_key

    _, db = _settings_and_db()
    with db.session() as session:
        row, key = create_key(session, name, role)
    typer.echo(key)
    typer.echo(f"Key {row.id} ({row.role}) for {row.name!r}. It is shown only now: keep it somewhere safe.",
               err=True)


@keys_app.command("list")
def keys_list():
    """Every key: id, owner, role, prefix, created, revoked."""
    from rich.console import Console
    from rich.table import Table

    from selftrain.serve.keys import list_keys

    _, db = _settings_and_db()
    with db.session() as session:
        keys = list_keys(session)
    if not keys:
        typer.echo("No API keys yet: `selftrain keys create --name NAME` makes one.")
        return
    table = Table("id", "name", "role", "prefix", "created", "revoked")
    for k in keys:
        table.add_row(str(k.id), k.name, k.role, k.prefix + "…", k.created_at.strftime("%Y-%m-%d %H:%M"),
                      k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else "")
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: int = typer.Argument(..., help="The id `selftrain keys list` shows.")):
    """Revoke a key; a running server stops accepting it within serve_key_cache_s (10 s)."""
    from selftrain.serve.keys import revoke_key

    _, db = _settings_and_db()
    with db.session() as session:
        row = revoke_key(session, key_id)
    typer.echo(f"Key {row.id} ({row.name}) is revoked.")
