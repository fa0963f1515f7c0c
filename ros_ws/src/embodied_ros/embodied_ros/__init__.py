"""ROS 2 nodes that deploy embodied-stack policies."""
