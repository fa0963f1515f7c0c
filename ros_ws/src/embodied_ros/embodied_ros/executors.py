"""How the nodes spin and stop.

The nodes use rclpy's ``SingleThreadedExecutor``. Jazzy's experimental C++ ``EventsExecutor``
was tried: in the 7.1.6 wheels it spins a core at 100 % while idle and ignores SIGTERM, so it
is not offered.
"""

from __future__ import annotations

import signal

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions


def init_with_shutdown_on_signals(argv=None):
    """``rclpy.init`` whose SIGINT/SIGTERM shut the context down instead of raising.

    rclpy's default raises KeyboardInterrupt wherever the main thread is; inside a message take
    that surfaces as a RuntimeError from pybind11 and a traceback on every Ctrl-C. Here the
    signal only shuts the context down: spinning ends and the physics loop sees ``ok()`` false.
    Handlers are installed explicitly, so an inherited SIG_IGN (children of ``cmd &`` in a
    script) cannot make a node deaf to its launcher either.
    """
    context = rclpy.get_default_context()
    rclpy.init(args=argv, context=context, signal_handler_options=SignalHandlerOptions.NO)

    def shutdown(signum, frame):
        context.try_shutdown()

    signal.signal(signal.SIGINT, shutdown)
    signal.signal(signal.SIGTERM, shutdown)
    return context


def make_executor(context=None) -> SingleThreadedExecutor:
    return SingleThreadedExecutor(context=context)


def spin_until_shutdown(executor) -> None:
    """Spin; a SIGINT/SIGTERM shutdown of the context ends it quietly.

    A message being taken while the context shuts down can make rclpy 7.1.6 raise a
    RuntimeError; after shutdown began that is not a failure of the node.
    """
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        if executor.context.ok():
            raise
