"""`flowengine repl`: a shell that steps through flows of the code grant.

The shell works on the configured store, so flows created here survive the
process and can be picked up later, by another shell or by the web app. Its
help, its trigger lists and its guards come from the loaded flow definition.

At a terminal the shell prompts, completes commands, trigger names and flow
ids with Tab, and keeps the session's line history through readline when
available. No history file is written, because a `callback` line contains an
authorization code and a state value. When standard input is not a terminal,
it reads one command per line with no prompt, so a session can be scripted.
Either way, the exit status is 1 if any command failed.

Output never contains a token, a code or the client secret: tokens are
abbreviated. The one exception is `authorize`, which prints the
authorization URL with its `state` value, because the user has to open that
URL. It is printed for the user only and never logged.
"""

from __future__ import annotations

import cmd
import contextlib
import datetime
import inspect
import json
import logging
import shlex
import sys
import textwrap
import unicodedata
import webbrowser
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from flowengine.client import FlowStatus, OAuthClient
from flowengine.definition import FlowDefinition
from flowengine.diagram import mermaid
from flowengine.errors import (
    FlowEngineError,
    FlowNotFoundError,
    InvalidTriggerError,
    ProtocolError,
)
from flowengine.flow import Flow, open_flow
from flowengine.oauth.config import ClientConfig
from flowengine.oauth.protocol import ResourceResult, parse_callback
from flowengine.records import AuditEvent
from flowengine.redaction import abbreviate

logger = logging.getLogger(__name__)

INTRO = (
    "flowengine shell: step through {definition} flows. Type help to list "
    "commands, help TRIGGER to read a trigger, quit to leave."
)

# Words longer than this are abbreviated in error messages, because a line
# that is not a command may be a pasted token or code.
_ECHO_LIMIT = 24


class CommandError(Exception):
    """A shell command was used wrongly or failed; the message gives the reason."""


def run_repl(
    config: ClientConfig,
    *,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    exit_on_error: bool = False,
) -> int:
    """Run the shell over a client built from `config` and return the exit status.

    The status is 0 when every command succeeded and 1 when any failed.

    Raises:
        ConfigError: the configured store cannot be opened.
        KeyboardInterrupt: Ctrl+C while reading commands that are not typed
            at a terminal.
    """
    client = OAuthClient(config)
    try:
        shell = FlowShell(
            client,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            exit_on_error=exit_on_error,
        )
        return shell.run()
    finally:
        client.close()


class FlowShell(cmd.Cmd):
    """The `flowengine repl` command interpreter over one OAuthClient.

    Args:
        client: the client whose store, engine and definition the shell uses.
        stdin, stdout, stderr: the streams; the process's streams if omitted.
            Errors go to `stderr` as one line each.
        interactive: whether to prompt and complete; by default, whether
            `stdin` is a terminal.
        exit_on_error: stop at the first command that fails.
    """

    def __init__(
        self,
        client: OAuthClient,
        *,
        stdin: IO[str] | None = None,
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
        interactive: bool | None = None,
        exit_on_error: bool = False,
    ) -> None:
        super().__init__(stdin=stdin, stdout=stdout)
        self.client = client
        self.stderr = stderr if stderr is not None else sys.stderr
        if interactive is None:
            interactive = self.stdin.isatty()
        self.interactive = interactive
        # cmd.Cmd reads through input(), and so through readline, only when
        # use_rawinput is set. Otherwise it reads stdin line by line.
        self.use_rawinput = interactive
        self.exit_on_error = exit_on_error
        self.flow: Flow | None = None
        self.failures = 0
        self._failed = False
        self.prompt = self._prompt()
        client.engine.subscribe(self._print_event)

    @property
    def definition(self) -> FlowDefinition:
        """The flow definition the client drives."""
        return self.client.definition

    def run(self) -> int:
        """Read and run commands until quit or end of input, then return the status."""
        if self.interactive:
            self.intro = INTRO.format(definition=self.definition.name)
        while True:
            try:
                self.cmdloop()
            except KeyboardInterrupt:
                if not self.interactive:
                    raise
                # Ctrl+C cancels the line or the running command, not the shell.
                self._write("\ninterrupted; type quit to leave")
                self.intro = ""
                continue
            return 1 if self.failures else 0

    # --- the command loop ----------------------------------------------------

    def preloop(self) -> None:
        if not self.interactive:
            return
        try:
            import readline
        except ImportError:
            return
        # Flow ids, key=value inputs and --open are completed as whole words.
        readline.set_completer_delims(" \t\n")
        if "libedit" in (readline.__doc__ or ""):
            readline.parse_and_bind("bind ^I rl_complete")

    def precmd(self, line: str) -> str:
        # A line starting with '#' is a comment, so scripts can explain steps.
        return "" if line.lstrip().startswith("#") else line

    def onecmd(self, line: str) -> bool:
        self._failed = False
        try:
            return bool(super().onecmd(line))
        except (CommandError, InvalidTriggerError, FlowNotFoundError) as exc:
            # These messages already name the flow, or no flow is involved.
            self._fail(str(exc))
        except FlowEngineError as exc:
            self._fail(f"{exc}{self._where()}")
        except (OSError, NotImplementedError) as exc:
            self._fail(str(exc))
        except Exception as exc:
            # A defect in one command must not end the session, so the error is
            # printed, and logged with its traceback under -v.
            logger.debug("command %r failed", line.split()[:1], exc_info=True)
            self._fail(f"unexpected {type(exc).__name__}: {exc}")
        return False

    def postcmd(self, stop: bool, line: str) -> bool:
        if self._failed and self.exit_on_error:
            return True
        self.prompt = self._prompt()
        return stop

    def emptyline(self) -> bool:
        # cmd.Cmd repeats the last command on an empty line, which would fire
        # a second refresh or logout by accident.
        return False

    def default(self, line: str) -> None:
        word = line.split(maxsplit=1)[0]
        if "://" in word:
            raise CommandError(
                "a URL is not a command; to apply the address the browser "
                "landed on, type: callback URL"
            )
        raise CommandError(
            f"unknown command {_shorten(word)!r}; type help to list commands"
        )

    def complete(self, text: str, state: int) -> str | None:  # type: ignore[override]
        # typeshed declares list[str] | None, but readline calls this for
        # one match at a time and cmd.Cmd returns that match as a string.
        # Python's readline appends nothing to a completed word, so a unique
        # match gets its space here, ready for the next argument.
        if state == 0:
            super().complete(text, state)
            matches = list(self.completion_matches or [])
            if len(matches) == 1:
                matches = [matches[0] + " "]
            self.completion_matches = matches
        matches = self.completion_matches or []
        return matches[state] if state < len(matches) else None

    def completenames(self, text: str, *ignored: Any) -> list[str]:
        return [name for name in self._command_names() if name.startswith(text)]

    # --- flows ---------------------------------------------------------------

    def do_new(self, arg: str) -> None:
        """Create a flow in the initial state and make it the current flow.

        Usage: new [FLOW_ID]

        Without FLOW_ID the flow gets a random id.
        """
        words = _split(arg, usage="new [FLOW_ID]", maximum=1)
        self.flow = Flow.create(self.client, words[0] if words else None)
        self._write(f"created flow {self.flow.flow_id}; it is the current flow")

    def do_flows(self, arg: str) -> None:
        """List the stored flows; '*' marks the current one.

        Usage: flows
        """
        _split(arg, usage="flows", maximum=0)
        records = self.client.store.flows()
        if not records:
            self._write("no flows stored; create one with: new")
        current = self.flow.flow_id if self.flow else None
        for record in records:
            mark = "*" if record.id == current else " "
            other = "" if record.definition == self.definition.name else "  (other)"
            self._write(
                f"{mark} {record.id}  {record.state:<18} v{record.version:<4} "
                f"{_utc(record.updated_at)}{other}"
            )

    def do_use(self, arg: str) -> None:
        """Make a stored flow the current flow.

        Usage: use FLOW_ID

        FLOW_ID may be the start of an id when only one id starts that way.
        """
        words = _split(arg, usage="use FLOW_ID", minimum=1, maximum=1)
        self.flow = open_flow(self.client, self._resolve_flow_id(words[0]))
        self._write(f"current flow: {self.flow.flow_id} ({self.flow.state})")

    def complete_use(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        """Complete the ids of stored flows of this definition."""
        return [flow_id for flow_id in self._flow_ids() if flow_id.startswith(text)]

    # --- inspection ----------------------------------------------------------

    def do_show(self, arg: str) -> None:
        """Show the current flow: state, valid triggers with guards, token.

        Usage: show

        The access token is abbreviated; no secret is shown.
        """
        _split(arg, usage="show", maximum=0)
        status = self._current().status()
        for line in _status_lines(status, self.definition, self.client.clock.now()):
            self._write(line)

    do_status = do_show

    def do_triggers(self, arg: str) -> None:
        """List the triggers valid in a state, with guards, actions and description.

        Usage: triggers [STATE]

        Without STATE, the current flow's state is used.
        """
        words = _split(arg, usage="triggers [STATE]", maximum=1)
        state = words[0] if words else self._current().state
        if state not in self.definition.state_names:
            raise CommandError(
                f"unknown state {state!r}; the states are "
                f"{', '.join(self.definition.state_names)}"
            )
        self._write(f"triggers valid in {state}:")
        for line in _trigger_details(self.definition, state):
            self._write(line)

    def complete_triggers(
        self, text: str, line: str, begidx: int, endidx: int
    ) -> list[str]:
        """Complete state names."""
        return [s for s in self.definition.state_names if s.startswith(text)]

    def do_history(self, arg: str) -> None:
        """Print the audit trail of the current flow, oldest first.

        Usage: history
        """
        _split(arg, usage="history", maximum=0)
        for line in _history_lines(self._current().events()):
            self._write(line)

    def do_diagram(self, arg: str) -> None:
        """Print the flow definition as a Mermaid state diagram.

        Usage: diagram

        The current flow's state is drawn as the active state.
        """
        _split(arg, usage="diagram", maximum=0)
        if self.flow is None:
            self._write(mermaid(self.definition).rstrip("\n"))
        else:
            self._write(self.flow.diagram().rstrip("\n"))

    # --- steps of the grant --------------------------------------------------

    def do_fire(self, arg: str) -> None:
        """Fire a trigger on the current flow through the engine, without I/O.

        Usage: fire TRIGGER [key=value ...]

        The key=value pairs are the trigger's inputs. Values are text, except
        true and false, which are booleans, and callback=URL, which is parsed
        as a redirect URL. No request is sent: use authorize, callback,
        exchange, fetch and refresh for the steps that call a server. A
        value returned by the trigger is not shown, because it may contain
        a secret.
        """
        usage = "fire TRIGGER [key=value ...]"
        words = _split(arg, usage=usage, minimum=1)
        flow = self._current()
        flow.fire(words[0], **_parse_inputs(words[1:]))

    def complete_fire(
        self, text: str, line: str, begidx: int, endidx: int
    ) -> list[str]:
        """Complete the trigger name with the triggers valid now.

        With no current flow, every trigger of the definition is offered.
        """
        if len(line[:begidx].split()) != 1:
            return []
        triggers: Sequence[str] = self.definition.triggers
        if self.flow is not None:
            # An unreadable flow still gets the whole list rather than none.
            with contextlib.suppress(FlowEngineError):
                triggers = self.flow.valid_triggers
        return [trigger for trigger in triggers if trigger.startswith(text)]

    def do_authorize(self, arg: str) -> None:
        """Start a grant and print the authorization URL to open.

        Usage: authorize [--open]

        With --open the URL is also opened in the web browser. Without a
        current flow, a new flow is created first. Each call makes a new
        state value and PKCE verifier, so only the last URL printed works.
        """
        words = _split(arg, usage="authorize [--open]", maximum=1)
        if words and words[0] != "--open":
            raise CommandError(
                f"unknown option {words[0]!r}; usage: authorize [--open]"
            )
        if self.flow is None:
            self.flow = Flow.create(self.client)
            self._write(f"created flow {self.flow.flow_id}; it is the current flow")
        url = self.flow.start()
        self._write(
            "Open the URL below in a browser and approve. Then type callback "
            "and paste the address the browser lands on."
        )
        self._write(url)
        if words and not webbrowser.open(url):
            raise CommandError("no web browser could be started; open the URL by hand")

    def complete_authorize(
        self, text: str, line: str, begidx: int, endidx: int
    ) -> list[str]:
        """Complete the --open option."""
        return ["--open"] if "--open".startswith(text) else []

    def do_callback(self, arg: str) -> None:
        """Apply the redirect URL the browser landed on and exchange the code.

        Usage: callback URL

        The URL's state must match the current flow's pending request.
        """
        words = _split(arg, usage="callback URL", minimum=1, maximum=1)
        flow = self._current()
        flow.callback(words[0])
        self._write_token(flow)

    def do_exchange(self, arg: str) -> None:
        """Exchange the received code for tokens again.

        Usage: exchange

        Needed only in code_received: after an exchange that failed in
        transport, or after firing receive_code by hand.
        """
        _split(arg, usage="exchange", maximum=0)
        flow = self._current()
        flow.exchange()
        self._write_token(flow)

    def do_fetch(self, arg: str) -> None:
        """Call the protected resource with the flow's token and print its data.

        Usage: fetch

        An expired or rejected token is refreshed once before the call.
        """
        _split(arg, usage="fetch", maximum=0)
        result = self._current().fetch()
        for line in _resource_lines(result):
            self._write(line)

    def do_refresh(self, arg: str) -> None:
        """Refresh the access token now, even if it has not expired.

        Usage: refresh
        """
        _split(arg, usage="refresh", maximum=0)
        flow = self._current()
        flow.refresh()
        self._write_token(flow)

    def do_logout(self, arg: str) -> None:
        """Drop the current flow's tokens and pending request.

        Usage: logout
        """
        _split(arg, usage="logout", maximum=0)
        flow = self._current()
        flow.logout()
        self._write(f"flow {flow.flow_id} holds no token now")

    # --- help and leaving ----------------------------------------------------

    def do_help(self, arg: str) -> None:
        """List the commands, or describe a command, a trigger or a state.

        Usage: help [COMMAND | TRIGGER | STATE]
        """
        name = arg.strip()
        if not name:
            self._write_overview()
            return
        lines = self._help_lines(name)
        if not lines:
            raise CommandError(
                f"no help for {_shorten(name)!r}; type help to list commands"
            )
        for line in lines:
            self._write(line)

    def complete_help(self, *args: Any) -> list[str]:
        text = str(args[0]) if args else ""
        names = [
            *self._command_names(),
            *self.definition.triggers,
            *self.definition.state_names,
        ]
        return sorted({name for name in names if name.startswith(text)})

    def do_quit(self, arg: str) -> bool:
        """Leave the shell.

        Usage: quit
        """
        return True

    do_exit = do_quit

    def do_EOF(self, arg: str) -> bool:
        if self.interactive:
            self._write("")
        return True

    # --- helpers -------------------------------------------------------------

    def _current(self) -> Flow:
        if self.flow is None:
            raise CommandError(
                "no current flow; create one with: new, or pick one with: use FLOW_ID"
            )
        return self.flow

    def _flow_ids(self) -> list[str]:
        name = self.definition.name
        return [r.id for r in self.client.store.flows() if r.definition == name]

    def _resolve_flow_id(self, text: str) -> str:
        try:
            self.client.engine.load(text)
            return text
        except FlowNotFoundError:
            matches = [
                flow_id for flow_id in self._flow_ids() if flow_id.startswith(text)
            ]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise FlowNotFoundError(text)
        raise CommandError(
            f"{len(matches)} flow ids start with {text!r}; type more of the id"
        )

    def _where(self) -> str:
        if self.flow is None:
            return ""
        try:
            state = self.flow.state
        except FlowEngineError:
            return ""
        valid = ", ".join(self.client.engine.valid_triggers(state)) or "none"
        return (
            f" [flow {self.flow.flow_id} is in state {state!r}; "
            f"valid triggers: {valid}]"
        )

    def _prompt(self) -> str:
        if not self.interactive:
            return ""
        if self.flow is None:
            return "flowengine> "
        try:
            state = self.flow.state
        except FlowEngineError:
            state = "?"
        return f"flowengine [{self.flow.flow_id[:8]} {state}]> "

    def _command_names(self) -> list[str]:
        """Return the command names in the order the class defines them."""
        return [
            name[3:]
            for name in vars(type(self))
            if name.startswith("do_") and name != "do_EOF"
        ]

    def _write_overview(self) -> None:
        self._write("Commands (type help COMMAND for details):")
        for names, doc in self._commands_by_function():
            usage = _usage_of(doc) or names[0]
            label = (
                usage if len(names) == 1 else f"{usage}  (also: {', '.join(names[1:])})"
            )
            self._write(f"  {label}")
            self._write(f"      {doc.splitlines()[0]}")
        self._write(
            f"Triggers of {self.definition.name} (type help TRIGGER): "
            f"{', '.join(self.definition.triggers)}"
        )
        self._write(f"States: {', '.join(self.definition.state_names)}")

    def _commands_by_function(self) -> list[tuple[list[str], str]]:
        """Group aliases: each command function with all its names and its help."""
        groups: dict[Callable[..., Any], list[str]] = {}
        for name in self._command_names():
            groups.setdefault(getattr(type(self), f"do_{name}"), []).append(name)
        return [(names, inspect.getdoc(func) or "") for func, names in groups.items()]

    def _help_lines(self, name: str) -> list[str]:
        lines: list[str] = []
        if name in self._command_names():
            lines += (inspect.getdoc(getattr(self, f"do_{name}")) or "").splitlines()
        if name in self.definition.triggers:
            if lines:
                lines += ["", f"{name} is also a trigger of {self.definition.name}:"]
            lines += _trigger_help(self.definition, name)
        if name in self.definition.state_names:
            description = _state_description(self.definition, name)
            lines += [f"state {name}:", *_wrap(description, indent=4)]
            lines += ["valid triggers:", *_transition_rows(self.definition, name)]
        return lines

    def _write_token(self, flow: Flow) -> None:
        status = flow.status()
        now = self.client.clock.now()
        self._write(
            f"access token {status.access_token or 'none'}, scope "
            f"{status.scope or '-'}, expires {_expiry(status, now)}"
        )

    def _print_event(self, event: AuditEvent) -> None:
        source = event.source or "(new)"
        outcome = "" if event.ok else f"  [failed: {event.outcome}]"
        self._write(f"  {source} → {event.destination}  ({event.trigger}){outcome}")

    def _write(self, text: str) -> None:
        for line in text.split("\n"):
            self.stdout.write(_printable(line) + "\n")
        self.stdout.flush()

    def _fail(self, message: str) -> None:
        self._failed = True
        self.failures += 1
        self.stdout.flush()
        one_line = " ".join(message.split())
        self.stderr.write(f"error: {_printable(one_line)}\n")
        self.stderr.flush()


# --- parsing arguments ---------------------------------------------------------


def _split(
    arg: str, *, usage: str, minimum: int = 0, maximum: int | None = None
) -> list[str]:
    try:
        words = shlex.split(arg)
    except ValueError as exc:
        raise CommandError(
            f"cannot parse the arguments ({exc}); usage: {usage}"
        ) from None
    if len(words) < minimum or (maximum is not None and len(words) > maximum):
        raise CommandError(f"usage: {usage}")
    return words


def _parse_inputs(pairs: Sequence[str]) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for position, pair in enumerate(pairs, start=1):
        key, sep, value = pair.partition("=")
        # The pair is not echoed: a URL pasted without "callback=" carries
        # a code and a state value.
        if not sep or not key.isidentifier():
            raise CommandError(
                f"input {position} is not of the form key=value; "
                "usage: fire TRIGGER [key=value ...]"
            )
        inputs[key] = _input_value(key, value)
    return inputs


def _input_value(key: str, value: str) -> Any:
    if key == "callback":
        return parse_callback(value)
    if value in ("true", "false"):
        return value == "true"
    return value


def _shorten(word: str) -> str:
    return word if len(word) <= _ECHO_LIMIT else abbreviate(word)


# --- formatting ------------------------------------------------------------------


def _printable(text: str) -> str:
    """Escape control and format characters, such as terminal escape codes.

    Text from servers (error descriptions, scopes, resource data) reaches the
    terminal, so it must not be able to move the cursor or rewrite lines.
    """
    return "".join(
        repr(char)[1:-1] if unicodedata.category(char) in ("Cc", "Cf") else char
        for char in text
    )


def _utc(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _expiry(status: FlowStatus, now: float) -> str:
    if status.access_token is None:
        return "-"
    if status.expires_at is None:
        return "unknown (the server sent no expires_in)"
    seconds = round(status.expires_at - now)
    relative = f"in {seconds} s" if seconds >= 0 else f"{-seconds} s ago"
    return f"{_utc(status.expires_at)} ({relative})"


def _wrap(text: str, *, indent: int) -> list[str]:
    return textwrap.wrap(
        text, width=79, initial_indent=" " * indent, subsequent_indent=" " * indent
    )


def _state_description(definition: FlowDefinition, state: str) -> str:
    return next(s.description for s in definition.states if s.name == state)


def _status_lines(
    status: FlowStatus, definition: FlowDefinition, now: float
) -> list[str]:
    return [
        f"flow           {status.flow_id}",
        f"state          {status.state}",
        *_wrap(_state_description(definition, status.state), indent=15),
        f"access token   {status.access_token or 'none'}",
        f"refresh token  {'held' if status.has_refresh_token else 'none'}",
        f"scope          {status.scope or '-'}",
        f"expires        {_expiry(status, now)}",
        f"last error     {status.last_error or 'none'}",
        f"version        {status.version}, updated {_utc(status.updated_at)}",
        "valid triggers:",
        *_transition_rows(definition, status.state),
    ]


def _transition_rows(definition: FlowDefinition, state: str) -> list[str]:
    """Return one line per transition leaving `state`, with its guards."""
    rows = [
        (f"{spec.trigger} → {spec.dest}", spec.conditions)
        for trigger in definition.triggers_from(state)
        for spec in definition.transitions_for(trigger, state)
    ]
    if not rows:
        return ["  none"]
    width = max(len(move) for move, _ in rows)
    return [
        f"  {move:<{width}}  if {' and '.join(guards)}" if guards else f"  {move}"
        for move, guards in rows
    ]


def _trigger_details(definition: FlowDefinition, state: str) -> list[str]:
    lines: list[str] = []
    for trigger in definition.triggers_from(state):
        for spec in definition.transitions_for(trigger, state):
            lines.append(f"  {spec.trigger} → {spec.dest}")
            lines.append(f"      guards:  {', '.join(spec.conditions) or 'none'}")
            lines.append(f"      actions: {', '.join(spec.actions) or 'none'}")
            lines += _wrap(spec.description, indent=6)
    return lines


def _trigger_help(definition: FlowDefinition, trigger: str) -> list[str]:
    lines = [f"trigger {trigger}:"]
    for spec in definition.transitions:
        if spec.trigger != trigger:
            continue
        lines.append(f"  from {', '.join(spec.sources)} → {spec.dest}")
        lines.append(f"      guards:  {', '.join(spec.conditions) or 'none'}")
        lines.append(f"      actions: {', '.join(spec.actions) or 'none'}")
        lines += _wrap(spec.description, indent=6)
    return lines


def _history_lines(events: Iterable[AuditEvent]) -> list[str]:
    lines = [
        f"{'seq':>4}  {'time (UTC)':<20}  {'trigger':<16}  "
        f"{'source → destination':<38}  {'outcome':<14}  details"
    ]
    for event in events:
        move = f"{event.source or '-'} → {event.destination}"
        details = ", ".join(
            f"{key}={_detail_value(key, value)}" for key, value in event.details.items()
        )
        row = (
            f"{event.sequence:>4}  {event.time[:19].replace('T', ' '):<20}  "
            f"{event.trigger:<16}  {move:<38}  {event.outcome:<14}  {details}"
        )
        lines.append(row.rstrip())
    return lines


def _detail_value(key: str, value: Any) -> Any:
    # Audit details store times such as expires_at as POSIX seconds.
    if key.endswith("_at") and isinstance(value, int | float):
        return _utc(value)
    return value


def _resource_lines(result: ResourceResult) -> list[str]:
    header = f"HTTP {result.status} {result.media_type or '(no media type)'}"
    if result.media_type.endswith("json"):
        try:
            data = result.json()
        except ProtocolError:
            return [header, result.text()]
        return [header, json.dumps(data, indent=2, ensure_ascii=False)]
    return [header, result.text()]


def _usage_of(doc: str) -> str | None:
    for line in doc.splitlines():
        if line.startswith("Usage: "):
            return line.removeprefix("Usage: ")
    return None
