#!/usr/bin/env python3
"""Checks the source layout issue 17 set: each crate's top-level modules import each other
without cycles, and no non-test source file is over MAX_LINES lines.

For every crate under crates/, a module is a top-level file or directory of src/ (a
directory module's files count as one module); an edge A -> B is a `crate::B` path in A's
non-test code. The crate root (lib.rs / main.rs) and test files are left out: the root
declares the modules and may hold shared items they use. Exits 1 naming the crate and the
loop `tsort` reports if any crate's graph has a cycle.
"""
import os
import re
import subprocess
import sys

MAX_LINES = 800
TEST_BLOCK = re.compile(r"#\[cfg\(test\)\]\s*mod tests \{")


def modules(src):
    graph = {}
    for root, _, files in os.walk(src):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, src)
            if (not name.endswith(".rs") or name.endswith("_tests.rs") or name == "tests.rs"
                    or rel.startswith("bin/") or rel in ("lib.rs", "main.rs")):
                continue
            top = rel.split("/")[0].removesuffix(".rs")
            text = open(path, encoding="utf-8").read()
            m = TEST_BLOCK.search(text)
            if m:
                text = text[: m.start()]
            text = re.sub(r"//.*", "", text)
            deps = set(re.findall(r"crate::([a-z_0-9]+)", text)) - {top}
            graph.setdefault(top, set()).update(deps)
    return {m: {d for d in ds if d in graph} for m, ds in graph.items()}


def main():
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    failed = False
    for crate in sorted(os.listdir("crates")):
        graph = modules(f"crates/{crate}/src")
        pairs = [f"{d} {m}" for m, ds in graph.items() for d in ds] + [f"{m} {m}" for m in graph]
        r = subprocess.run(["tsort"], input="\n".join(pairs), capture_output=True, text=True)
        if r.returncode != 0 or "loop" in r.stderr:
            failed = True
            print(f"{crate}: import cycle among modules:\n{r.stderr}", file=sys.stderr)
        else:
            print(f"{crate}: {len(graph)} modules, acyclic")
    for root, _, files in os.walk("crates"):
        if "/src" not in root and not root.endswith("src"):
            continue
        for name in files:
            if not name.endswith(".rs") or name.endswith("_tests.rs") or name == "tests.rs":
                continue
            path = os.path.join(root, name)
            lines = sum(1 for _ in open(path, encoding="utf-8"))
            if lines > MAX_LINES:
                failed = True
                print(f"{path}: {lines} lines (more than {MAX_LINES})", file=sys.stderr)
    sys.exit(1 if failed else 0)


main()
