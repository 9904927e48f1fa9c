"""The `flowengine` command line: demo, serve, repl, flows, audit, diagram, purge."""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
import threading
from collections.abc import Sequence
from typing import Any

from flowengine.errors import ConfigError, FlowEngineError
from flowengine.oauth.config import ClientConfig, load_config
from flowengine.records import AuditEvent

logger = logging.getLogger("flowengine.cli")

DEMO_HOST = "127.0.0.1"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.run(args))
    except FlowEngineError as exc:
        print(f"flowengine: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"flowengine: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # A bug or an unforeseen failure: one readable line, and the
        # traceback in the log when --verbose is set.
        logger.debug("unexpected error", exc_info=True)
        print(
            f"flowengine: unexpected error: {type(exc).__name__}: "
            f"{str(exc)[:200]}; run with --verbose for the traceback",
            file=sys.stderr,
        )
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowengine",
        description=(
            "OAuth 2.0 client whose authorization code grant is an auditable "
            "state machine."
        ),
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log every transition and request"
    )
    commands = parser.add_subparsers(title="commands", required=True)

    demo = commands.add_parser(
        "demo",
        help="run the client, a demo authorization server and a demo resource",
        description=(
            "Start the client web application (port 9000), a demo authorization "
            "server (9001) and a demo protected resource (9002) on this machine, "
            "then open http://localhost:9000. With --auto, run one whole grant, "
            "a resource call, an expiry and a refresh, print each transition and "
            "exit."
        ),
    )
    demo.add_argument(
        "--auto", action="store_true", help="drive one grant by itself, then exit"
    )
    demo.add_argument(
        "--token-lifetime",
        type=int,
        default=300,
        metavar="SECONDS",
        help="access token lifetime issued by the demo server (default: 300)",
    )
    _add_port_options(demo)
    _add_store_option(demo)
    demo.set_defaults(run=_run_demo)

    serve = commands.add_parser(
        "serve",
        help="run only the client web application",
        description=(
            "Serve the client web application under waitress, for use with "
            "the authorization server named in the configuration."
        ),
    )
    _add_config_options(serve)
    serve.add_argument(
        "--host", default=DEMO_HOST, help="address to bind (default: 127.0.0.1)"
    )
    serve.add_argument(
        "--port", type=int, default=9000, help="TCP port (default: 9000)"
    )
    serve.add_argument(
        "--secret-key",
        help="key that signs session cookies; set it when several processes serve "
        "the same users (default: random per process)",
    )
    serve.set_defaults(run=_run_serve)

    flows = commands.add_parser("flows", help="list stored flows")
    _add_config_options(flows)
    flows.set_defaults(run=_run_flows)

    audit = commands.add_parser("audit", help="print the audit trail of a flow")
    audit.add_argument("flow_id", help="the flow's id, as `flowengine flows` lists it")
    audit.add_argument("--json", action="store_true", help="print JSON lines")
    _add_config_options(audit)
    audit.set_defaults(run=_run_audit)

    diagram = commands.add_parser(
        "diagram",
        help="draw the flow definition as a state diagram",
        description=(
            "Print the authorization_code definition as a state diagram: Mermaid "
            "text, Graphviz DOT source or an SVG picture. The current state is "
            "marked: the flow's state with FLOW_ID, else the initial state. SVG "
            "needs Graphviz's `dot` program."
        ),
    )
    diagram.add_argument("flow_id", nargs="?", help="a stored flow to mark")
    diagram.add_argument(
        "--format",
        choices=["mermaid", "svg", "dot"],
        default="mermaid",
        help="output format: mermaid (default), svg or dot (Graphviz source)",
    )
    _add_config_options(diagram)
    diagram.set_defaults(run=_run_diagram)

    purge = commands.add_parser(
        "purge",
        help="abandon expired pending grants and delete old flows in unauthorized",
        description=(
            "Fire `abandon` on every flow whose authorization request or "
            "received code is older than pending_lifetime, which drops its "
            "state value, PKCE verifier and code. Then delete every flow in "
            "unauthorized, with its audit trail, that has not changed for the "
            "retention period."
        ),
    )
    purge.add_argument(
        "--retention",
        type=float,
        metavar="SECONDS",
        help="seconds to keep a flow in unauthorized after its last change "
        "(default: audit_retention from the configuration, which defaults to "
        "30 days)",
    )
    _add_config_options(purge)
    purge.set_defaults(run=_run_purge)

    repl = commands.add_parser(
        "repl",
        help="step through flows in an interactive shell",
        description=(
            "Start a shell that creates flows, fires triggers, runs the steps "
            "of the grant and shows each flow's state, valid triggers and audit "
            "trail. When standard input is not a terminal, the shell reads one "
            "command per line without prompting and exits with status 1 if any "
            "command failed."
        ),
    )
    repl.add_argument(
        "--exit-on-error",
        action="store_true",
        help="stop at the first command that fails",
    )
    _add_config_options(repl)
    repl.set_defaults(run=_run_repl)
    return parser


def _add_port_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--client-port", type=int, default=9000, help="default: 9000")
    parser.add_argument("--auth-port", type=int, default=9001, help="default: 9001")
    parser.add_argument("--resource-port", type=int, default=9002, help="default: 9002")


def _add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        help="where flows are kept: a SQLite file path, sqlite:///path or memory: "
        "(default: $FLOWENGINE_STORE, else "
        "$XDG_STATE_HOME/flowengine/flows.sqlite3)",
    )


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", metavar="FILE", help="YAML or TOML configuration file"
    )
    _add_store_option(parser)
    parser.add_argument("--client-id", help="OAuth client id")
    parser.add_argument("--client-secret", help="OAuth client secret")
    parser.add_argument("--redirect-uri", help="redirect URI registered for the client")
    parser.add_argument("--authorization-endpoint", help="authorization endpoint URL")
    parser.add_argument("--token-endpoint", help="token endpoint URL")
    parser.add_argument("--resource-url", help="protected resource URL")
    parser.add_argument("--scope", help="space-separated scopes to request")


def _config_from(args: argparse.Namespace) -> ClientConfig:
    keys = (
        "store",
        "client_id",
        "client_secret",
        "redirect_uri",
        "authorization_endpoint",
        "token_endpoint",
        "resource_url",
        "scope",
    )
    overrides = {key: getattr(args, key, None) for key in keys}
    return load_config(getattr(args, "config", None), overrides)


# --- demo --------------------------------------------------------------------


def _run_demo(args: argparse.Namespace) -> int:
    from flowengine.adapters.wsgi import BackgroundServer
    from flowengine.client import OAuthClient
    from flowengine.demo import (
        DemoDatabase,
        DemoSettings,
        create_authorization_server,
        create_resource_server,
    )
    from flowengine.web import create_app

    issuer = f"http://localhost:{args.auth_port}"
    redirect_uri = f"http://localhost:{args.client_port}/callback"
    settings = DemoSettings(
        issuer=issuer,
        redirect_uris=(redirect_uri,),
        access_token_lifetime=args.token_lifetime,
    )
    config = ClientConfig(
        issuer=issuer,
        redirect_uri=redirect_uri,
        authorization_endpoint=f"{issuer}/authorize",
        token_endpoint=f"{issuer}/token",
        revocation_endpoint=f"{issuer}/revoke",
        resource_url=f"http://localhost:{args.resource_port}/resource",
        **({"store": args.store} if args.store else {}),
    )
    database = DemoDatabase()
    client = OAuthClient(config)
    if args.auto:
        client.engine.subscribe(_print_event)

    servers = [
        BackgroundServer(
            create_authorization_server(settings, database),
            host=DEMO_HOST,
            port=args.auth_port,
            name="authorization server",
        ),
        BackgroundServer(
            create_resource_server(settings, database),
            host=DEMO_HOST,
            port=args.resource_port,
            name="resource",
        ),
        BackgroundServer(
            create_app(client), host=DEMO_HOST, port=args.client_port, name="client"
        ),
    ]
    for server in servers:
        server.start()
    try:
        if args.auto:
            return _auto(client, database)
        _announce(args)
        threading.Event().wait()
        return 0
    finally:
        for server in servers:
            server.stop()
        client.close()


def _announce(args: argparse.Namespace) -> None:
    print(
        f"flowengine demo is running:\n"
        f"  client               http://localhost:{args.client_port}/  <- open this\n"
        f"  authorization server http://localhost:{args.auth_port}/\n"
        f"  protected resource   http://localhost:{args.resource_port}/resource\n"
        "Press Ctrl+C to stop.",
        flush=True,
    )


def _auto(client: Any, database: Any) -> int:
    from flowengine.autopilot import run_grant

    def say(line: str) -> None:
        print(f"  {line}", flush=True)

    try:
        flow_id = run_grant(client, database.expire_access_tokens, say)
    except FlowEngineError as exc:
        print(f"flowengine demo: failed: {exc}", file=sys.stderr)
        return 1
    print(f"done: flow {flow_id} is in state {client.status(flow_id).state!r}")
    return 0


def _print_event(event: AuditEvent) -> None:
    source = event.source or "(new)"
    outcome = "" if event.ok else f"  [{event.outcome}]"
    print(f"{source} → {event.destination}  ({event.trigger}){outcome}", flush=True)


# --- serve, flows, audit -----------------------------------------------------


def _run_serve(args: argparse.Namespace) -> int:
    from flowengine.adapters.wsgi import BackgroundServer
    from flowengine.client import OAuthClient
    from flowengine.web import create_app

    config = _config_from(args)
    client = OAuthClient(config)
    key = args.secret_key.encode() if args.secret_key else secrets.token_bytes(32)
    server = BackgroundServer(
        create_app(client, secret_key=key),
        host=args.host,
        port=args.port,
        name="client",
    )
    print(f"flowengine client on {server.url}/ (Ctrl+C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        client.close()
    return 0


def _run_flows(args: argparse.Namespace) -> int:
    from flowengine.adapters.stores import open_store

    store = open_store(_config_from(args).store)
    for record in store.flows():
        print(
            f"{record.id}  {record.definition}  {record.state:<18}  v{record.version}"
        )
    return 0


def _run_audit(args: argparse.Namespace) -> int:
    from flowengine.adapters.stores import open_store

    store = open_store(_config_from(args).store)
    events = store.events(args.flow_id)
    if args.json:
        for event in events:
            print(json.dumps(event.to_dict(), sort_keys=True))
        return 0

    print(
        _AUDIT_ROW.format(
            "#",
            "time (UTC)",
            "trigger",
            "source",
            "",
            "destination",
            "outcome",
            "details",
        )
    )
    for event in events:
        # Details are redacted when saved; repr() keeps any control
        # characters in server-provided text off the terminal.
        details = ", ".join(f"{k}={v!r}" for k, v in sorted(event.details.items()))
        print(
            _AUDIT_ROW.format(
                event.sequence,
                event.time,
                event.trigger,
                event.source or "-",
                "→",
                event.destination,
                event.outcome,
                details,
            )
        )
    return 0


_AUDIT_ROW = "{:>4}  {:<27}  {:<16} {:<18} {:1} {:<18} {:<20} {}"


def _run_diagram(args: argparse.Namespace) -> int:
    from flowengine.adapters.stores import open_store
    from flowengine.definition import load_definition
    from flowengine.diagram import dot, mermaid, svg
    from flowengine.grant import REGISTRY

    draw = {"mermaid": mermaid, "svg": svg, "dot": dot}[args.format]
    definition = load_definition("authorization_code", REGISTRY)
    current = None
    if args.flow_id:
        current = open_store(_config_from(args).store).load(args.flow_id).state
    print(draw(definition, current), end="")
    return 0


def _run_purge(args: argparse.Namespace) -> int:
    from flowengine.client import OAuthClient

    config = _config_from(args)
    retention = config.audit_retention if args.retention is None else args.retention
    # Checked before anything is written; `not >` also rejects NaN.
    if not retention > 0:
        raise ConfigError(
            f"--retention must be greater than 0 seconds, not {args.retention}"
        )
    client = OAuthClient(config)
    try:
        abandoned = client.expire_abandoned()
        deleted = client.purge(retention)
    finally:
        client.close()
    print(f"abandoned {len(abandoned)} expired pending flow(s)")
    print(
        f"deleted {len(deleted)} flow(s) in unauthorized unchanged for "
        f"{retention:.12g} s, with their audit trails"
    )
    return 0


# --- repl --------------------------------------------------------------------


def _run_repl(args: argparse.Namespace) -> int:
    from flowengine.repl import run_repl

    return run_repl(_config_from(args), exit_on_error=args.exit_on_error)


if __name__ == "__main__":
    sys.exit(main())
