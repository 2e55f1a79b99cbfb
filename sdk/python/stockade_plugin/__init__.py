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
"""

import asyncio
import json
import os
import socket

MAX_MESSAGE_BYTES = 1 << 20

__all__ = ["Plugin", "RpcError", "Context", "MAX_MESSAGE_BYTES"]


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


class Context:
    """What a method can do besides answering: log, and publish events."""

    def __init__(self, plugin):
        self._plugin = plugin
        self.config = plugin.config

    def log(self, level, message):
        self._plugin._send({"jsonrpc": "2.0", "method": "log",
                            "params": {"level": level, "message": message}})

    def publish(self, topic, data):
        self._plugin._send({"jsonrpc": "2.0", "method": "event.publish",
                            "params": {"topic": topic, "data": data}})


class Plugin:
    def __init__(self):
        self._methods = {}
        self._on_initialize = None
        self._writer = None
        self.config = None

    def method(self, name):
        """Decorator: `async def f(params, cx)` answers calls of `name`."""
        def register(f):
            self._methods[name] = f
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
        reader, self._writer = await asyncio.open_unix_connection(
            sock=sock, limit=MAX_MESSAGE_BYTES + 1)
        tasks = set()
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
                if method == "shutdown":
                    await asyncio.gather(*tasks, return_exceptions=True)
                    self._reply(request.get("id"), {})
                    await self._writer.drain()
                    return
                task = asyncio.create_task(self._handle(request, method))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
            self._writer.close()

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
        except RpcError as e:
            reply = _encode({"jsonrpc": "2.0", "id": request.get("id"), "error": e.json()})
        except Exception as e:  # a bug in the method: an error answer, not a dead plugin
            reply = _encode({"jsonrpc": "2.0", "id": request.get("id"),
                             "error": {"code": -32603, "message": f"{type(e).__name__}: {e}"}})
        if "id" in request:
            self._writer.write(reply + b"\n")
            await self._writer.drain()

    def _reply(self, id_, result):
        if id_ is not None:
            self._send({"jsonrpc": "2.0", "id": id_, "result": result})

    def _send(self, message):
        self._writer.write(_encode(message) + b"\n")


def _encode(message):
    """One JSON line's bytes; NaN and infinities are not JSON (ValueError), nor are objects
    json cannot serialize (TypeError)."""
    return json.dumps(message, allow_nan=False).encode()
