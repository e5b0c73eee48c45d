"""Denormal floats flushed to zero for the duration of a model call, on the calling thread.

A batch of texts of unequal lengths is padded to its longest, and the padded positions make the encoder
compute with denormal floats (magnitudes below 1.2e-38), which x86 CPUs handle in microcode, many times
slower than normal ones. Measured on the int8 MiniLM export, 8 texts padded to 210 tokens: 113-116 ms a
call when half or seven eighths of them were short, 85 ms when all were that long; with denormals flushed
to zero, 78-80 ms for all three (docs/performance.md). The vectors do not move: a denormal is below any
difference a cosine can show.

onnxruntime flushes them in its own pool threads when asked (`session.set_denormal_as_zero`), and also
sets the mode, for good, on the thread that creates the session (and so on every thread that one starts
later); but the thread that calls `run` does its share of the work in its own floating-point state. So
`flushed()` sets flush-to-zero and denormals-are-zero on the calling thread (x86-64: MXCSR bits FTZ and
DAZ; AArch64: FPCR bit FZ) through the C library's `fegetenv`/`fesetenv` and puts the thread's whole
environment back on exit, and `preserved()` undoes what creating the session did to its thread: no code
outside a model call ever runs with the mode. Elsewhere (another C library or CPU) both do nothing, and
the pool threads still flush.
"""

from __future__ import annotations

import ctypes
import platform
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# (size of fenv_t, offset of the control register in it, the bits to set): glibc's layouts.
_LAYOUTS = {
    "x86_64": (32, 28, 0x8000 | 0x0040),  # the x87 environment (28 bytes), then MXCSR: FTZ | DAZ
    "amd64": (32, 28, 0x8000 | 0x0040),
    "aarch64": (8, 0, 1 << 24),  # FPCR, then FPSR: FPCR.FZ
    "arm64": (8, 0, 1 << 24),
}
_lock = threading.Lock()
_libm: Any = None  # None: not looked at yet; False: not available here


def _functions() -> Any:
    global _libm
    if _libm is None:
        with _lock:
            if _libm is None:
                found: Any = False
                if sys.platform == "linux" and platform.machine().lower() in _LAYOUTS:
                    try:
                        found = ctypes.CDLL("libm.so.6", use_errno=True)
                        found.fegetenv.argtypes = found.fesetenv.argtypes = [ctypes.c_void_p]
                    except (OSError, AttributeError):
                        found = False
                _libm = found
    return _libm


def available() -> bool:
    """Can `flushed()` set the calling thread's mode here (Linux with glibc, on x86-64 or AArch64)?"""
    return bool(_functions())


def _environment() -> tuple[Any, Any, int] | None:
    """(the C library, this thread's floating-point environment as read now, its control register's value),
    or None where that cannot be read."""
    libm = _functions()
    if not libm:
        return None
    size, offset, _ = _LAYOUTS[platform.machine().lower()]
    env = (ctypes.c_ubyte * size)()
    if libm.fegetenv(env) != 0:
        return None
    return libm, env, int.from_bytes(bytes(env[offset : offset + 4]), "little")


@contextmanager
def flushed() -> Iterator[None]:
    """Denormals flushed to zero on this thread inside the block; its floating-point environment restored
    after it (also when the block raises)."""
    found = _environment()
    _, offset, bits = _LAYOUTS.get(platform.machine().lower(), (0, 0, 0))
    if found is None or found[2] & bits == bits:  # (set already, by whoever owns this thread: nothing to undo)
        yield
        return
    libm, saved, control = found
    changed = type(saved).from_buffer_copy(saved)
    changed[offset : offset + 4] = list((control | bits).to_bytes(4, "little"))
    if libm.fesetenv(changed) != 0:
        yield
        return
    try:
        yield
    finally:
        libm.fesetenv(saved)


@contextmanager
def preserved() -> Iterator[None]:
    """This thread's floating-point environment as it was before the block (whatever the block set)."""
    found = _environment()
    try:
        yield
    finally:
        if found is not None:
            found[0].fesetenv(found[1])


def control_bits() -> int | None:
    """This thread's floating-point mode (MXCSR without its six exception flags, or FPCR), or None where
    `flushed` does nothing (for tests)."""
    found = _environment()
    if found is None:
        return None
    offset = _LAYOUTS[platform.machine().lower()][1]
    return found[2] & ~0x3F if offset else found[2]  # (MXCSR's bits 0-5 are the sticky flags, not the mode)


def flush_bits() -> int:
    """The bits `flushed` sets in `control_bits()` (0 where it does nothing)."""
    return _LAYOUTS[platform.machine().lower()][2] if available() else 0
