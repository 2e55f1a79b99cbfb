#!/usr/bin/python3
"""The UPM seeds' pip plugin, as a Stockade per-call plugin: each call runs this script once, in a
sandbox of its own, with the seeds' payload as its one argument. It drives the real pip against
one package index (`index_url`), installing into the plugin's state directory; the policy lets it
reach that index and nothing else on the network, write only its state directory and a private
/tmp, and read none of the host's files but the system's Python."""

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import traceback


class PluginOperationError(Exception):
    pass


# pip, run with one change: urllib3 (which pip carries) probes for IPv6 at import by binding a TCP
# socket to [::1] port 0, and every Stockade policy refuses TCP port 0 (a violation that ends the
# call); telling it the system has no IPv6 skips the probe. The index is reached over IPv4.
PIP_MAIN = (
    "import socket, sys, runpy; socket.has_ipv6 = False; "
    "sys.argv[0] = 'pip'; runpy.run_module('pip', run_name='__main__', alter_sys=True)"
)


def _normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


class PipPlugin:
    def __init__(self, project_root=".", cache_dir=".cache", policy=None, index_url=None):
        self.project_root = project_root
        self.cache_dir = cache_dir
        self.policy = policy or {}
        self.index_url = index_url
        self.site = os.path.join(os.environ["STOCKADE_STATE_DIR"], "site")

    def _pip(self, *args):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            # No configuration file of any kind: only what this plugin passes.
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_INPUT": "1",
        }
        done = subprocess.run(
            [sys.executable, "-c", PIP_MAIN, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # pip's own output is this call's output (the host returns it as data.output).
        print(done.stdout, end="")
        return done.returncode

    def _installed(self):
        found = {}
        if os.path.isdir(self.site):
            for entry in os.listdir(self.site):
                m = re.match(r"(.+)-([^-]+)\.dist-info$", entry)
                if m:
                    found[_normalize(m.group(1))] = (m.group(2), entry)
        return found

    async def install(self, package, version_constraint=None):
        if _normalize(package) in map(_normalize, self.policy.get("blocked_packages", [])):
            raise PluginOperationError(f"{package} is blocked by policy")
        if not self.index_url:
            raise PluginOperationError("no index_url in init_args")
        spec = package + (version_constraint or "")
        os.makedirs(self.site, exist_ok=True)
        code = self._pip(
            "install",
            "--no-cache-dir",
            "--no-build-isolation",
            "--no-deps",
            "--target", self.site,
            "--index-url", self.index_url,
            spec,
        )
        if code != 0:
            raise PluginOperationError(f"pip install {spec} failed (status {code})")
        version, _ = self._installed().get(_normalize(package), (None, None))
        return {"installed": _normalize(package), "version": version}

    async def uninstall(self, package):
        found = self._installed().get(_normalize(package))
        if found is None:
            raise PluginOperationError(f"{package} is not installed")
        info = os.path.join(self.site, found[1])
        with open(os.path.join(info, "RECORD")) as f:
            files = [line.rsplit(",", 2)[0] for line in f if line.strip()]
        for rel in files:
            path = os.path.normpath(os.path.join(self.site, rel))
            if path.startswith(self.site + os.sep) and os.path.isfile(path):
                os.remove(path)
        shutil.rmtree(info, ignore_errors=True)
        # Directories the package left empty.
        for root, dirs, names in os.walk(self.site, topdown=False):
            if root != self.site and not dirs and not names:
                os.rmdir(root)
        return {"uninstalled": _normalize(package)}

    async def list_installed(self):
        return [{"name": n, "version": v} for n, (v, _) in sorted(self._installed().items())]

    def doctor(self):
        import pip

        return {"pip": pip.__version__, "index_url": self.index_url, "site": self.site}


ALLOWED = {"PipPlugin": {"install", "uninstall", "list_installed", "doctor"}}


def main():
    try:
        payload = json.loads(sys.argv[1])
        name = payload["class_name"]
        run = payload["run_args"]
        method = run["method_name"]
        if name not in ALLOWED or method not in ALLOWED[name]:
            raise PluginOperationError(f"{name}.{method} is not allowed")
        plugin = globals()[name](**payload.get("init_args", {}))
        kwargs = dict(run.get("kwargs", {}))
        # The seeds' entrypoint passes `version` on as `version_constraint`.
        if "version" in kwargs:
            kwargs["version_constraint"] = kwargs.pop("version")
        result = getattr(plugin, method)(*run.get("args", []), **kwargs)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        print(json.dumps(result))
    except Exception as e:
        error = {"error": str(e), "type": type(e).__name__, "traceback": traceback.format_exc()}
        print(json.dumps(error), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
