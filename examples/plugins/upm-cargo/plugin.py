#!/usr/bin/python3
"""The UPM seeds' cargo plugin, as a Stockade per-call plugin: each call runs this script once, in
a sandbox of its own, with the seeds' payload as its one argument. It drives the real cargo against
one registry (`registry`, a sparse index), installing crates' binaries into the plugin's state
directory; the policy lets it reach that registry and nothing else on the network, write only its
state directory and a private /tmp, and execute from that /tmp what cargo builds there (build
scripts, proc macros: `tmp_exec`). What a crate's build script tries is the plugin's, judged by
its policy."""

import asyncio
import json
import os
import re
import subprocess
import sys
import traceback


class PluginOperationError(Exception):
    pass


# `cargo install --list`: "name v1.2.3:" then the binaries, indented.
LISTED = re.compile(r"^(\S+) v(\S+?)(?: \(.*\))?:$")


class CargoPlugin:
    def __init__(self, project_root=".", cache_dir=".cache", policy=None, registry=None,
                 toolchain="/opt/rust"):
        self.project_root = project_root
        self.cache_dir = cache_dir
        self.policy = policy or {}
        self.registry = registry
        self.toolchain = toolchain
        self.root = os.path.join(os.environ["STOCKADE_STATE_DIR"], "cargo")
        # cargo's own home (configuration, the registry's cache) and its builds: in the private
        # /tmp, gone with the call's sandbox. No configuration but this one: not the host's.
        self.env = {
            "PATH": f"{toolchain}/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "LANG": "C.UTF-8",
            "CARGO_HOME": "/tmp/cargo-home",
            "CARGO_TARGET_DIR": "/tmp/target",
            "RUSTC": f"{toolchain}/bin/rustc",
            "CARGO_TERM_COLOR": "never",
            "CARGO_TERM_PROGRESS_WHEN": "never",
            "CARGO_BUILD_JOBS": "1",
        }

    def _configure(self):
        if not self.registry:
            raise PluginOperationError("no registry in init_args")
        home = self.env["CARGO_HOME"]
        os.makedirs(home, exist_ok=True)
        with open(os.path.join(home, "config.toml"), "w") as f:
            f.write('[source.crates-io]\nreplace-with = "upm"\n\n'
                    f'[source.upm]\nregistry = "sparse+{self.registry.rstrip("/")}/"\n')

    def _cargo(self, *args, echo=True):
        done = subprocess.run(
            [os.path.join(self.toolchain, "bin", "cargo"), *args, "--root", self.root],
            env=self.env,
            cwd="/tmp",
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if echo:
            print(done.stdout, end="")
        return done.returncode, done.stdout

    def _installed(self):
        if not os.path.exists(os.path.join(self.root, ".crates.toml")):
            return {}
        code, out = self._cargo("install", "--list", echo=False)
        if code != 0:
            raise PluginOperationError(f"cargo install --list failed (status {code})")
        found = {}
        for line in out.splitlines():
            m = LISTED.match(line)
            if m:
                found[m.group(1)] = m.group(2)
        return found

    async def install(self, package, version_constraint=None):
        if package in self.policy.get("blocked_packages", []):
            raise PluginOperationError(f"{package} is blocked by policy")
        self._configure()
        args = ["install", package]
        if version_constraint:
            args += ["--version", version_constraint]
        code, _ = self._cargo(*args)
        if code != 0:
            raise PluginOperationError(f"cargo install {package} failed (status {code})")
        return {"installed": package, "version": self._installed().get(package)}

    async def uninstall(self, package):
        if package not in self._installed():
            raise PluginOperationError(f"{package} is not installed")
        code, _ = self._cargo("uninstall", package)
        if code != 0:
            raise PluginOperationError(f"cargo uninstall {package} failed (status {code})")
        return {"uninstalled": package}

    async def list_installed(self):
        return [{"name": n, "version": v} for n, v in sorted(self._installed().items())]

    def doctor(self):
        version = subprocess.run(
            [os.path.join(self.toolchain, "bin", "cargo"), "--version"],
            capture_output=True, text=True, env=self.env, cwd="/tmp",
        )
        return {"cargo": version.stdout.strip(), "registry": self.registry, "root": self.root}


ALLOWED = {"CargoPlugin": {"install", "uninstall", "list_installed", "doctor"}}


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
