"""The N-link swimmer (NCAP's body, after the DeepMind Control Suite).

- ``env``: :class:`~envs.swimmer.env.SwimmerEnv`, its observation layout and observation function;
- ``model``: the MJCF of an N-link swimmer;
- ``stock``: Gymnasium's stock ``Swimmer-v5`` with a time feature, for comparison with RL Zoo numbers.
"""
