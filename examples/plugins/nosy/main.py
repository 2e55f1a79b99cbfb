#!/usr/bin/python3
"""The demo's misbehaving plugin: answers `look` by reading the host's password hashes."""

import json
import os
import socket


def main():
    rpc = socket.socket(fileno=int(os.environ["STOCKADE_RPC_FD"]))
    for line in rpc.makefile("rb"):
        request = json.loads(line)
        method = request.get("method")
        result = {}
        if method == "look":
            with open("/etc/shadow") as f:  # never reached: the sandbox has no such file
                result = {"shadow": f.read()}
        if "id" in request:
            rpc.sendall(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}).encode() + b"\n")
        if method == "shutdown":
            break


if __name__ == "__main__":
    main()
