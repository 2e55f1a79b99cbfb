#!/usr/bin/python3
"""The UPM seeds' npm plugin, as a Stockade per-call plugin: each call runs this script once, in a
sandbox of its own, with the seeds' payload as its one argument. It drives the real npm against
one registry (`registry`), installing into the plugin's state directory; the policy lets it reach
that registry and nothing else on the network, and write only its state directory and a private
/tmp. npm runs packages' install scripts: what they try is the plugin's, judged by its policy."""

import asyncio
import json
import os
import subprocess
import sys
import traceback


class PluginOperationError(Exception):
    pass


# npm's environment: only what this plugin passes — no user or global configuration file (npm
# would read /usr/etc/npmrc, a host file), its cache in the private /tmp.
NPM_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    "npm_config_userconfig": "/tmp/npmrc",
    "npm_config_globalconfig": "/tmp/npmrc-global",
    "npm_config_cache": "/tmp/npm-cache",
    "npm_config_update_notifier": "false",
    "npm_config_fund": "false",
    "npm_config_audit": "false",
}


class NpmPlugin:
    def __init__(self, project_root=".", cache_dir=".cache", policy=None, registry=None):
        self.project_root = project_root
        self.cache_dir = cache_dir
        self.policy = policy or {}
        self.registry = registry
        self.prefix = os.path.join(os.environ["STOCKADE_STATE_DIR"], "npm")

    def _npm(self, *args):
        done = subprocess.run(
            ["npm", *args, "--prefix", self.prefix, "--registry", self.registry],
            env=NPM_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        print(done.stdout, end="")
        return done.returncode

    def _installed(self):
        root = os.path.join(self.prefix, "node_modules")
        found = {}
        if not os.path.isdir(root):
            return found
        names = []
        for name in os.listdir(root):
            if name.startswith("@"):  # a scope: its packages are one level down
                scope = os.path.join(root, name)
                if os.path.isdir(scope):
                    names += [f"{name}/{sub}" for sub in os.listdir(scope)]
            elif not name.startswith("."):
                names.append(name)
        for name in names:
            try:
                with open(os.path.join(root, name, "package.json")) as f:
                    found[name] = json.load(f).get("version")
            except (OSError, ValueError):
                pass
        return found

    async def install(self, package, version_constraint=None):
        if package in self.policy.get("blocked_packages", []):
            raise PluginOperationError(f"{package} is blocked by policy")
        if not self.registry:
            raise PluginOperationError("no registry in init_args")
        os.makedirs(self.prefix, exist_ok=True)
        spec = f"{package}@{version_constraint}" if version_constraint else package
        # Saved to the prefix's package.json: npm prunes what it does not list, so a package
        # installed without saving would go at the next install.
        code = self._npm("install", spec)
        if code != 0:
            raise PluginOperationError(f"npm install {spec} failed (status {code})")
        return {"installed": package, "version": self._installed().get(package)}

    async def uninstall(self, package):
        if package not in self._installed():
            raise PluginOperationError(f"{package} is not installed")
        code = self._npm("uninstall", package)
        if code != 0:
            raise PluginOperationError(f"npm uninstall {package} failed (status {code})")
        return {"uninstalled": package}

    async def list_installed(self):
        return [{"name": n, "version": v} for n, v in sorted(self._installed().items())]

    def doctor(self):
        version = subprocess.run(["npm", "--version"], capture_output=True, text=True, env=NPM_ENV)
        return {"npm": version.stdout.strip(), "registry": self.registry, "prefix": self.prefix}


ALLOWED = {"NpmPlugin": {"install", "uninstall", "list_installed", "doctor"}}


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
