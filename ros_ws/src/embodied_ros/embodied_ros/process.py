"""How a node runs as a process: signals, executor, scheduling, errors, clean exit.

The nodes use rclpy's ``SingleThreadedExecutor``. Jazzy's experimental C++ ``EventsExecutor`` is
not offered: in the 7.1.6 wheels it spins a core while idle and ignores SIGTERM.
"""

from __future__ import annotations

import ctypes
import faulthandler
import gc
import os
import signal
import sys
import threading
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from embodied_ros.params import ParameterError

# A stopped node's cleanup must finish within this, inside launchers' 5 s SIGINT grace.
CLEANUP_DEADLINE_S = 3.0
STACK_DUMP_S = 0.5  # between the stack dump and the SIGTERM
# Linux timer_create(2) with SIGEV_SIGNAL; the structs as <signal.h> and <time.h> define them on 64-bit Linux.
_CLOCK_MONOTONIC = 1
_SIGEV_SIGNAL = 0


class _SigEvent(ctypes.Structure):
    _fields_ = [("sigev_value", ctypes.c_void_p), ("sigev_signo", ctypes.c_int), ("sigev_notify", ctypes.c_int),
                ("_rest", ctypes.c_int * 12)]


class _TimeSpec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _ITimerSpec(ctypes.Structure):
    _fields_ = [("it_interval", _TimeSpec), ("it_value", _TimeSpec)]


def default_stop_signals() -> None:
    """SIGINT and SIGTERM get their default action again: the next one ends the process at once."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def init_with_shutdown_on_signals(argv=None):
    """``rclpy.init`` whose SIGINT/SIGTERM shut the context down instead of raising.

    rclpy's default raises KeyboardInterrupt wherever the main thread is; inside a message take
    that surfaces as a RuntimeError from pybind11 and a traceback on every Ctrl-C. Here the
    signal only shuts the context down: spinning ends and the physics loop sees ``ok()`` false.
    The Python handlers are installed *before* ``rclpy.init``, whose C-level handlers then wake
    any blocked wait (e.g. a sim-time timer while /clock has stopped) and chain to them; handlers
    installed after init would replace rclpy's and leave such a wait blocked forever. Installing
    them explicitly also undoes an inherited SIG_IGN (children of ``cmd &`` in a script).

    The shutdown itself runs on a short-lived thread, not in the handler: Python runs handlers
    between two bytecodes of the main thread, and ``Context.ok()`` (which the executor calls on
    every spin) holds the context's non-reentrant lock; ``try_shutdown`` from a handler that
    lands inside it would wait for that lock forever and the node would ignore SIGINT.
    """
    context = rclpy.get_default_context()

    def shutdown(signum, frame):
        default_stop_signals()  # a second SIGINT/SIGTERM: a node stuck in shutdown still dies
        threading.Thread(target=context.try_shutdown, name="signal-shutdown", daemon=True).start()

    signal.signal(signal.SIGINT, shutdown)
    signal.signal(signal.SIGTERM, shutdown)
    rclpy.init(args=argv, context=context, signal_handler_options=SignalHandlerOptions.ALL)
    return context


def spin_until_shutdown(executor) -> None:
    """Spin; a SIGINT/SIGTERM shutdown of the context ends it quietly.

    A shutdown landing while rclpy 7.1.6 takes a message or builds its wait set raises a
    RuntimeError (``RCLError: failed to initialize wait set: the given context is not valid``)
    instead of ExternalShutdownException; after shutdown began that is not a failure of the node.
    """
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        if executor.context.ok():
            raise


def apply_realtime_priority(priority: int, logger) -> bool:
    """Move every thread of this process (the loop and DDS's) to SCHED_FIFO at ``priority``.

    What real-time ROS 2 control nodes do (ros2_control's controller manager uses FIFO 50): a
    waking node then preempts ordinary processes instead of queueing behind them, which is most
    of the tail latency on a busy machine (``benchmarks/ros_latency.py`` measures both).
    Needs CAP_SYS_NICE (root, or an ``rtprio`` limit); without it the node says so and runs on.
    """
    if priority <= 0:
        return False
    try:
        for tid in os.listdir("/proc/self/task"):
            os.sched_setscheduler(int(tid), os.SCHED_FIFO, os.sched_param(priority))
    except (PermissionError, OSError) as e:
        logger.warning(f"realtime_priority:={priority} not applied ({e}); running with normal scheduling")
        return False
    logger.info(f"SCHED_FIFO priority {priority}")
    return True


def _terminate_after(seconds: float) -> None:
    """Arm a kernel timer that sends this process SIGTERM after ``seconds`` (Linux ``timer_create``).

    A kernel timer, not a Python thread: the calls that hang hold the GIL (rclpy's pybind11
    ``destroy_when_not_in_use`` blocked inside rmw_destroy_node), so no Python code runs until they return.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    event = _SigEvent(sigev_signo=signal.SIGTERM, sigev_notify=_SIGEV_SIGNAL)
    timer = ctypes.c_void_p()
    whole = int(seconds)
    expiry = _ITimerSpec(it_value=_TimeSpec(whole, int((seconds - whole) * 1e9)))
    if (libc.timer_create(_CLOCK_MONOTONIC, ctypes.byref(event), ctypes.byref(timer)) != 0
            or libc.timer_settime(timer, 0, ctypes.byref(expiry), None) != 0):
        raise OSError(ctypes.get_errno(), f"cleanup deadline timer: {os.strerror(ctypes.get_errno())}")


def bounded_cleanup(seconds: float = CLEANUP_DEADLINE_S) -> None:
    """From here on, if the process has not exited within ``seconds``, print every thread's stack and SIGTERM it.

    Cleanup (destroying entities, DDS threads at interpreter exit) must never keep a stopped node
    alive until its launcher escalates: Fast DDS has been seen (once in CI, under load) to block in
    ``destroy_node`` for more than 5 s after the node's run had ended and its summary was logged.
    The node's work is done at that point, so it ends the way a stopped node may end (SIGTERM,
    which launchers count as a clean stop after their SIGINT) and within the launcher's 5 s grace;
    the stacks, printed first, say where it hung.
    """
    default_stop_signals()  # a further signal during cleanup ends the process at once
    sys.stdout.flush()
    sys.stderr.flush()
    faulthandler.dump_traceback_later(seconds, exit=False)
    _terminate_after(seconds + STACK_DUMP_S)


class StartupError(Exception):
    """A configuration problem that stops a node before it runs (one line, exit code 2)."""


def run_node(argv, make_node: Callable, run: Callable, farewell: Callable) -> int:
    """Build a node, run it until SIGINT/SIGTERM, clean up; the exit code of the process.

    ``run(node, executor)`` does the node's work; ``farewell(node)`` logs its summary on the way
    out. Configuration errors are one ``error:`` line and exit code 2, never a traceback.
    """
    context = init_with_shutdown_on_signals(argv)
    node = executor = None
    try:
        node = make_node()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        # Everything built so far (torch, MuJoCo, message types) lives for the whole run: keep it
        # out of the cyclic GC's scans, which otherwise cost milliseconds in the control loop.
        gc.freeze()
        apply_realtime_priority(node.get_parameter("realtime_priority").value, node.get_logger())
        run(node, executor)
    except (StartupError, ParameterError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:  # rclpy's RCLError when a signal's shutdown lands inside a wait (spin_until_shutdown)
        if context.ok():
            raise
    finally:
        bounded_cleanup()
        if node is not None:
            farewell(node)
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
