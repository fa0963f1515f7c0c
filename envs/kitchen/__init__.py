"""The language-instructed Franka kitchen.

- ``env``: :class:`~envs.kitchen.env.KitchenEnv`, its tasks and the observation functions;
- ``model``: the Gymnasium-Robotics kitchen scene, edited in code for cheap headless cameras;
- ``instructions``: the instruction paraphrases of every task;
- ``variation``: the scene variation levels L0-L3;
- ``experts``: scripted experts that produce the demonstrations.
"""
