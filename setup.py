"""Only the optional C fast paths (traced locks, @traced); everything else is in pyproject.toml.

Each extension is optional: where it cannot be built (no compiler, PyPy, a free-threaded
interpreter) the build carries on and conctools uses its pure-Python fast path.
"""

import platform
import sysconfig

from setuptools import Extension, setup

ext_modules = []
if platform.python_implementation() == "CPython" and not sysconfig.get_config_var("Py_GIL_DISABLED"):
    ext_modules.append(Extension("conctools._speedups", ["conctools/_speedups.c"], optional=True))
    ext_modules.append(Extension("conctools._ctracing", ["conctools/_tracing.c"], optional=True))

setup(ext_modules=ext_modules)
