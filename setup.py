"""The optional compiled part of the package; pyproject.toml holds all the metadata.

``export/_resample.c`` is plain C (no Python C API) that ``export.preprocess`` loads with
ctypes. ``optional=True``: without a compiler the install still succeeds and preprocessing
runs its numpy path.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("export._resample", ["export/_resample.c"],
                             extra_compile_args=["-O3"], optional=True)])
