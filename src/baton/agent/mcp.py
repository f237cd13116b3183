"""Tools from MCP servers, governed like Python tools.

:meth:`McpServer.stdio` or :meth:`McpServer.http` describes a server; :meth:`McpServer.tools`
mounts each of its tools as a Baton :class:`~baton.tools.Tool`. A call then goes through
the same steps as any other: its arguments are checked against the tool's input schema
before anything leaves the process, policy decides it (MCP's annotations reach Cedar as
``context.tool.read_only`` and ``context.tool.destructive``), it may wait for approval,
and it is retried and journaled::

    accounts = McpServer.stdio("python", ["accounts_server.py"])
    lookup, reset = accounts.tools(only=["lookup_account", "reset_password"])

    @workflow
    def help_customer(ctx: Context, account_id: str) -> str:
        ctx.call(lookup, account_id=account_id)
        return ctx.call(reset, account_id=account_id)

MCP's annotations become what Baton knows of a tool, with the spec's defaults:
``readOnlyHint`` → ``read_only`` (and idempotent: reading twice changes nothing);
``destructiveHint`` → ``destructive``, true unless the tool is read-only or says
otherwise; ``idempotentHint`` → ``idempotent``. They are the server's claims: override
them, and add what the server cannot know (role, resource, cost, timeout, retries), with
``overrides``.

A call returns the tool's ``structuredContent`` when there is some, else the text of its
text contents joined by newlines (a JSON text stays a string), or, when it returned other
contents too, a list with one entry per content: ``{"type": "text", "text": ...}`` or a
summary such as ``{"type": "image", "mimeType": "image/png"}``. A result with ``isError``
raises :class:`McpToolError` carrying the server's message, so the step fails and says why.

Each server has one session, opened on first use and shared by every call from every
thread: a server process is started once, not once per call. Baton's idempotency key
travels in the request's ``_meta`` as ``baton/idempotency_key``, for servers that can use
it. ``close()`` (or ``with server:``) ends the session, as does the interpreter's exit.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import copy
import hashlib
import json
import logging
import re
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Literal, Self, TypedDict, TypeVar, cast
from urllib.parse import urlsplit

import anyio
import httpx2
from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped]
from jsonschema.validators import Draft202012Validator, validator_for  # type: ignore[import-untyped]
from mcp import Client, MCPError, StdioServerParameters
from mcp import types as mt
from mcp.client._transport import ReadStream, TransportStreams
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage
from pydantic import ConfigDict, TypeAdapter
from pydantic_core import PydanticSerializationError

from ..errors import BatonError, ToolValidationError, UsageError
from ..tools import RetryPolicy, Tool

log = logging.getLogger(__name__)
T = TypeVar("T")

IDEMPOTENCY_META = "baton/idempotency_key"
"""The ``_meta`` key of a ``tools/call`` request that carries Baton's idempotency key."""

_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
# NaN and infinities are kept (not turned into null), for McpTool.validate to refuse them.
_JSON_ARGS: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any], config=ConfigDict(ser_json_inf_nan="constants"))
_CLOSE_TIMEOUT = 10.0


class McpUnavailable(BatonError):
    """The server could not be started or reached, or did not answer in time. Nothing was
    sent to it, so trying again is safe."""

    code = "mcp_unavailable"
    retryable = True


class McpConnectionLost(BatonError):
    """The connection broke while a call was in flight, so the call may or may not have
    taken effect. Retried for a tool that is idempotent; for one that is not, the step is in
    doubt, as after a crash mid-call: its ``reconcile`` hook decides, or a person does."""

    code = "mcp_connection_lost"
    retryable = True
    in_doubt = True


class McpToolError(BatonError):
    """The server answered that the call failed (``isError``, or a protocol error). The
    message is the server's; asking again would get the same answer, so it is not retried."""

    code = "mcp_tool_error"


class ToolOptions(TypedDict, total=False):
    """What Baton should know of a mounted tool beyond what its server says; each key
    means what the argument of the same name means to :func:`baton.tool`."""

    role: str
    resource: str | Callable[..., tuple[str, str]]
    cost: Callable[..., float]
    sensitive: Iterable[str]
    timeout: float
    retries: int
    backoff: float
    idempotent: bool
    read_only: bool
    destructive: bool
    compensate: Callable[..., Any]
    reconcile: Callable[..., Any]


@dataclass(frozen=True, eq=False)
class McpServer:
    """An MCP server whose tools Baton may mount. Create with :meth:`stdio` or :meth:`http`.

    Each object keeps its own session and its own list of the server's tools: describe a
    server once and mount its tools from that one object.
    """

    transport: Literal["stdio", "http"]
    target: str = field(repr=False)  # a URL may hold credentials; ``name`` is shown instead
    """The command that starts the server (stdio) or its endpoint's URL (http)."""
    name: str
    """How errors and logs name the server."""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = field(default=None, repr=False)
    """Variables set for the server process, over a minimal environment (``PATH``, ``HOME``, ...)."""
    cwd: str | None = None
    headers: Mapping[str, str] | None = field(default=None, repr=False)
    timeout: float = 30.0
    """Seconds to start or reach the server and list its tools. A call's own limit is its
    tool's ``timeout`` (see ``overrides``)."""
    _link: _Link = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_link", _Link(self))

    @classmethod
    def stdio(cls, command: str, args: Iterable[str] = (), env: Mapping[str, str] | None = None,
              cwd: str | Path | None = None, name: str | None = None, timeout: float = 30.0) -> McpServer:
        """A server Baton starts as a subprocess and talks to over its stdin and stdout."""
        args = tuple(args)
        return cls("stdio", command, name or " ".join((Path(command).name, *args)), args,
                   None if env is None else MappingProxyType(dict(env)), None if cwd is None else str(cwd),
                   timeout=timeout)

    @classmethod
    def http(cls, url: str, headers: Mapping[str, str] | None = None, name: str | None = None,
             timeout: float = 30.0) -> McpServer:
        """A server Baton reaches at ``url`` over streamable HTTP, sending ``headers`` with
        every request (an API key, say)."""
        if name is None:  # the URL without what may be secret in it: credentials, a query
            parts = urlsplit(url)
            name = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
        return cls("http", url, name, headers=None if headers is None else MappingProxyType(dict(headers)),
                   timeout=timeout)

    def tools(self, *, prefix: str | None = None, only: Iterable[str] | None = None,
              overrides: Mapping[str, ToolOptions] | None = None) -> list[McpTool]:
        """Mount the server's tools (those named in ``only``, by their MCP names).

        Baton names a tool ``{prefix}_{name}`` when given a prefix, with any character a
        model provider would refuse replaced by ``_``. ``overrides`` maps an MCP tool name
        to what Baton should know of it besides: ``{"delete_account": {"role": "admin",
        "resource": "Account::{account_id}"}}``.

        Connects on first use (within ``timeout`` seconds) and lists the tools once per
        server object. Raises :class:`McpUnavailable` when the server cannot be started or
        reached, and :class:`~baton.errors.UsageError` for a name the server does not have.
        """
        return self._mount_all({t.name: t for t in self._link.listing()}, prefix, only, overrides)

    def listing(self) -> list[dict[str, Any]]:
        """The server's tools as JSON (what an agent journals before mounting them)."""
        return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in self._link.listing()]

    def tools_from(self, listing: list[dict[str, Any]], *, prefix: str | None = None,
                   only: Iterable[str] | None = None,
                   overrides: Mapping[str, ToolOptions] | None = None) -> list[McpTool]:
        """Mount tools from a :meth:`listing` recorded earlier, without asking the server."""
        listed = [mt.Tool.model_validate(item) for item in listing]
        return self._mount_all({t.name: t for t in listed}, prefix, only, overrides)

    def _mount_all(self, listed: dict[str, mt.Tool], prefix: str | None, only: Iterable[str] | None,
                   overrides: Mapping[str, ToolOptions] | None) -> list[McpTool]:
        overrides = overrides or {}
        if isinstance(only, str):
            only = [only]
        wanted = list(listed) if only is None else list(dict.fromkeys(only))
        unknown = [name for name in (*wanted, *overrides) if name not in listed]
        if unknown:
            raise UsageError(f"MCP server {self.name!r} has no tool {', '.join(map(repr, unknown))}; "
                             f"it has {', '.join(sorted(listed)) or 'none'}")
        mounted = [_mount(self, listed[name], prefix, overrides.get(name, {})) for name in wanted]
        names = [tool.name for tool in mounted]
        clashes = sorted({name for name in names if names.count(name) > 1})
        if clashes:
            raise UsageError(f"tools of MCP server {self.name!r} would share the name {', '.join(clashes)}; "
                             "mount them separately, with other prefixes")
        return mounted

    def close(self) -> None:
        """End the session (and stop a stdio server). A later call opens a new one."""
        self._link.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@dataclass(eq=False)
class McpTool(Tool[..., Any]):
    """A tool of an MCP server, mounted by :meth:`McpServer.tools`. Its arguments are
    checked against the server's input schema (JSON Schema) instead of a signature."""

    server: McpServer = field(kw_only=True)
    remote_name: str = field(kw_only=True)
    """The tool's name on its server; ``name`` is Baton's (prefixed, safe for models)."""
    input_schema: dict[str, Any] = field(kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()  # is_async, wants_key, an ``Any`` result: from the function, which takes **arguments
        try:
            checker = validator_for(self.input_schema, default=Draft202012Validator)
            checker.check_schema(self.input_schema)
        except SchemaError as exc:
            raise UsageError(f"tool {self.remote_name} of MCP server {self.server.name!r} has an invalid input "
                             f"schema: {exc.message}") from None
        self._validator = checker(self.input_schema)

    def json_schema(self) -> dict[str, Any]:
        schema = copy.deepcopy(self.input_schema)
        schema["title"] = self.name
        if self.description:
            schema["description"] = self.description
        return schema

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if args:
            raise ToolValidationError(f"{self.name}() takes keyword arguments only: an MCP tool's arguments "
                                      "have names but no order")
        return kwargs

    def validate(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Check arguments against the input schema. Both values returned are the JSON
        values: that is what the server receives."""
        try:
            values = _JSON_ARGS.dump_python(kwargs, mode="json")
            json.dumps(values, allow_nan=False)
        except (PydanticSerializationError, ValueError, TypeError) as exc:
            raise ToolValidationError(f"invalid arguments for {self.name}: not JSON values ({exc})") from None
        problems = sorted(self._validator.iter_errors(values), key=lambda e: [str(p) for p in e.absolute_path])
        if problems:
            raise ToolValidationError(f"invalid arguments for {self.name}: " + "; ".join(
                f"{'.'.join(str(p) for p in e.absolute_path) or 'arguments'}: {e.message}" for e in problems))
        return values, dict(values)


def _mount(server: McpServer, listed: mt.Tool, prefix: str | None, options: ToolOptions) -> McpTool:
    unknown = sorted(set(options) - ToolOptions.__optional_keys__)
    if unknown:
        raise UsageError(f"unknown option {', '.join(map(repr, unknown))} for tool {listed.name} of MCP server "
                         f"{server.name!r}; the options are {', '.join(sorted(ToolOptions.__optional_keys__))}")
    hints = listed.annotations or mt.ToolAnnotations()
    read_only = options.get("read_only", bool(hints.read_only_hint))
    destructive = options.get("destructive", not read_only and hints.destructive_hint is not False)
    idempotent = options.get("idempotent", read_only or bool(hints.idempotent_hint))
    retry = RetryPolicy(options.get("retries", 0), options.get("backoff", 0.5),
                        give_up_on=() if idempotent else (McpConnectionLost,))
    return McpTool(
        fn=_remote(server, listed.name), name=tool_name(listed.name, prefix), idempotent=idempotent,
        timeout=options.get("timeout"), retry=retry, compensate=options.get("compensate"),
        reconcile=options.get("reconcile"), description=listed.description or listed.title or "",
        role=options.get("role"), resource=options.get("resource"), cost=options.get("cost"),
        sensitive=tuple(options.get("sensitive", ())), read_only=read_only, destructive=destructive,
        server=server, remote_name=listed.name, input_schema=listed.input_schema,
    )


def tool_name(name: str, prefix: str | None = None) -> str:
    """The name Baton gives an MCP tool: one that model providers accept
    (``^[a-zA-Z0-9_-]{1,64}$``). A name too long is cut, with a hash of the whole so that
    two long names stay apart.

    >>> tool_name("notes.add", prefix="crm")
    'crm_notes_add'
    """
    full = f"{prefix}_{name}" if prefix else name
    safe = _UNSAFE.sub("_", full)
    if len(safe) > 64:
        safe = f"{safe[:55]}_{hashlib.sha256(full.encode()).hexdigest()[:8]}"
    return safe


def _remote(server: McpServer, name: str) -> Callable[..., Awaitable[Any]]:
    """The function of a mounted tool: the call runs on the server's session loop; the
    caller's loop only waits for it (and cancelling the wait cancels the call)."""
    link = server._link

    async def call(*, idempotency_key: str, **arguments: Any) -> Any:
        result = await asyncio.wrap_future(link.submit(link.call(name, arguments, idempotency_key)))
        return _value(name, result)

    return call


def _value(name: str, result: mt.CallToolResult) -> Any:
    if result.is_error:
        text = "\n".join(b.text for b in result.content if isinstance(b, mt.TextContent))
        raise McpToolError(text or f"{name} failed and did not say why")
    if result.structured_content is not None:
        return result.structured_content
    if all(isinstance(block, mt.TextContent) for block in result.content):
        return "\n".join(cast(mt.TextContent, block).text for block in result.content)
    return [_summary(block) for block in result.content]


def _summary(block: mt.ContentBlock) -> dict[str, Any]:
    if isinstance(block, mt.TextContent):
        return {"type": "text", "text": block.text}
    if isinstance(block, mt.EmbeddedResource):
        return {"type": block.type, "mimeType": block.resource.mime_type, "uri": str(block.resource.uri)}
    if isinstance(block, mt.ResourceLink):
        return {"type": block.type, "mimeType": block.mime_type, "uri": str(block.uri)}
    return {"type": block.type, "mimeType": block.mime_type}


# -- the session ----------------------------------------------------------------------


@dataclass(eq=False)
class _Session:
    ready: asyncio.Future[Client]
    release: asyncio.Event = field(default_factory=asyncio.Event)
    """Set to close the session in good order."""
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    """Cancelled to abandon a session still starting. (Cancelling its task instead, while
    the SDK stops a server process under a shield, can leave that process running.)"""
    task: asyncio.Task[None] | None = None
    """Kept here because the event loop holds its tasks only weakly."""
    client: Client | None = None
    ended: bool = False
    """The transport is gone: a request sent now would never leave."""


class _Link:
    """The session with one server, held open by a task on an event loop of its own, in a
    daemon thread. A transport (a subprocess's pipes, an HTTP client) belongs to the task
    that opened it, so one task holds it; calls from any thread are run on that loop."""

    def __init__(self, server: McpServer) -> None:
        self.server = server
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._listing: list[mt.Tool] | None = None
        # Used on the loop only:
        self._connecting: asyncio.Lock | None = None
        self._session: _Session | None = None
        self._sessions: set[_Session] = set()
        """Every session not yet ended, including one still starting or winding down."""

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=_serve, args=(self._loop,), daemon=True,
                                                name=f"baton-mcp {self.server.name}")
                self._thread.start()
                _OPEN.add(self)
            return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def listing(self) -> list[mt.Tool]:
        if self._listing is None:
            self._listing = self.submit(self._list()).result()
        return self._listing

    async def _list(self) -> list[mt.Tool]:
        try:
            async with asyncio.timeout(self.server.timeout):
                client = await self._client()
                tools: list[mt.Tool] = []
                cursor: str | None = None
                while True:
                    page = await client.list_tools(cursor=cursor)
                    tools += page.tools
                    cursor = page.next_cursor
                    if cursor is None:
                        return tools
        except TimeoutError:
            raise self._silent() from None
        except MCPError as exc:
            raise McpUnavailable(f"MCP server {self.server.name!r} did not list its tools: {exc.message}") from None

    async def call(self, name: str, arguments: dict[str, Any], key: str) -> mt.CallToolResult:
        client = await self._client()
        meta = cast(mt.RequestParamsMeta, {IDEMPOTENCY_META: key})
        try:
            return await client.call_tool(name, arguments, meta=meta)
        except MCPError as exc:
            if exc.code == mt.CONNECTION_CLOSED:
                raise McpConnectionLost(f"the connection to MCP server {self.server.name!r} broke during the call "
                                        f"to {name}; it may or may not have taken effect") from None
            raise McpToolError(f"MCP server {self.server.name!r} refused the call to {name}: {exc.message}") from None

    async def _client(self) -> Client:
        """The live session, opened (or opened again, if its transport went away) first."""
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            current = self._session
            if current is not None and current.client is not None and not current.ended:
                return current.client
            if current is not None:
                current.release.set()
            session = _Session(asyncio.get_running_loop().create_future())
            self._sessions.add(session)
            session.task = asyncio.create_task(self._hold(session))
            try:
                await asyncio.wait({session.ready}, timeout=self.server.timeout)
            finally:
                if not session.ready.done():  # timed out, or our caller gave up
                    session.ready.cancel()
                    session.scope.cancel()
            if session.ready.cancelled():
                raise self._silent()
            failure = session.ready.exception()
            if failure is not None:
                verb = "start" if self.server.transport == "stdio" else "reach"
                why = self._reason(failure)
                raise McpUnavailable(f"cannot {verb} MCP server {self.server.name!r}: {why}") from None
            session.client = session.ready.result()
            self._session = session
            return session.client

    async def _hold(self, session: _Session) -> None:
        """Open the session, hand it over, and hold it open until it is released."""
        from .. import __version__  # not at the top: baton/__init__.py sets it after its own imports

        info = mt.Implementation(name="baton", version=__version__)
        try:
            with session.scope:
                async with Client(_watched(self._transport(), session), cache=None, client_info=info) as client:
                    if session.ready.done():  # whoever waited gave up meanwhile
                        return
                    session.ready.set_result(client)
                    await session.release.wait()
        except Exception as exc:  # noqa: BLE001 - handed to whoever waits, or logged: this task ends here
            if not session.ready.done():
                session.ready.set_exception(exc)
            elif not session.release.is_set():
                log.warning("the session with MCP server %r ended: %s", self.server.name, self._reason(exc))
        finally:
            session.ended = True
            self._sessions.discard(session)
            if not session.ready.done():
                session.ready.cancel()

    def _transport(self) -> AbstractAsyncContextManager[TransportStreams]:
        server = self.server
        if server.transport == "http":
            return _http(server.target, server.headers or {})
        return stdio_client(StdioServerParameters(
            command=server.target, args=list(server.args), env=None if server.env is None else dict(server.env),
            cwd=server.cwd))

    def _silent(self) -> McpUnavailable:
        return McpUnavailable(f"MCP server {self.server.name!r} did not answer within {self.server.timeout:g}s")

    def _reason(self, exc: BaseException) -> str:
        """Why a session could not be opened (or ended), in one line."""
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = next((e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)), exc.exceptions[0])
        server = self.server
        if server.transport == "stdio" and server.cwd is not None and not Path(server.cwd).is_dir():
            return f"its working directory {server.cwd} does not exist"
        if server.transport == "stdio" and isinstance(exc, FileNotFoundError):
            return f"command {server.target!r} not found"
        if isinstance(exc, MCPError) and exc.code == mt.CONNECTION_CLOSED:
            return "it closed the connection" + (" before answering" if server.transport == "stdio" else "")
        return f"{type(exc).__name__}: {exc}".splitlines()[0]

    def close(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        _OPEN.discard(self)
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=_CLOSE_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - closing goes on regardless
            log.warning("closing the session with MCP server %r: %s", self.server.name, exc)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=_CLOSE_TIMEOUT)

    async def _shutdown(self) -> None:
        self._session = self._connecting = None
        for session in self._sessions:
            session.release.set()
            if not session.ready.done():
                session.scope.cancel()
        # Sessions wind down (a stdio server gets its stdin closed, then a signal if it
        # lingers), and calls still in flight end with them.
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:
            _, stuck = await asyncio.wait(others, timeout=_CLOSE_TIMEOUT)
            for task in stuck:
                task.cancel()


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@asynccontextmanager
async def _http(url: str, headers: Mapping[str, str]) -> AsyncIterator[TransportStreams]:
    # The SDK's own limits (30s; 300s to read a stream the server holds open), plus the headers.
    async with (
        httpx2.AsyncClient(headers=dict(headers), timeout=httpx2.Timeout(30.0, read=300.0)) as http,
        streamable_http_client(url, http_client=http) as streams,
    ):
        yield streams


@asynccontextmanager
async def _watched(transport: AbstractAsyncContextManager[TransportStreams],
                   session: _Session) -> AsyncIterator[TransportStreams]:
    async with transport as (read, write):
        yield _EndWatch(read, session), write


class _EndWatch:
    """A transport's read stream that notes when it ends (a stdio server died, say). A
    request sent after that would never leave, so the next call opens a new session first
    instead of failing; only a call in flight at that moment is in doubt."""

    def __init__(self, inner: ReadStream[SessionMessage | Exception], session: _Session) -> None:
        self._inner = inner
        self._session = session

    async def receive(self) -> SessionMessage | Exception:
        try:
            return await self._inner.receive()
        except BaseException:
            self._session.ended = True
            raise

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self._inner.__anext__()
        except BaseException:
            self._session.ended = True
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        return await self._inner.__aexit__(exc_type, exc, tb)

    def __getattr__(self, name: str) -> Any:  # ``last_context``, which the SDK reads when present
        return getattr(self._inner, name)


_OPEN: weakref.WeakSet[_Link] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Stop the servers still running when the interpreter exits (the threads holding their
    sessions are daemons, which would otherwise be dropped mid-conversation)."""
    for link in list(_OPEN):
        link.close()
