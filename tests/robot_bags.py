"""Hand-made robot bags for the robot wing's tests: frames of the test scene (tests/scenes.py) with
the messages around them placed at will (tf on /tf_static or /tf, camera infos before or after their
images, lidar scans), written with rosbags. ``Robot.frame`` adds one camera frame and its lidar
scan; every other message is added with ``Robot.add``; ``Robot.write`` writes them in bag-time order."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Writer2
from rosbags.typesys import Stores, get_typestore

from tests import scenes
from tests.scene_bag import CAMERA, CAMERA_INFO, CLOUD, IMAGE, INFO, LIDAR, START, TF, Messages

PERIOD = 100_000_000


@dataclass
class Robot:
    store: object = field(default_factory=lambda: get_typestore(Stores.ROS2_HUMBLE))
    events: list = field(default_factory=list)  # (bag time, order, topic, msgtype, message)
    depth: list = field(default_factory=list)  # the true depth of each frame
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    @property
    def messages(self) -> Messages:
        return Messages(self.store)

    def add(self, time: int, topic: str, msgtype: str, message) -> None:
        self.events.append((time, len(self.events), topic, msgtype, message))

    def tf(self, time: int, chain: list, static: bool = True, stamp: int | None = None) -> None:
        topic = "/tf_static" if static else "/tf"
        self.add(time, topic, TF, self.messages.tf(time if stamp is None else stamp, chain))

    def info(self, time: int, stamp: int | None = None, frame_id: str = "camera_optical", **fields) -> None:
        message = self.messages.info(time if stamp is None else stamp, frame_id)
        for name, value in fields.items():
            setattr(message, name, value)
        self.add(time, CAMERA_INFO, INFO, message)

    def frame(
        self,
        i: int,
        stamp: int | None = None,
        gain: float = 2.0,
        offset: float = 0.3,
        lidar_delay: int | None = 3_000_000,
        frame_id: str = "camera_optical",
        speed: float = 0.05,
        image: np.ndarray | None = None,
        time: int | None = None,
    ) -> int:
        """Frame ``i`` (stamp START + (i + 1) * PERIOD unless given), written at its stamp (or ``time``)."""
        stamp = START + (i + 1) * PERIOD if stamp is None else stamp
        depth = scenes.render(scenes.Scene(), camera=(0.0, 0.0, speed * i))
        pixels, _ = scenes.relative_frame(depth, gain, offset)
        pixels = pixels if image is None else image
        self.add(stamp if time is None else time, CAMERA, IMAGE, self.messages.image(stamp, pixels, frame_id=frame_id))
        self.depth.append(depth)
        if lidar_delay is not None:  # its scan: stamped and recorded lidar_delay after the image
            scan = self.messages.cloud(stamp + lidar_delay, scenes.Lidar().scan(depth, self.rng))
            self.add((stamp if time is None else time) + lidar_delay, LIDAR, CLOUD, scan)
        return stamp

    def write(self, path: Path) -> Path:
        writer = Writer2(path, version=8, storage_plugin=StoragePlugin.MCAP)
        with writer:
            connections = {}
            for time, _, topic, msgtype, message in sorted(self.events, key=lambda e: (e[0], e[1])):
                if topic not in connections:
                    connections[topic] = writer.add_connection(topic, msgtype, typestore=self.store)
                writer.write(connections[topic], time, self.store.serialize_cdr(message, msgtype))
        return path
