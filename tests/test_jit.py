"""calseg's numba kernels give the same bits whatever the process's history.

A kernel that calls another kernel used to link its own, re-optimised copy of the callee; with
``reassoc`` the copy summed in another order, and a call bound to whichever copy was loaded
first. Helpers are therefore inlined at numba's IR level (``calseg._jit.helper``)."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import calseg

PACKAGE = Path(calseg.__file__).parent

# tv_rows calls tv_image; "first" calls tv_image on its own before tv_rows
_SCRIPT = """
import sys
import numpy as np
from calseg.prox._dual_kernels import tv_image, tv_rows
X = np.random.default_rng(0).random((3, 32 * 32))
if sys.argv[1] == "first":
    tv_image(X[0], 32, 32, True)
out = np.zeros(3)
tv_rows(X, 32, 32, True, out)
print(repr(out.tolist()))
"""


def test_a_kernel_gives_the_same_bits_compiled_or_cached_whatever_ran_before(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}

    def run(order):
        return subprocess.run([sys.executable, "-c", _SCRIPT, order], env=env, check=True,
                              capture_output=True, text=True).stdout

    cold = run("first")         # compiles both kernels and writes the cache
    assert run("alone") == cold  # loads tv_rows from the cache, tv_image never loaded
    assert run("first") == cold  # loads tv_image, then tv_rows


def _kernels():
    """{name: decorator source} of every module-level numba function in the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef):
                decorators = [ast.unparse(d) for d in node.decorator_list]
                if any(d.startswith(("njit", "helper")) for d in decorators):
                    found[node.name] = (path.relative_to(PACKAGE), decorators)
    return found


def test_every_kernel_called_by_another_kernel_is_a_helper():
    kernels = _kernels()
    assert len(kernels) > 40
    callers = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name in kernels:
                for call in ast.walk(node):
                    if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) \
                            and call.func.id in kernels and call.func.id != node.name:
                        callers.setdefault(call.func.id, set()).add(node.name)
    assert "tv_image" in callers and "_fista_step" in callers
    not_helpers = {name: sorted(by) for name, by in callers.items()
                   if not any(d.startswith("helper") for d in kernels[name][1])}
    assert not not_helpers, f"decorate with @helper (calseg._jit): {not_helpers}"
