"""The quadrotor UAV: hover and waypoint flight under wind and gusts.

- ``env``: :class:`~envs.uav.env.UAVEnv`, the gymnasium env (its docstring is the contract);
- ``model``: vehicle presets and the MJCF generated from them;
- ``control``: the mixer and the body-rate loop.

This file imports none of them, so the controllers and the ROS 2 adapter can import ``control``
and ``model`` without the gymnasium env.
"""
