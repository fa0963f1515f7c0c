"""How a node runs as a process: signals, executor, scheduling, errors, clean exit.

The nodes use rclpy's ``SingleThreadedExecutor``. Jazzy's experimental C++ ``EventsExecutor``
was tried: in the 7.1.6 wheels it spins a core at 100 % while idle and ignores SIGTERM, so it
is not offered.
"""

from __future__ import annotations

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
        # A second SIGINT/SIGTERM gets the default action: a node stuck in shutdown still dies.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
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


def bounded_cleanup(seconds: float = 5.0) -> None:
    """From here on, if the process has not exited within ``seconds``, print every thread's stack and exit 1.

    Cleanup (destroying entities, DDS threads at interpreter exit) must never keep a stopped
    node alive until its launcher escalates to SIGKILL; if it hangs, the stacks say where.
    """
    faulthandler.dump_traceback_later(seconds, exit=True)


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
