"""The SDK spoken to as the host would: one socket of a socketpair each."""

import asyncio
import json
import os
import socket
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from stockade_plugin import Plugin, RpcError  # noqa: E402


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


class SdkTest(unittest.TestCase):
    def serve(self):
        host_end, plugin_end = socket.socketpair()
        loop = asyncio.new_event_loop()
        import threading
        thread = threading.Thread(
            target=lambda: loop.run_until_complete(make_plugin().serve(plugin_end)))
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


if __name__ == "__main__":
    unittest.main()
