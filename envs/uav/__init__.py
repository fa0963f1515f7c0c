"""The quadrotor UAV: hover and waypoint flight under wind and gusts.

- ``env``: :class:`~envs.uav.env.UAVEnv`, the gymnasium env (its docstring is the contract);
- ``model``: vehicle presets and the MJCF generated from them;
- ``control``: the thrust map of the action, the mixer and the body-rate loop;
- ``observation``: the observation layout and the function that assembles it;
- ``disturbances``: air drag and the gust field;
- ``rewards``: the reward's shaping functions.

This file imports none of them, so the controllers and the ROS 2 adapter can import ``control``,
``observation`` and ``model`` without the gymnasium env.
"""
