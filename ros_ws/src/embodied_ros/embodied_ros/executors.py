"""How the nodes spin and stop.

The nodes use rclpy's ``SingleThreadedExecutor``. Jazzy's experimental C++ ``EventsExecutor``
was tried: in the 7.1.6 wheels it spins a core at 100 % while idle and ignores SIGTERM, so it
is not offered.
"""

from __future__ import annotations

import signal

from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor


def restore_default_sigint() -> None:
    """Undo an inherited SIG_IGN (children of ``cmd &`` in a script) so SIGINT stops the node.

    rclpy leaves an ignored SIGINT ignored; a launcher's SIGINT would then never stop the node.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def make_executor(context=None) -> SingleThreadedExecutor:
    return SingleThreadedExecutor(context=context)


def spin_until_shutdown(executor) -> None:
    """Spin; a SIGINT/SIGTERM shutdown of the context ends it quietly.

    A message being taken while the context shuts down makes rclpy 7.1.6 raise a RuntimeError
    ("Unable to convert call argument"); after shutdown began that is not a failure of the node.
    """
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        if executor.context.ok():
            raise
