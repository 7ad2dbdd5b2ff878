"""The source tree's modules (src/<module>/) form no include cycle: each
module may use the ones below it, never one that uses it back."""
import os
import re

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")
INCLUDE = re.compile(r'#include "([a-z0-9_]+)/')


def module_graph():
    graph = {}
    for root, _, files in os.walk(SRC):
        mod = os.path.relpath(root, SRC).split(os.sep)[0]
        for name in files:
            if not name.endswith((".c", ".h")):
                continue
            with open(os.path.join(root, name), errors="replace") as f:
                for line in f:
                    m = INCLUDE.match(line)
                    if m and m.group(1) != mod:
                        graph.setdefault(mod, set()).add(m.group(1))
    return graph


def find_cycle(graph):
    """One cycle as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None


def test_no_module_cycle():
    graph = module_graph()
    assert {"smtp", "sched", "delivery", "spool", "util"} <= set(graph) | {"util"}
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)
