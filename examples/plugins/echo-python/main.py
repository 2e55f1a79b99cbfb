#!/usr/bin/python3
"""A Stockade plugin written from the protocol alone: newline-delimited JSON-RPC 2.0 on the
descriptor named by STOCKADE_RPC_FD (docs/plugins.md)."""

import json
import os
import sys


def handle(method, params):
    if method == "initialize":
        return {"ok": True}
    if method in ("ping", "shutdown"):
        return {}
    if method == "echo":
        return {"text": params["text"]}
    raise LookupError(method)


def main():
    fd = int(os.environ["STOCKADE_RPC_FD"])
    rpc = os.fdopen(fd, "r+b", buffering=0)
    for line in iter(rpc.readline, b""):
        request = json.loads(line)
        reply = {"jsonrpc": "2.0", "id": request.get("id")}
        try:
            reply["result"] = handle(request["method"], request.get("params") or {})
        except LookupError:
            reply["error"] = {"code": -32601, "message": "method not found"}
        rpc.write(json.dumps(reply).encode() + b"\n")
        if request["method"] == "shutdown":
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
