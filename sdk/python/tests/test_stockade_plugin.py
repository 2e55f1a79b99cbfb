"""The SDK spoken to as the host would: one socket of a socketpair each."""

import asyncio
import json
import logging
import os
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from stockade_plugin import (  # noqa: E402
    Event, Plugin, PluginBase, PluginOperationError, PluginPolicyViolation, RpcError, on_event,
    plugin_of)


def make_plugin():
    plugin = Plugin()

    @plugin.on_initialize
    async def init(config):
        if config and config.get("fail"):
            raise RpcError(1, "told to fail")

    @plugin.method("echo")
    async def echo(params, cx):
        cx.log("info", "echoing")
        cx.publish("echoed", {"len": len(params["text"])})
        return {"text": params["text"], "config": cx.config}

    @plugin.method("slow")
    async def slow(params, cx):
        await asyncio.sleep(0.2)
        return "slow"

    @plugin.method("bug")
    async def bug(params, cx):
        return 1 / 0

    @plugin.method("nan")
    async def nan(params, cx):
        return float("nan")

    @plugin.method("big")
    async def big(params, cx):
        return "x" * (1 << 20)

    return plugin


class Host:
    def __init__(self, sock, loop):
        self.loop = loop
        self.sock = sock
        self.file = sock.makefile("rb")
        self.pending = []

    def send(self, id_, method, params=None):
        self.sock.sendall(json.dumps(
            {"jsonrpc": "2.0", "id": id_, "method": method, "params": params}).encode() + b"\n")

    def reply(self, id_):
        """Lines until the reply to id_; notifications and other replies are kept aside."""
        for i, m in enumerate(self.pending):
            if m.get("id") == id_:
                return self.pending.pop(i)
        while True:
            line = self.file.readline()
            if not line:
                raise AssertionError("closed")
            m = json.loads(line)
            assert m["jsonrpc"] == "2.0"
            if m.get("id") == id_:
                return m
            self.pending.append(m)


class Upm(PluginBase):
    """A plugin in the UPM seeds' shape: async and blocking methods, their errors, logging."""

    def __init__(self):
        super().__init__()
        self.installed = {}
        self.stopped = False
        self.seen = []

    async def init(self, config):
        if config.get("fail"):
            raise PluginOperationError("cannot start", details={"why": "told to"})

    async def list_installed(self):
        return sorted(self.installed)

    def install(self, package, version=None):
        time.sleep(0.3)  # a blocking tool: runs in a worker thread
        if package == "forbidden":
            raise PluginPolicyViolation("not on this plugin's list")
        if package == "missing":
            raise PluginOperationError("no such package", details={"exit": 1})
        self.installed[package] = version
        self.logger.info("installed %s", package)
        self.publish_event("installed", {"package": package})
        self.count("install_success_total")
        return {"package": package, "version": version}

    def chatty(self, lines):
        for i in range(lines):
            self.logger.info("line %d", i)
        return lines

    def bad_details(self):
        raise PluginOperationError("details that are not JSON", details={"path": object()})

    def huge_details(self):
        raise PluginOperationError("x" * 10000, details="y" * (2 << 20))

    def odd_name(self):
        name = b"caf\xe9".decode("utf-8", "surrogateescape")  # a file name that is not UTF-8
        self.logger.warning("skipping %s", name)
        return {"name": name}

    def count_badly(self):
        self.count("install_success_total", True)

    def shutdown(self):
        self.stopped = True

    def _helper(self):  # private: not a method of the plugin
        return "hidden"

    @on_event("npm.*")
    def npm_changed(self, event):  # a hook, not a method; blocking ones run in a thread
        self.seen.append(event)
        if event.data == "boom":
            raise ValueError("boom")

    @on_event("pip.installed")
    async def pip_installed(self, event):
        self.seen.append(event)


class SdkTest(unittest.TestCase):
    def serve(self, plugin=None):
        host_end, plugin_end = socket.socketpair()
        loop = asyncio.new_event_loop()
        import threading
        plugin = plugin or make_plugin()
        thread = threading.Thread(
            target=lambda: loop.run_until_complete(plugin.serve(plugin_end)))
        thread.start()
        return Host(host_end, loop), thread

    def end(self, host, thread):
        thread.join(5)
        self.assertFalse(thread.is_alive())
        host.loop.close()
        host.file.close()
        host.sock.close()

    def test_declared_methods_answer_and_the_rest_are_refused(self):
        host, thread = self.serve()
        host.send(1, "initialize", {"config": {"greeting": "hi"}})
        self.assertEqual(host.reply(1)["result"], {})
        host.send(2, "echo", {"text": "abc"})
        r = host.reply(2)
        self.assertEqual(r["result"], {"text": "abc", "config": {"greeting": "hi"}})
        notes = [m for m in host.pending if "id" not in m]
        self.assertEqual([n["method"] for n in notes], ["log", "event.publish"])
        self.assertEqual(notes[1]["params"], {"topic": "echoed", "data": {"len": 3}})
        host.send(3, "shout", {})
        self.assertEqual(host.reply(3)["error"]["code"], -32601)
        host.send(4, "bug", {})
        e = host.reply(4)["error"]
        self.assertEqual((e["code"], e["message"]), (-32603, "ZeroDivisionError: division by zero"))
        # Results that are not JSON, or too large for a message: answered as errors, never sent.
        host.send(41, "nan", {})
        self.assertEqual(host.reply(41)["error"]["code"], -32603)
        host.send(42, "big", {})
        e = host.reply(42)["error"]
        self.assertEqual((e["code"], e["message"]),
                         (-32603, "the result is larger than a message may be"))
        host.sock.sendall(b"[1, 2]\n")  # not an object: ignored
        host.send(5, "ping")
        self.assertEqual(host.reply(5)["result"], {})
        # Calls run concurrently: the ping sent after a slow call is answered first.
        host.send(6, "slow", {})
        host.send(7, "ping")
        first = json.loads(host.file.readline())
        self.assertEqual(first["id"], 7)
        self.assertEqual(host.reply(6)["result"], "slow")
        host.send(8, "shutdown")
        self.assertEqual(host.reply(8)["result"], {})
        self.end(host, thread)

    def test_initialize_can_fail_and_a_closed_socket_ends_the_loop(self):
        host, thread = self.serve()
        host.send(1, "initialize", {"config": {"fail": True}})
        self.assertEqual(host.reply(1)["error"], {"code": 1, "message": "told to fail"})
        host.sock.shutdown(socket.SHUT_RDWR)
        self.end(host, thread)

    def test_a_class_is_a_plugin(self):
        upm = Upm()
        host, thread = self.serve(plugin_of(upm))
        host.send(1, "initialize", {"config": {"index": "http://127.0.0.1:1/simple"}})
        self.assertEqual(host.reply(1)["result"], {})
        self.assertEqual(upm.config, {"index": "http://127.0.0.1:1/simple"})
        # By name and by position; a blocking method does not hold up a ping.
        host.send(2, "install", {"package": "requests", "version": "2.0"})
        host.send(3, "ping")
        self.assertEqual(json.loads(host.file.readline())["id"], 3)
        self.assertEqual(host.reply(2)["result"], {"package": "requests", "version": "2.0"})
        host.send(4, "install", ["six"])
        self.assertEqual(host.reply(4)["result"], {"package": "six", "version": None})
        host.send(5, "list_installed", {})
        self.assertEqual(host.reply(5)["result"], ["requests", "six"])
        # Logging and events from the worker thread reach the host, in order.
        notes = [m for m in host.pending if "id" not in m]
        self.assertEqual([n["method"] for n in notes],
                         ["log", "event.publish", "metrics.add"] * 2)
        self.assertEqual(notes[0]["params"], {"level": "info", "message": "installed requests"})
        self.assertEqual(notes[2]["params"], {"name": "install_success_total", "value": 1})
        self.assertEqual(notes[4]["params"], {"topic": "installed", "data": {"package": "six"}})
        # The seed's exceptions, with their type, details and traceback.
        host.send(6, "install", {"package": "missing"})
        e = host.reply(6)["error"]
        self.assertEqual((e["code"], e["message"]), (1000, "no such package"))
        self.assertEqual(e["data"]["type"], "PluginOperationError")
        self.assertEqual(e["data"]["details"], {"exit": 1})
        self.assertIn("raise PluginOperationError", e["data"]["traceback"])
        host.send(7, "install", {"package": "forbidden"})
        e = host.reply(7)["error"]
        self.assertEqual((e["code"], e["data"]["type"]), (1001, "PluginPolicyViolation"))
        # Params the method cannot take, a private name, a base-class name: refused.
        host.send(8, "install", {"pkg": "x"})
        self.assertEqual(host.reply(8)["error"]["code"], -32602)
        host.send(9, "_helper", {})
        self.assertEqual(host.reply(9)["error"]["code"], -32601)
        host.send(10, "publish_event", {"topic": "t", "data": 1})
        self.assertEqual(host.reply(10)["error"]["code"], -32601)
        host.send(11, "shutdown")
        self.assertEqual(host.reply(11)["result"], {})
        self.end(host, thread)
        self.assertTrue(upm.stopped)

    def test_what_a_plugin_sends_stays_within_the_protocol(self):
        upm = Upm()
        plugin = plugin_of(upm)
        # The rate's clock is the test's: an emulated machine may take seconds for the flood.
        now = [1000.0]
        plugin._clock = lambda: now[0]
        host, thread = self.serve(plugin)
        host.send(1, "initialize", {"config": {}})
        host.reply(1)
        # A flood of logs: at most LOG_LINES_PER_SEC a second reach the host, then the count.
        host.send(2, "chatty", {"lines": 1000})
        self.assertEqual(host.reply(2)["result"], 1000)
        logs = [m for m in host.pending if m.get("method") == "log"]
        self.assertEqual(len(logs), 800)
        host.pending.clear()
        now[0] += 1.5
        host.send(3, "chatty", {"lines": 1})
        host.reply(3)
        logs = [m["params"] for m in host.pending if m.get("method") == "log"]
        self.assertEqual(logs, [{"level": "warn", "message": "200 log lines dropped (over 800 a second)"},
                                {"level": "info", "message": "line 0"}])
        host.pending.clear()
        # Errors whose details are not JSON, or too large: still answered, short.
        host.send(4, "bad_details", {})
        e = host.reply(4)["error"]
        self.assertEqual((e["code"], e["message"]), (1000, "details that are not JSON"))
        self.assertEqual(e["data"], {"type": "PluginOperationError", "truncated": True})
        host.send(5, "huge_details", {})
        e = host.reply(5)["error"]
        self.assertEqual((e["code"], len(e["message"])), (1000, 4096))
        # A lone surrogate never reaches the host as an escape strict JSON refuses.
        host.sock.settimeout(5)
        host.send(6, "odd_name", {})
        raw = []
        while True:
            line = host.file.readline()
            raw.append(line)
            if json.loads(line).get("id") == 6:
                break
        for line in raw:
            line.decode("utf-8")  # strict
            self.assertNotIn(b"\\ud", line)
        # A counter's value is checked before it is sent.
        host.send(7, "count_badly", {})
        e = host.reply(7)["error"]
        self.assertEqual((e["code"], e["data"]["type"]), (-32603, "ValueError"))
        host.send(8, "shutdown")
        host.reply(8)
        self.end(host, thread)
        # After the end, logging goes nowhere and raises nothing.
        logging.getLogger("after").warning("the plugin has stopped")
        upm.publish_event("late", {})

    def test_events_reach_the_hooks_of_their_topics(self):
        upm = Upm()
        host, thread = self.serve(plugin_of(upm))
        host.send(1, "initialize", {"config": {}})
        self.assertEqual(host.reply(1)["result"], {})

        def event(topic, data):
            host.sock.sendall(json.dumps({"jsonrpc": "2.0", "method": "event", "params": {
                "plugin": "other", "topic": topic, "data": data}}).encode() + b"\n")
        event("npm.installed", {"package": "left-pad"})
        event("pip.installed", {"package": "six"})
        event("pip.removed", {"package": "six"})  # no hook: nothing
        event("npm.removed", "boom")  # the hook raises: logged, the plugin goes on
        host.send(2, "ping")
        self.assertEqual(host.reply(2)["result"], {})
        deadline = time.monotonic() + 5
        while len(upm.seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        # In the order they came, a plain hook and an async one alike.
        self.assertEqual(upm.seen, [
            Event("other", "npm.installed", {"package": "left-pad"}),
            Event("other", "pip.installed", {"package": "six"}),
            Event("other", "npm.removed", "boom"),
        ])
        # A hook is not a method the host may call; nothing answered the notifications.
        host.send(3, "npm_changed", {"event": None})
        self.assertEqual(host.reply(3)["error"]["code"], -32601)
        host.send(4, "shutdown")
        self.assertEqual(host.reply(4)["result"], {})
        self.end(host, thread)
        self.assertFalse([m for m in host.pending if "id" in m])
        logs = [m["params"] for m in host.pending if m.get("method") == "log"]
        self.assertEqual(logs, [{"level": "error", "message":
                                 "the hook for npm.* failed on npm.removed: ValueError: boom"}])

    def test_hooks_take_events_in_order_and_drop_past_the_queue(self):
        import stockade_plugin
        plugin = Plugin()
        seen = []
        gate, started = threading.Event(), threading.Event()

        @plugin.on_event("*")
        def slow(event, cx):  # a plain function: in the hooks' thread, not the loop
            started.set()
            gate.wait(5)
            seen.append(event.data)

        old, stockade_plugin.EVENT_QUEUE = stockade_plugin.EVENT_QUEUE, 4
        try:
            host, thread = self.serve(plugin)
            def event(i):
                host.sock.sendall(json.dumps({"jsonrpc": "2.0", "method": "event", "params": {
                    "plugin": "p", "topic": "t", "data": i}}).encode() + b"\n")
            event(0)
            self.assertTrue(started.wait(5))
            for i in range(1, 20):
                event(i)
            # The calls are not held up by the hook that waits.
            host.send(1, "ping")
            self.assertEqual(host.reply(1)["result"], {})
            gate.set()
            host.send(2, "shutdown")  # answered once the queued events were delivered
            self.assertEqual(host.reply(2)["result"], {})
            self.end(host, thread)
        finally:
            stockade_plugin.EVENT_QUEUE = old
        # The first went to the hook at once, four waited, the rest were dropped and told.
        self.assertEqual(seen, [0, 1, 2, 3, 4])
        logs = [m["params"] for m in host.pending if m.get("method") == "log"]
        self.assertEqual(logs, [{"level": "warning",
                                 "message": "15 events dropped: the hooks fell 4 behind"}])

    def test_a_hook_that_ends_badly_does_not_end_the_hooks(self):
        plugin = Plugin()
        seen = []

        @plugin.on_event("t")
        async def odd(event, cx):
            if event.data == "cancel":
                raise asyncio.CancelledError()  # as an awaited task cancelled elsewhere would
            if event.data == "exit":
                raise SystemExit(3)
            seen.append(event.data)

        with self.assertRaises(TypeError):
            plugin.on_event(["t"])
        host, thread = self.serve(plugin)
        for data in ["cancel", "exit", "after"]:
            host.sock.sendall(json.dumps({"jsonrpc": "2.0", "method": "event", "params": {
                "plugin": "p", "topic": "t", "data": data}}).encode() + b"\n")
        host.send(1, "shutdown")  # answered: the runner lived on and delivered "after"
        self.assertEqual(host.reply(1)["result"], {})
        self.end(host, thread)
        self.assertEqual(seen, ["after"])
        logs = [m["params"]["message"] for m in host.pending if m.get("method") == "log"]
        self.assertEqual(logs, ["a hook ended with CancelledError",
                                "a hook ended with SystemExit"])

    def test_a_method_a_subclass_made_a_hook_is_not_callable(self):
        class Base(PluginBase):
            def refresh(self):
                return "refreshed"

        class Child(Base):
            @on_event("index.changed")
            def refresh(self, event):
                pass

        self.assertEqual(set(Base().rpc_methods()), {"refresh"})
        self.assertEqual(set(Child().rpc_methods()), set())

    def test_tracebacks_can_be_left_out(self):
        upm = Upm()
        upm.send_tracebacks = False
        host, thread = self.serve(plugin_of(upm))
        host.send(1, "install", {"package": "missing"})
        e = host.reply(1)["error"]
        self.assertEqual(e["data"], {"type": "PluginOperationError", "details": {"exit": 1}})
        host.sock.shutdown(socket.SHUT_RDWR)
        self.end(host, thread)

    def test_a_class_that_fails_to_start_says_why(self):
        host, thread = self.serve(plugin_of(Upm()))
        host.send(1, "initialize", {"config": {"fail": True}})
        e = host.reply(1)["error"]
        self.assertEqual((e["code"], e["message"]), (1000, "cannot start"))
        self.assertEqual(e["data"]["details"], {"why": "told to"})
        host.sock.shutdown(socket.SHUT_RDWR)
        self.end(host, thread)


if __name__ == "__main__":
    unittest.main()
