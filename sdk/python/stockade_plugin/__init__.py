"""Write a Stockade plugin in Python: the standard library only.

A plugin is a program the daemon starts in its sandbox with one socket, whose descriptor number
is in STOCKADE_RPC_FD, speaking newline-delimited JSON-RPC 2.0 (docs/plugins.md). This module is
that loop, on asyncio: declare the methods of your plugin.toml and call run().

    from stockade_plugin import Plugin, RpcError

    plugin = Plugin()

    @plugin.method("echo")
    async def echo(params, cx):
        cx.log("info", "echoing")
        return {"text": params["text"]}

    plugin.run()

Methods are coroutines, and calls run concurrently: a slow call does not hold up the next (the
manifest's max_in_flight bounds how many the host lets in). The host checks parameters against
the manifest's schema before a call arrives.

Or as a class whose public methods are the plugin's methods (async or not: a plain method runs in
a worker thread, so a blocking one — a subprocess, a download — never holds up the heartbeat):

    from stockade_plugin import PluginBase, PluginOperationError, serve

    class Pip(PluginBase):
        async def init(self, config):           # `initialize`; raising fails the start
            self.index = config.get("index", "https://pypi.org/simple")

        def install(self, package, version=None):   # {"package": ..., "version": ...}
            self.logger.info("installing %s", package)  # to the host, never to stdout
            if not ok:
                raise PluginOperationError("pip failed", details={"exit": 1})
            self.publish_event("installed", {"package": package})
            return {"installed": package}

    serve(Pip())

A call's params are passed by name (an object) or by position (an array). An exception is
answered as a JSON-RPC error with its type and traceback in `data`: PluginOperationError as 1000,
PluginPolicyViolation as 1001, RpcError as its own code, anything else as -32603.

Events other plugins publish reach the topics the manifest's `subscribe` names (and the
publisher's `publish` shares): `@plugin.on_event("pip.*")` on a function `f(event, cx)`, or
`@on_event("pip.*")` on a method `f(self, event)` of a PluginBase class. `event` has `plugin`
(the publisher), `topic` and `data`. Hooks run one event at a time, in the order the events came,
beside the calls: an async hook on the event loop, a plain one in a thread of the hooks' own (so
a slow hook never takes the calls' threads). At most EVENT_QUEUE events wait; past that they are
dropped and their number logged. A hook that raises is logged to the host, not answered.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import socket
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

MAX_MESSAGE_BYTES = 1 << 20
#: The most one `count` may add (the host refuses more).
MAX_COUNTER_ADD = 1 << 20
#: Log lines sent to the host per second at most (it takes 1000 host messages a second, logs,
#: events and counters together, and counts more as a violation); the rest are dropped and
#: their number sent once the second is over.
LOG_LINES_PER_SEC = 800
#: Events waiting for the hooks at most; the host sends at most 100 a second.
EVENT_QUEUE = 256

__all__ = [
    "Plugin",
    "PluginBase",
    "serve",
    "on_event",
    "Event",
    "EVENT_QUEUE",
    "RpcError",
    "PluginError",
    "PluginOperationError",
    "PluginPolicyViolation",
    "Context",
    "HostLogHandler",
    "MAX_MESSAGE_BYTES",
    "MAX_COUNTER_ADD",
]


class RpcError(Exception):
    """An error a method answers with (codes from -32000 down are the host's)."""

    def __init__(self, code, message, data=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def json(self):
        e = {"code": self.code, "message": self.message}
        if self.data is not None:
            e["data"] = self.data
        return e


class PluginError(Exception):
    """An error of the plugin's own domain, answered with `code`, the message, and `data`
    holding its type, its `details` and the traceback."""

    code = 1099

    def __init__(self, message: str, details: Any = None):
        super().__init__(message)
        self.message = message
        self.details = details


class PluginOperationError(PluginError):
    """The operation failed (a tool exited non-zero, a package was not found): code 1000."""

    code = 1000


class PluginPolicyViolation(PluginError):
    """The plugin refuses what it was asked as against its own rules: code 1001."""

    code = 1001


def _error_of(e: BaseException) -> Dict[str, Any]:
    """The JSON-RPC error an exception of a method is answered with."""
    if isinstance(e, RpcError):
        return e.json()
    data: Dict[str, Any] = {
        "type": type(e).__name__,
        "traceback": "".join(traceback.format_exception(type(e), e, e.__traceback__)),
    }
    if isinstance(e, PluginError):
        if e.details is not None:
            data["details"] = e.details
        return {"code": e.code, "message": e.message, "data": data}
    return {"code": -32603, "message": f"{type(e).__name__}: {e}", "data": data}


class HostLogHandler(logging.Handler):
    """A logging handler whose records go to the host as `log` notifications (`stockade plugin
    logs ID`), from any thread; never to stdout."""

    LEVELS = {"CRITICAL": "error", "ERROR": "error", "WARNING": "warn", "INFO": "info",
              "DEBUG": "debug"}

    def __init__(self, plugin: "Plugin"):
        super().__init__()
        self._plugin = plugin

    _busy = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        # asyncio's own records (a lost socket's write errors among them) would come back here
        # through the very writes they are about; and a record logged while one is sent would
        # recurse.
        if record.name == "asyncio" or record.name.startswith("asyncio."):
            return
        if getattr(self._busy, "on", False):
            return
        self._busy.on = True
        try:
            message = self.format(record)
            level = self.LEVELS.get(record.levelname, "info")
            self._plugin._log(level, message)
        except Exception:  # never into the code that logged
            self.handleError(record)
        finally:
            self._busy.on = False


@dataclass(frozen=True)
class Event:
    """An event another plugin published, as the host delivered it."""

    #: The plugin that published it.
    plugin: str
    topic: str
    data: Any


def topic_matches(pattern: str, topic: str) -> bool:
    """A topic, or a prefix ending in `*` (as the manifest's `subscribe` writes them)."""
    if pattern.endswith("*"):
        return topic.startswith(pattern[:-1])
    return pattern == topic


def on_event(topic: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a method of a PluginBase class: runs it with each event whose topic matches
    `topic` (a topic, or a prefix ending in `*`); async or not, like the plugin's methods. It is
    a hook, not a method the host may call."""
    if not isinstance(topic, str):
        raise TypeError(f"a topic is a string, not {type(topic).__name__}")

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        f._stockade_topics = getattr(f, "_stockade_topics", ()) + (topic,)  # type: ignore
        return f
    return mark


class Context:
    """What a method can do besides answering: log, and publish events."""

    def __init__(self, plugin):
        self._plugin = plugin
        self.config = plugin.config

    def log(self, level, message):
        self._plugin._log(level, message)

    def publish(self, topic, data):
        self._plugin._send_from_any_thread({"jsonrpc": "2.0", "method": "event.publish",
                                            "params": {"topic": topic, "data": data}})

    def count(self, name: str, value: int = 1) -> None:
        """Adds `value` (an int from 0 to 2**20) to the counter `name`, which the manifest's
        `counters` must declare (the host counts an undeclared one as a violation); exported to
        Prometheus by the host. A value out of range is refused here (ValueError)."""
        if type(value) is not int or not 0 <= value <= MAX_COUNTER_ADD:
            raise ValueError(f"a counter adds an int from 0 to {MAX_COUNTER_ADD}, not {value!r}")
        self._plugin._send_from_any_thread({"jsonrpc": "2.0", "method": "metrics.add",
                                            "params": {"name": name, "value": value}})


class Plugin:
    def __init__(self):
        self._methods = {}
        #: (topic pattern, f(event, cx)), async or not.
        self._hooks: List[Tuple[str, Callable[..., Any]]] = []
        self._events: Optional[asyncio.Queue] = None
        self._events_dropped = 0
        self._hooks_stopping = False
        self._on_initialize = None
        self._on_shutdown = None
        self._writer = None
        self._loop = None
        self.config = None
        #: Whether an error's `data` carries the exception's traceback (it may hold what the
        #: exception's messages held; set False to send only the type and details).
        self.send_tracebacks = True
        self._clock = time.monotonic  # the log rate's clock (a test's own in the tests)
        self._log_lock = threading.Lock()
        self._log_window = 0.0
        self._log_sent = 0
        self._log_dropped = 0

    def method(self, name):
        """Decorator: `async def f(params, cx)` answers calls of `name`."""
        def register(f):
            self._methods[name] = f
            return f
        return register

    def on_event(self, topic):
        """Decorator: `f(event, cx)` runs for each event whose topic matches `topic` (a topic,
        or a prefix ending in `*`): on the event loop if async, else in the hooks' thread."""
        if not isinstance(topic, str):
            raise TypeError(f"a topic is a string, not {type(topic).__name__}")

        def register(f):
            self._hooks.append((topic, f))
            return f
        return register

    def on_initialize(self, f):
        """Decorator: `async def f(config)` runs at initialize; raising RpcError fails the start."""
        self._on_initialize = f
        return f

    def run(self):
        """Serves the host's socket (STOCKADE_RPC_FD) until shutdown or its end."""
        fd = os.environ.get("STOCKADE_RPC_FD")
        if fd is None:
            raise SystemExit("STOCKADE_RPC_FD is not set: this program is a Stockade plugin, "
                             "started by the daemon")
        sock = socket.socket(fileno=int(fd))
        asyncio.run(self.serve(sock))

    async def serve(self, sock):
        self._loop = asyncio.get_running_loop()
        reader, self._writer = await asyncio.open_unix_connection(
            sock=sock, limit=MAX_MESSAGE_BYTES + 1)
        tasks = set()
        self._events = asyncio.Queue(EVENT_QUEUE)
        self._events_dropped = 0
        self._hooks_stopping = False
        hooks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stockade-hooks")
        runner = asyncio.create_task(self._run_hooks(hooks))
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError as e:  # over the limit
                    raise ConnectionError("the host sent a message over the size limit") from e
                if not line:
                    return  # the host closed the socket
                try:
                    request = json.loads(line)
                except ValueError:
                    continue  # the host only sends valid JSON
                if not isinstance(request, dict):
                    continue
                method = request.get("method")
                if not isinstance(method, str):
                    continue
                if method == "event" and "id" not in request:
                    try:
                        self._events.put_nowait(request.get("params"))
                    except asyncio.QueueFull:
                        self._events_dropped += 1
                    continue
                if method == "shutdown":
                    await asyncio.gather(*tasks, return_exceptions=True)
                    # The events that came before it (unless the hooks' runner is gone).
                    delivered = asyncio.ensure_future(self._events.join())
                    await asyncio.wait({delivered, runner}, return_when=asyncio.FIRST_COMPLETED)
                    delivered.cancel()
                    if self._on_shutdown is not None:
                        try:
                            await self._on_shutdown()
                        except Exception:  # the plugin ends anyway; say why on stderr
                            traceback.print_exc()
                    self._reply(request.get("id"), {})
                    await self._writer.drain()
                    return
                task = asyncio.create_task(self._handle(request, method))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
            self._hooks_stopping = True
            runner.cancel()
            hooks.shutdown(wait=False)
            self._writer.close()
            # Logs of threads still running go nowhere from here (not to a closed loop).
            self._loop = None

    async def _handle(self, request, method):
        params = request.get("params")
        try:
            if method == "initialize":
                self.config = (params or {}).get("config")
                if self._on_initialize is not None:
                    await self._on_initialize(self.config)
                result = {}
            elif method == "ping":
                result = {}
            elif method in self._methods:
                result = await self._methods[method](params, Context(self))
            else:
                raise RpcError(-32601, f"no method `{method}`")
            reply = _encode({"jsonrpc": "2.0", "id": request.get("id"), "result": result})
            if len(reply) > MAX_MESSAGE_BYTES:
                raise RpcError(-32603, "the result is larger than a message may be")
        except Exception as e:  # an error answer (a bug in the method too), not a dead plugin
            reply = self._error_reply(request.get("id"), e)
        if "id" in request:
            self._writer.write(reply + b"\n")
            await self._writer.drain()

    async def _run_hooks(self, thread: ThreadPoolExecutor) -> None:
        """The events, one at a time in their order, to the hooks of their topics."""
        loop = asyncio.get_running_loop()
        while True:
            params = await self._events.get()
            try:
                await self._deliver(params, loop, thread)
            except BaseException as e:  # a hook's (one cancelled, or worse), not the runner's end
                if self._hooks_stopping:
                    raise
                self._log("error", f"a hook ended with {type(e).__name__}")
            finally:
                self._events.task_done()
            if self._events_dropped and self._events.empty():
                n, self._events_dropped = self._events_dropped, 0
                self._log("warning",
                          f"{n} events dropped: the hooks fell {self._events.maxsize} behind")

    async def _deliver(self, params, loop, thread) -> None:
        """An `event` notification to each hook whose topic matches; a hook's exception is the
        plugin's bug, told to the host as a log line."""
        if not isinstance(params, dict) or not isinstance(params.get("topic"), str):
            return
        event = Event(plugin=str(params.get("plugin", "")), topic=params["topic"],
                      data=params.get("data"))
        for pattern, hook in self._hooks:
            if not topic_matches(pattern, event.topic):
                continue
            try:
                if inspect.iscoroutinefunction(hook):
                    await hook(event, Context(self))
                else:
                    result = await loop.run_in_executor(thread, hook, event, Context(self))
                    if inspect.isawaitable(result):
                        await result
            except Exception as e:
                self._log("error", f"the hook for {pattern} failed on {event.topic}: "
                          f"{type(e).__name__}: {e}")

    def _error_reply(self, id_, e: BaseException) -> bytes:
        """The error answer's line: whole when it can be, else without the traceback, else its
        code, its message cut short and its type — always something the host can read."""
        error = _error_of(e)
        if not self.send_tracebacks:
            error.get("data", {}).pop("traceback", None)
        try:
            reply = _encode({"jsonrpc": "2.0", "id": id_, "error": error})
            if len(reply) <= MAX_MESSAGE_BYTES:
                return reply
            error.get("data", {}).pop("traceback", None)
            reply = _encode({"jsonrpc": "2.0", "id": id_, "error": error})
            if len(reply) <= MAX_MESSAGE_BYTES:
                return reply
        except (TypeError, ValueError):  # details or data that are not JSON
            pass
        short = {"code": error["code"] if isinstance(error.get("code"), int) else -32603,
                 "message": str(error.get("message", ""))[:4096],
                 "data": {"type": type(e).__name__, "truncated": True}}
        return _encode({"jsonrpc": "2.0", "id": id_, "error": short})

    def _log(self, level: str, message: str) -> None:
        """A `log` notification, at most LOG_LINES_PER_SEC a second (the rest counted and told)."""
        with self._log_lock:
            now = self._clock()
            if now - self._log_window >= 1.0:
                dropped, self._log_dropped = self._log_dropped, 0
                self._log_window, self._log_sent = now, 0
                if dropped:
                    self._log_sent += 1
                    self._send_from_any_thread({
                        "jsonrpc": "2.0", "method": "log",
                        "params": {"level": "warn",
                                   "message": f"{dropped} log lines dropped (over "
                                              f"{LOG_LINES_PER_SEC} a second)"}})
            if self._log_sent >= LOG_LINES_PER_SEC:
                self._log_dropped += 1
                return
            self._log_sent += 1
        self._send_from_any_thread({"jsonrpc": "2.0", "method": "log",
                                    "params": {"level": level, "message": message}})

    def _reply(self, id_, result):
        if id_ is not None:
            self._send({"jsonrpc": "2.0", "id": id_, "result": result})

    def _send(self, message):
        self._writer.write(_encode(message) + b"\n")

    def _send_from_any_thread(self, message):
        """`_send` from the loop's thread or a worker's (a plain method runs in one)."""
        loop, writer = self._loop, self._writer
        if loop is None or writer is None or writer.is_closing():
            return  # not serving (any more): nobody to tell
        line = _encode(message) + b"\n"
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        try:
            if running is loop:
                writer.write(line)
            else:
                loop.call_soon_threadsafe(writer.write, line)
        except RuntimeError:  # the loop closed meanwhile
            pass


class PluginBase:
    """A plugin as a class: each public method (a name without a leading `_`) defined by the
    subclass is a method of the plugin, called with the call's params by name (an object) or by
    position (an array). `init(config)` runs at `initialize` and `shutdown()` at `shutdown`
    (either may be async). Serve an instance with `serve(instance)`."""

    name: str = ""
    version: str = ""
    #: Whether an error's `data` carries the exception's traceback.
    send_tracebacks: bool = True

    def __init__(self) -> None:
        self._plugin: Optional[Plugin] = None
        self.config: Any = None
        self.logger = logging.getLogger(f"stockade.plugin.{type(self).__name__}")

    def init(self, config: Any) -> Any:
        """Runs at `initialize` with the plugin's configuration; raising fails the start."""
        return None

    def shutdown(self) -> Any:
        """Runs at `shutdown`, after every call has been answered."""
        return None

    def publish_event(self, topic: str, data: Any) -> None:
        """Publishes an event to the host's stream (`stockade events`), from any thread."""
        if self._plugin is not None:
            Context(self._plugin).publish(topic, data)

    def count(self, name: str, value: int = 1) -> None:
        """Adds to a counter the manifest's `counters` declares (`install_success_total`), from
        any thread; the host exports it as stockade_plugin_counter_total{plugin_id, name}."""
        if self._plugin is not None:
            Context(self._plugin).count(name, value)

    def rpc_methods(self) -> Dict[str, Callable[..., Any]]:
        """The plugin's methods by name: the subclass's public functions."""
        own = set(dir(PluginBase))
        methods = {}
        seen = set()
        for cls in type(self).__mro__:
            if cls is PluginBase or cls is object:
                continue
            for name, value in vars(cls).items():
                # The class nearest in the order decides: a method a subclass made a hook (or
                # anything else) is not a method of the plugin.
                if name.startswith("_") or name in own or name in seen:
                    continue
                seen.add(name)
                if inspect.isfunction(value) and not hasattr(value, "_stockade_topics"):
                    methods[name] = getattr(self, name)
        return methods


async def _call(f: Callable[..., Any], params: Any) -> Any:
    """`f` with the call's params: by name, by position, or none; a plain function in a worker
    thread. Params `f` cannot take answer -32602 (the host's schema let them by)."""
    if isinstance(params, dict):
        args, kwargs = (), params
    elif isinstance(params, list):
        args, kwargs = tuple(params), {}
    elif params is None:
        args, kwargs = (), {}
    else:
        raise RpcError(-32602, "params must be an object or an array")
    try:
        inspect.signature(f).bind(*args, **kwargs)
    except TypeError as e:
        raise RpcError(-32602, f"invalid params: {e}") from None
    if inspect.iscoroutinefunction(f):
        return await f(*args, **kwargs)
    result = await asyncio.to_thread(f, *args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


def _as_method(f: Callable[..., Any]) -> Callable[[Any, Context], Awaitable[Any]]:
    async def method(params: Any, cx: Context) -> Any:
        return await _call(f, params)
    return method


def _as_hook(f: Callable[..., Any]) -> Callable[[Event, Context], Any]:
    """A class's hook `f(event)` as the plugin's `hook(event, cx)`, async if `f` is."""
    if inspect.iscoroutinefunction(f):
        async def async_hook(event: Event, cx: Context) -> Any:
            return await f(event)
        return async_hook

    def hook(event: Event, cx: Context) -> Any:
        return f(event)
    return hook


def plugin_of(instance: PluginBase) -> Plugin:
    """The `Plugin` that serves `instance`: its methods, `init`, `shutdown`, and its logger
    (and the root logger's records) sent to the host."""
    plugin = Plugin()
    plugin.send_tracebacks = instance.send_tracebacks
    instance._plugin = plugin
    for name, f in instance.rpc_methods().items():
        plugin._methods[name] = _as_method(f)
    seen = set()
    for cls in type(instance).__mro__:
        for name, value in vars(cls).items():
            if name in seen:
                continue  # overridden in a subclass: that one decides
            seen.add(name)
            for topic in getattr(value, "_stockade_topics", ()):
                plugin._hooks.append((topic, _as_hook(getattr(instance, name))))

    async def initialize(config: Any) -> None:
        instance.config = config
        await _call(instance.init, [config])

    async def shutdown() -> None:
        await _call(instance.shutdown, None)

    plugin._on_initialize = initialize
    plugin._on_shutdown = shutdown
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, HostLogHandler)]:
        root.removeHandler(h)  # an earlier plugin's, in this process
    root.addHandler(HostLogHandler(plugin))
    if root.level == logging.WARNING:  # the default: let the plugin's info through
        root.setLevel(logging.INFO)
    return plugin


def serve(instance: PluginBase) -> None:
    """Serves `instance` on the host's socket (STOCKADE_RPC_FD) until shutdown."""
    plugin_of(instance).run()


def _encode(message):
    """One JSON line's bytes; NaN and infinities are not JSON (ValueError), nor are objects
    json cannot serialize (TypeError). UTF-8 as it is, a lone surrogate (a file name decoded
    with surrogateescape) replaced: the host reads strict JSON, where an escaped lone surrogate
    is an error."""
    return json.dumps(message, allow_nan=False, ensure_ascii=False).encode("utf-8", "replace")
