"""ROS 2 on top of the runtime, over real DDS (``rclpy``; ``pip install 'netvlad-kit[ros2]'`` gives ROS 2's
wheels, or a robot's own ROS 2 installation serves): ``netvlad-ros2`` (:mod:`runtime.ros2.node`, the
Localizer as a node: camera topics in; fix, pose, confidence, verdict, markers and diagnostics out; a
mapping mode, :mod:`runtime.ros2.mapping`, that records a drive into a map) and ``netvlad-ros2-play``
(:mod:`runtime.ros2.player`, a bag, video or folder onto topics at its recorded pace). rclpy is imported
only when a node runs, so the package imports (and ``--help`` works) without ROS. May import every runtime
package below the command line; nothing in the runtime imports it.
"""
