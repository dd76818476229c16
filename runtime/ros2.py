"""``python -m runtime.ros2``: the ROS 2 depth node (``runtime.ros.node``); needs a sourced ROS 2 (rclpy)."""

from __future__ import annotations

import sys

from .ros.node import main

if __name__ == "__main__":
    sys.exit(main())
