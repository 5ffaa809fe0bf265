"""The links a weight transfer uses, and their capacities.

Each GPU has its own NVLink port (to the node's NVSwitch, full bisection) and its own network NIC (as in
a DGX H100, one 400 Gb/s InfiniBand NIC per GPU), each with a send and a receive direction; each node
reads from its storage at the disk's rate, and each GPU receives from host memory over PCIe. A transfer
from GPU s to GPU d uses s's NVLink send and d's NVLink receive within a node, or s's NIC send and d's
NIC receive across nodes; a load from storage uses the node's disk and d's host-to-device link.

Link rates are what NCCL send/recv achieves for 1 GB messages in the shipped H100 profile (about
366 GB/s within a node, 33 GB/s across nodes), scaled by the catalog's link bandwidth for other GPUs or
networks; storage and host rates come from the measured I/O profile.
"""

from __future__ import annotations

from dataclasses import dataclass

from oserve.costmodel.catalog import DEFAULT_INTER_NODE_GBPS, ClusterSpec
from oserve.costmodel.network import send_recv_s
from oserve.switching.io_profile import IoProfile

Link = tuple[str, int]  # (kind, gpu id or node id)
STORAGE = -1  # source id of a load from storage
PROBE_BYTES = 1e9


@dataclass(frozen=True)
class LinkModel:
    cluster: ClusterSpec
    io: IoProfile = IoProfile()

    def node_of(self, gpu: int) -> int:
        return self.cluster.gpus[gpu].node_id

    def links(self, src: int, dst: int) -> tuple[Link, Link]:
        if src == STORAGE:
            return ("disk", self.node_of(dst)), ("h2d", dst)
        if self.node_of(src) == self.node_of(dst):
            return ("nvlink_send", src), ("nvlink_recv", dst)
        return ("nic_send", src), ("nic_recv", dst)

    def capacity_bytes_s(self, link: Link) -> float:
        kind, ident = link
        if kind.startswith("nvlink"):
            gbps = self.cluster.gpu_spec(self.cluster.gpus[ident].gpu_type).intra_node_gbps
            return PROBE_BYTES / send_recv_s(PROBE_BYTES, True, gbps)
        if kind.startswith("nic"):
            scale = self.cluster.inter_node_gbps / DEFAULT_INTER_NODE_GBPS
            return PROBE_BYTES / send_recv_s(PROBE_BYTES, False) * scale
        if kind == "disk":
            return self.io.disk_read_gbps * 1e9
        return self.io.h2d_gbps * 1e9

    def duration_s(self, link_bytes: dict[Link, float]) -> tuple[float, Link | None]:
        """Time to move the loads when every link runs at capacity throughout (the fluid model)."""
        worst, worst_link = 0.0, None
        for link, b in link_bytes.items():
            t = b / self.capacity_bytes_s(link)
            if t > worst:
                worst, worst_link = t, link
        return worst, worst_link
