"""ROS without a ROS install: bags (``bag``, read and written with rosbags), message conversion
shared by the bag tool and the node (``messages``), and the ROS 2 node's logic (``node``; rclpy
only inside its thin shell). The commands are ``python -m runtime.bag`` and ``python -m runtime.ros2``."""
