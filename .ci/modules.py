#!/usr/bin/env python3
"""Checks that the runtime's top-level modules import each other without cycles.

Edges are read from `crate::<module>` paths in code (comments and doc comments are
skipped); a child module (`db/conn.rs`) counts as its top-level module (`db`), and
`super::` paths stay inside one. Prints the graph with --print; exits 1 on a cycle.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..", "runtime", "src")


def top_module(path):
    rel = os.path.relpath(path, ROOT)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def edges():
    graph = {}
    for dirpath, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            module = top_module(path)
            if module == "lib":
                continue
            graph.setdefault(module, set())
            with open(path, encoding="utf-8") as f:
                for line in f:
                    code = line.split("//")[0]
                    for used in re.findall(r"\bcrate::([a-z_]+)", code):
                        if used != module and used not in ("Result", "Error", "__private"):
                            graph[module].add(used)
    return graph


def cycle(graph):
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
            if nxt not in state:
                found = visit(nxt, stack + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


if __name__ == "__main__":
    graph = edges()
    if "--print" in sys.argv:
        for node in sorted(graph):
            print(f"{node} -> {', '.join(sorted(graph[node])) or '-'}")
    found = cycle(graph)
    if found:
        print("module cycle: " + " -> ".join(found), file=sys.stderr)
        sys.exit(1)
    print("modules: no cycles")
