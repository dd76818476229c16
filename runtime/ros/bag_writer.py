"""The output bag of ``runtime.bag``: copied connections (definitions and QoS kept) and new depth topics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .messages import MessageFactory


class BagWriter:
    """A rosbags writer for one output bag: copied connections and the new depth topics."""

    def __init__(self, plan: Any, path: Path) -> None:
        """The output of ``plan`` (a ``runtime.ros.bag_plan.BagPlan``: its storage, its input's
        connections) written at ``path``."""
        rb, kind = plan.rb, plan.storage
        self._reader, self.kind = plan.reader, kind
        if kind == "rosbag1":
            self._writer = rb.rosbag1.Writer(path)
            self.store = rb.typesys.get_typestore(rb.typesys.Stores.ROS1_NOETIC)
        else:
            plugin = rb.rosbag2.StoragePlugin.MCAP if kind == "mcap" else rb.rosbag2.StoragePlugin.SQLITE3
            self._writer = rb.rosbag2.Writer(path, version=8, storage_plugin=plugin)
            # Image and PointCloud2 are the same in every ROS 2 release.
            self.store = rb.typesys.get_typestore(rb.typesys.Stores.ROS2_HUMBLE)
        self._writer.open()
        self._copies: dict[int, Any] = {}
        self._new: dict[str, Any] = {}
        self.factory = MessageFactory(self.make)  # rosbags' messages hold uint8[] fields as numpy arrays

    def copy_connection(self, conn: Any) -> Any:
        """The output connection for an input connection, with its definition and QoS."""
        key = id(conn)
        if key in self._copies:
            return self._copies[key]
        defined = conn.msgdef.data and conn.digest
        if self.kind == "rosbag1":
            extra = {"callerid": conn.ext.callerid, "latching": conn.ext.latching}
            extra.update({"msgdef": conn.msgdef.data, "md5sum": conn.digest} if defined else {})
        else:
            extra = {
                "serialization_format": conn.ext.serialization_format,
                "offered_qos_profiles": conn.ext.offered_qos_profiles,
            }
            extra.update({"msgdef": conn.msgdef.data, "rihs01": conn.digest} if defined else {})
        if not defined:
            extra["typestore"] = self._reader.typestore
        out = self._writer.add_connection(conn.topic, conn.msgtype, **extra)
        self._copies[key] = out
        return out

    def copy(self, conn: Any, timestamp: int, raw: bytes) -> None:
        self._writer.write(self.copy_connection(conn), timestamp, raw)

    def make(self, msgtype: str, **fields: Any) -> Any:
        return self.store.types[msgtype](**fields)

    def publish(self, topic: str, msgtype: str, timestamp: int, msg: Any) -> int:
        """Serialise and write ``msg``; returns its size in bytes."""
        if topic not in self._new:
            self._new[topic] = self._writer.add_connection(topic, msgtype, typestore=self.store)
        if self.kind == "rosbag1":
            raw = self.store.serialize_ros1(msg, msgtype)
        else:
            raw = self.store.serialize_cdr(msg, msgtype, little_endian=True)
        self._writer.write(self._new[topic], timestamp, raw)
        return len(raw)

    def close(self) -> None:
        self._writer.close()
