"""Rewrite imports of pyturn's flat modules (before issue 13) to the layered packages, for branches made before it.

    python scripts/migrate_imports_issue13.py FILE.py ...

Each ``from pyturn.OLD import a, b`` becomes one import per new module that defines the name (found by reading the
new modules), and ``pyturn.OLD.name`` references (monkeypatch targets) are rewritten the same way. Run ruff
check --fix afterwards to sort the imports. Names are resolved against the tree this script runs in; a name it
cannot place is printed as UNRESOLVED. Monkeypatched module attributes may need a look: a constant now lives in
the module that uses it (for example CHANNEL_LIFETIME is read by pyturn.core.permissions).
Test helpers moved too: tests/X.py helpers are in tests/support/ (on sys.path through pyproject's pytest
pythonpath), tests are in tests/{wire,core,net,ops,interop}/.
"""

import ast
import os
import re
import sys
from pathlib import Path

MAP = {
    "pyturn.stun": [
        "pyturn.wire.message",
        "pyturn.wire.attributes",
        "pyturn.wire.codec",
        "pyturn.wire.integrity",
        "pyturn.wire.framing",
    ],
    "pyturn.core": [
        "pyturn.core.dispatch",
        "pyturn.core.transactions",
        "pyturn.core.reservations",
        "pyturn.core.allocate",
        "pyturn.core.binding",
        "pyturn.core.permissions",
        "pyturn.core.refresh",
        "pyturn.core.data",
        "pyturn.core.routes",
        "pyturn.core.allocation",
        "pyturn.core.actions",
        "pyturn.core.events",
    ],
    "pyturn.config": ["pyturn.config", "pyturn.files.configfile"],
    "pyturn.allocation": ["pyturn.core.allocation", "pyturn.core.timers"],
    "pyturn.userdb": ["pyturn.core.userdb", "pyturn.files.userfile"],
    "pyturn.sharedsecret": ["pyturn.core.sharedsecret", "pyturn.files.secretfile"],
    "pyturn.auth": ["pyturn.core.auth"],
    "pyturn.policy": ["pyturn.core.policy"],
    "pyturn.ports": ["pyturn.core.ports"],
    "pyturn.ratelimit": ["pyturn.core.ratelimit"],
    "pyturn.stats": ["pyturn.core.stats"],
    "pyturn.transport": [
        "pyturn.net.runtime",
        "pyturn.net.udp",
        "pyturn.net.relay",
        "pyturn.net.stream",
        "pyturn.net.sockets",
        "pyturn.net.limits",
    ],
    "pyturn.tls": ["pyturn.net.tls"],
    "pyturn.localaddrs": ["pyturn.net.localaddrs"],
    "pyturn.http_endpoint": ["pyturn.net.http_endpoint"],
    "pyturn.metrics": ["pyturn.net.metrics"],
    "pyturn.metrics_workers": ["pyturn.net.metrics_workers"],
    "pyturn.service": ["pyturn.ops.daemon"],
    "pyturn.cli": ["pyturn.ops.cli"],
    "pyturn.workers": ["pyturn.ops.workers"],
    "pyturn.logsetup": ["pyturn.ops.logsetup"],
    "pyturn.subcommands": ["pyturn.ops.subcommands"],
    "pyturn.users_command": ["pyturn.ops.users_command"],
    "pyturn.credentials_command": ["pyturn.ops.credentials_command"],
    "pyturn.dns_records": ["pyturn.ops.dns_records"],
    "pyturn.status": ["pyturn.ops.status"],
    "pyturn.probe": ["pyturn.ops.probe"],
    "pyturn.manpage": ["pyturn.ops.manpage"],
    "pyturn.core.dispatch": [
        "pyturn.core.dispatch",
        "pyturn.core.transactions",
        "pyturn.core.reservations",
        "pyturn.core.allocate",
        "pyturn.core.binding",
        "pyturn.core.permissions",
        "pyturn.core.refresh",
        "pyturn.core.data",
        "pyturn.core.routes",
        "pyturn.core.allocation",
        "pyturn.core.actions",
        "pyturn.core.events",
    ],
    "pyturn.net.transport": [
        "pyturn.net.runtime",
        "pyturn.net.udp",
        "pyturn.net.relay",
        "pyturn.net.stream",
        "pyturn.net.sockets",
        "pyturn.net.limits",
    ],
}
files = sys.argv[1:]


def top_names(path):
    tree = ast.parse(Path(path).read_text())
    names = set()
    imported = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
                if isinstance(target, ast.Tuple):
                    names.update(e.id for e in target.elts if isinstance(e, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.ImportFrom, ast.Import)):
            for alias in node.names:
                imported.add((alias.asname or alias.name).split(".")[0])
    return names, imported


def mod_path(mod):
    path = mod.replace(".", "/")
    return path + ".py" if os.path.exists(path + ".py") else path + "/__init__.py"


index = {}


def lookup(old, name):
    cands = MAP[old]
    for c in cands:
        names, _ = index.setdefault(c, top_names(mod_path(c)))
        if name in names:
            return c
    for c in cands:
        _, imp = index[c]
        if name in imp:
            return c
    return None


pat = re.compile(r"^([ \t]*)from (pyturn(?:\.[\w]+)*) import (\([^)]*\)|[^\n]*)", re.M)
problems = []


def fix(m, path):
    indent, mod, rest = m.group(1), m.group(2), m.group(3)
    if mod not in MAP:
        return m.group(0)
    comment = ""
    if rest.startswith("("):
        inner = rest[1:-1]
        inner = "\n".join(part.split("#")[0] for part in inner.splitlines())
    else:
        if "#" in rest:
            rest, comment = rest.split("#", 1)
            comment = "  #" + comment
        inner = rest
    items = [i.strip() for i in inner.replace("\n", " ").split(",") if i.strip()]
    groups = {}
    for item in items:
        name = item.split(" as ")[0].strip()
        new = lookup(mod, name)
        if new is None:
            problems.append(f"{path}: {mod}.{name}")
            new = MAP[mod][0]
        groups.setdefault(new, []).append(item)
    out = []
    for new, its in groups.items():
        line = f"{indent}from {new} import {', '.join(its)}"
        if len(line) + len(comment) > 118:
            line = f"{indent}from {new} import (\n" + "".join(f"{indent}    {i},\n" for i in its) + f"{indent})"
        out.append(line + comment)
        comment = ""
    return "\n".join(out)


for path in files:
    text = Path(path).read_text()
    new = pat.sub(lambda m, path=path: fix(m, path), text)

    # dotted references pyturn.old.Name and `import pyturn.old`
    def dotted(m):
        mod, name = m.group(1), m.group(2)
        if mod not in MAP:
            return m.group(0)
        target = lookup(mod, name)
        if target is None:
            return m.group(0)
        return f"{target}.{name}"

    new = re.sub(r"\b(pyturn\.[a-z_]+(?:\.[a-z_]+)?)\.([A-Za-z_]\w*)\b", dotted, new)
    if new != text:
        Path(path).write_text(new)
        print("rewrote", path)
for p in problems:
    print("UNRESOLVED", p)
