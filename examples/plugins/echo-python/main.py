#!/usr/bin/python3
"""A Stockade plugin written from the protocol alone: newline-delimited JSON-RPC 2.0 on the
socket whose descriptor is in STOCKADE_RPC_FD (docs/plugins.md)."""

import json
import os
import socket
import sys


def handle(method, params):
    if method in ("initialize", "ping", "shutdown"):
        return {}
    if method == "echo":
        if not isinstance(params, dict) or not isinstance(params.get("text"), str):
            raise ValueError("echo takes {\"text\": string}")
        return {"text": params["text"]}
    raise LookupError(method)


def main():
    rpc = socket.socket(fileno=int(os.environ["STOCKADE_RPC_FD"]))
    for line in rpc.makefile("rb"):
        request = json.loads(line)
        method = request.get("method")
        try:
            reply = {"result": handle(method, request.get("params"))}
        except LookupError:
            reply = {"error": {"code": -32601, "message": f"no method {method}"}}
        except ValueError as e:
            reply = {"error": {"code": -32602, "message": str(e)}}
        if "id" in request:  # a notification gets no answer
            reply.update(jsonrpc="2.0", id=request["id"])
            rpc.sendall(json.dumps(reply).encode() + b"\n")
        if method == "shutdown":
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
