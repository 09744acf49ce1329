"""A stand-in for Xen 4.17's ``xl`` over real QEMU processes, for the test suite.

Run ``tests/xlstandin/xl`` (put its directory first on PATH); see
:mod:`tests.xlstandin.standin` for the verbs, the environment and the deviations.
"""
