"""The virtual radio: a zigpy ControllerApplication whose air is a set of simulated locks."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any, Final

import structlog

from drivers.zigbee import zigpy_api as zigpy
from drivers.zigbee.virtual.lock import LockMemory, VirtualLock
from drivers.zigbee.zigpy_api import t, zdo_t

log = structlog.get_logger(__name__)

CONF_VIRTUAL: Final = "gatewayd_virtual"  # the config key carrying the VirtualNetwork object
COORDINATOR_IEEE: Final = "00:12:4b:00:1c:a1:b2:c3"
JOIN_DELAY_S: Final = 0.05


class VirtualNetwork:
    """The radio's memory and the locks in range. Survives radio restarts; persisted to a file.

    The file holds the network key (like a real radio's NVRAM) and the locks' own memory; mode 0600.
    """

    def __init__(self, path: Path | None, locks: int = 2, joining: int = 0) -> None:
        self.path = path
        self.backup: dict[str, Any] | None = None
        self.locks: dict[str, VirtualLock] = {}
        self.radio_present = True
        self.frozen = False  # the stick takes frames and never answers; see freeze()
        # how long the radio takes to report a frame to a lock out of reach as undelivered (a
        # sleepy lock's parent holds it 7.68 s for the lock's next poll before giving up)
        self.delivery_failure_s = 0.0
        self.app: VirtualControllerApplication | None = None
        self.permit_until = 0.0
        self._join_handles: list[asyncio.TimerHandle] = []
        mems = self._load()
        if mems is None:
            mems = [self._new_memory(i) for i in range(locks + joining)]
            for m in mems[:locks]:
                m.joined = False  # joins when the network is first formed
        for m in mems:
            self._add(m)
        self._preinstalled = {m.ieee for m in mems[:locks]} if self.backup is None else set()

    # ------------------------------------------------------------------ persistence

    @staticmethod
    def _new_memory(index: int) -> LockMemory:
        ieee = ":".join(f"{b:02x}" for b in (0x00, 0x0D, 0x6F, 0x00, 0x0A, 0x90, 0x00, index + 1))
        return LockMemory(ieee=ieee, nwk=0x1000 + index * 0x111, profile=index)

    def _add(self, mem: LockMemory) -> VirtualLock:
        lock = VirtualLock(mem, self._to_coordinator, self.save)
        lock.on_leave = self._left
        self.locks[mem.ieee] = lock
        return lock

    def add_lock(self) -> VirtualLock:
        """A new, factory-fresh lock comes within range; it joins when joining is permitted."""
        lock = self._add(self._new_memory(len(self.locks)))
        self.save()
        self._maybe_join_pending()
        return lock

    def _load(self) -> list[LockMemory] | None:
        if self.path is None or not self.path.exists():
            return None
        data = json.loads(self.path.read_text())
        self.backup = data.get("backup")
        return [LockMemory.from_dict(d) for d in data["locks"]]

    def save(self) -> None:
        if self.path is None:
            return
        data = {"backup": self.backup, "locks": [lk.mem.to_dict() for lk in self.locks.values()]}
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        tmp.replace(self.path)

    # ------------------------------------------------------------------ the air

    def lock(self, ieee: str) -> VirtualLock:
        return self.locks[ieee]

    @property
    def descriptor_requests(self) -> int:
        """ZDO descriptor requests the locks answered (node, active endpoints, simple)."""
        return sum(lk.descriptor_requests for lk in self.locks.values())

    def _to_coordinator(self, packet: Any) -> None:
        if self.app is not None and self.radio_present:
            self.app.packet_received(packet)

    def _left(self, lock: VirtualLock) -> None:
        if self.app is not None:
            self.app.handle_leave(lock.nwk, lock.ieee)

    def deliver(self, packet: Any) -> None:
        """A unicast from the coordinator. Raises DeliveryError when nobody acknowledges it."""
        dst = packet.dst
        for lock in self.locks.values():
            if not lock.mem.joined:
                continue
            if (dst.addr_mode == t.AddrMode.NWK and dst.address == lock.nwk) or (
                dst.addr_mode == t.AddrMode.IEEE and dst.address == lock.ieee
            ):
                if not lock.online:
                    raise zigpy.exceptions.DeliveryError("no MAC acknowledgement", status=0xE9)
                lock.receive(packet)
                return
        raise zigpy.exceptions.DeliveryError("no route to destination", status=0xD0)

    def broadcast(self, packet: Any) -> None:
        if packet.cluster_id == zdo_t.ZDOCmd.Mgmt_Permit_Joining_req and packet.dst_ep == 0:
            data = packet.data.serialize()
            if len(data) >= 2:
                self.permit(data[1])

    def permit(self, seconds: int) -> None:
        loop = asyncio.get_running_loop()
        self.permit_until = loop.time() + seconds if seconds else 0.0
        self._maybe_join_pending()

    def _maybe_join_pending(self) -> None:
        if self.app is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() >= self.permit_until:
            return
        for i, lock in enumerate(lk for lk in self.locks.values() if not lk.mem.joined):
            self._schedule_join(lock, JOIN_DELAY_S * (i + 1))

    def _schedule_join(self, lock: VirtualLock, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._join_handles.append(loop.call_later(delay, self._join, lock))

    def _join(self, lock: VirtualLock) -> None:
        if self.app is None or lock.mem.joined:
            return
        lock.mem.joined = True
        lock.online = True
        self.save()
        log.info("zigbee.virtual.lock_joined", ieee=lock.mem.ieee, model=lock.profile.model)
        # The trust centre's join indication; the interview follows from zigpy.
        self.app.handle_join(nwk=lock.nwk, ieee=lock.ieee, parent_nwk=t.NWK(0x0000))

    def announce(self, lock: VirtualLock) -> None:
        """The lock is back (battery in again): it rejoins and sends a Device_annce."""
        if not lock.mem.joined:
            return
        _, types = zdo_t.CLUSTERS[zdo_t.ZDOCmd.Device_annce]
        data = bytes([0x77]) + b"".join(
            typ(v).serialize() for typ, v in zip(types, (lock.nwk, lock.ieee, 0x80), strict=True)
        )
        packet = t.ZigbeePacket(
            src=t.AddrModeAddress(addr_mode=t.AddrMode.NWK, address=lock.nwk),
            src_ep=0,
            dst=t.AddrModeAddress(addr_mode=t.AddrMode.Broadcast, address=0xFFFD),
            dst_ep=0,
            tsn=0x77,
            profile_id=0,
            cluster_id=zdo_t.ZDOCmd.Device_annce,
            data=t.SerializableBytes(data),
        )
        self._to_coordinator(packet)

    # ------------------------------------------------------------------ radio presence

    def attach(self, app: VirtualControllerApplication) -> None:
        if not self.radio_present:
            raise ConnectionRefusedError("virtual radio unplugged")
        self.app = app

    def detach(self) -> None:
        self.app = None
        for handle in self._join_handles:
            handle.cancel()
        self._join_handles.clear()
        for lock in self.locks.values():
            lock.cancel()

    def network_started(self) -> None:
        """Locks installed before the gateway's first start join the freshly formed network."""
        pending = [self.locks[i] for i in sorted(self._preinstalled) if i in self.locks]
        self._preinstalled = set()
        for n, lock in enumerate(pending):
            self._schedule_join(lock, JOIN_DELAY_S * (n + 1))

    def unplug(self) -> None:
        """The radio's USB stick is pulled out."""
        self.radio_present = False
        app, self.app = self.app, None
        if app is not None:
            app.connection_lost(ConnectionResetError("virtual radio unplugged"))

    def plug(self) -> None:
        self.radio_present = True
        self.frozen = False  # a stick plugged in again starts afresh

    def freeze(self) -> None:
        """The radio's firmware hangs: the serial port stays open, frames go in and nothing
        comes back, not even the answer to the goodbye a library sends when it disconnects."""
        self.frozen = True

    async def hang_if_frozen(self) -> None:
        if self.frozen:
            await asyncio.Event().wait()


class VirtualControllerApplication(zigpy.ControllerApplication):  # type: ignore[misc]
    """zigpy's abstract controller filled in with the virtual network instead of a serial port."""

    _watchdog_period = 5

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        net = config.get(CONF_VIRTUAL)
        if not isinstance(net, VirtualNetwork):
            net = VirtualNetwork(None)
        self.network: VirtualNetwork = net

    async def connect(self) -> None:
        self.network.attach(self)

    async def disconnect(self) -> None:
        await self.network.hang_if_frozen()
        if self.network.app is self:
            self.network.detach()

    async def _watchdog_feed(self) -> None:
        if not self.network.radio_present:
            raise ConnectionResetError("virtual radio unplugged")

    async def load_network_info(self, *, load_devices: bool = False) -> None:
        if self.network.backup is None:
            raise zigpy.exceptions.NetworkNotFormed("virtual radio has no network")
        backup = zigpy.backups.NetworkBackup.from_dict(self.network.backup)
        self.state.network_info = backup.network_info
        self.state.node_info = backup.node_info

    async def write_network_info(self, *, network_info: Any, node_info: Any) -> None:
        node_info = node_info.replace(
            ieee=t.EUI64.convert(COORDINATOR_IEEE),
            nwk=t.NWK(0x0000),
            model="Virtual Coordinator",
            manufacturer="gatewayd",
            version="1.0",
        )
        backup = zigpy.backups.NetworkBackup(network_info=network_info, node_info=node_info)
        self.network.backup = backup.as_dict()
        self.network.save()

    async def reset_network_info(self) -> None:
        self.network.backup = None
        self.network.save()

    async def start_network(self) -> None:
        await self.load_network_info()
        ieee, nwk = self.state.node_info.ieee, self.state.node_info.nwk
        dev = self.add_device(ieee=ieee, nwk=nwk)
        dev.node_desc = zdo_t.NodeDescriptor(
            logical_type=zdo_t.LogicalType.Coordinator,
            complex_descriptor_available=0,
            user_descriptor_available=0,
            reserved=0,
            aps_flags=0,
            frequency_band=zdo_t.NodeDescriptor.FrequencyBand.Freq2400MHz,
            mac_capability_flags=zdo_t.NodeDescriptor.MACCapabilityFlags.AllocateAddress,
            manufacturer_code=0x0000,
            maximum_buffer_size=82,
            maximum_incoming_transfer_size=82,
            server_mask=0,
            maximum_outgoing_transfer_size=82,
            descriptor_capability_field=zdo_t.NodeDescriptor.DescriptorCapability.NONE,
        )
        ep = dev.add_endpoint(1)
        ep.status = zigpy.endpoint.Status.ZDO_INIT
        ep.profile_id = 0x0104
        ep.device_type = 0x0005
        dev.model = "Virtual Coordinator"
        dev.manufacturer = "gatewayd"
        self.network.network_started()

    async def force_remove(self, dev: Any) -> None:
        lock = self.network.locks.get(str(dev.ieee))
        if lock is not None:
            lock.mem.joined = False
            self.network.save()

    async def add_endpoint(self, descriptor: Any) -> None:
        return None

    async def permit_ncp(self, time_s: int = 60) -> None:
        self.network.permit(time_s)

    async def permit_with_link_key(self, node: Any, link_key: Any, time_s: int = 60) -> None:
        self.network.permit(time_s)

    async def send_packet(self, packet: Any) -> None:
        """On the air at once, like a radio stack that writes the frame to its serial port
        before it awaits the radio's confirmation (the yield after it); the answers come later,
        from the loop."""
        if not self.network.radio_present or self.network.app is not self:
            raise zigpy.exceptions.DeliveryError("virtual radio is not connected")
        await self.network.hang_if_frozen()
        if packet.dst.addr_mode == t.AddrMode.Broadcast:
            self.network.broadcast(packet)
        elif packet.dst.addr_mode != t.AddrMode.NWK or packet.dst.address != 0x0000:
            try:
                self.network.deliver(packet)  # not to ourselves
            except zigpy.exceptions.DeliveryError:
                await asyncio.sleep(self.network.delivery_failure_s)
                raise
        await asyncio.sleep(0)
