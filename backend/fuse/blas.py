"""The fusion's float64 numpy work on one BLAS thread.

The closed form and the Levenberg-Marquardt steps solve and multiply matrices of at most 61 x 61
per hand. OpenBLAS splits even those over every thread it was given (OMP_NUM_THREADS, else every
core), which only costs: on this project's 2-core machine, in the photo pipeline on both cores
(`hamr serve`'s default there), fusing the webcam photo's hand took 11.7-12.1 ms against
10.3-10.5 ms on one BLAS thread (the same run, alternating). `one_blas_thread` holds numpy's BLAS
to one thread for the length of a `with` block (threadpoolctl, ~10 us) and gives back what it
had; without threadpoolctl it does nothing.

Imports threadpoolctl only (optional).
"""

from __future__ import annotations

import contextlib
import functools
import threading

_lock = threading.Lock()
_controller = None  # built on first use, when numpy's BLAS is loaded


def _get_controller():
    global _controller
    with _lock:
        if _controller is None:
            try:
                from threadpoolctl import ThreadpoolController
            except ImportError:
                _controller = False
            else:
                _controller = ThreadpoolController()
        return _controller


def one_blas_thread() -> contextlib.AbstractContextManager:
    """A context in which numpy's BLAS runs on one thread (module docstring)."""
    controller = _get_controller()
    if not controller:
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")


def on_one_blas_thread(fn):
    """Decorator: `fn` runs inside `one_blas_thread()`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with one_blas_thread():
            return fn(*args, **kwargs)

    return wrapper
