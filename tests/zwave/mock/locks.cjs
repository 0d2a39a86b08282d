// Mock Z-Wave door locks for zwave-js's mock-server, plus a loopback HTTP control channel through
// which tests act like a person at the door (keypad, thumb turn, jam, battery, radio faults).
//
// Environment: ZWAVE_MOCK_LOCKS (number of locks, 1..3, default 2), ZWAVE_MOCK_CONTROL_PORT
// (control channel port on 127.0.0.1; 0 or unset: no control channel), ZWAVE_MOCK_SECURITY_KEYS
// (JSON {S0_Legacy, S2_Unauthenticated, S2_Authenticated, S2_AccessControl: hex}: the mock
// controller's network keys, zwave-server's own; a joining S2 node needs them), ZWAVE_MOCK_HOME_ID
// (the controller's home id, default 0x7e57d00d), ZWAVE_MOCK_NUM_USERS (every lock's User Code
// CC reports this many supported users instead of its model's; "unread": it has its model's but
// never answers Users Number Get, so zwave-js's interview never learns the count), ZWAVE_MOCK_SUPERVISION ("1": every
// lock supports Supervision CC, so zwave-js supervises its Door Lock Operation Set and User Code
// Set and returns the lock's Supervision status; the mock node's default SupervisionCCHooks answer
// a behaviour's "ok" with Success and its "fail" with Fail), ZWAVE_MOCK_NOTIFICATION_V1 ("1": every
// lock has Notification CC version 1, an older lock that reports Alarm CC v1 only: alarm_raw; and
// lock 3 is a Yale YRD226 ZW2, whose zwave-js device file maps its alarms to notifications, and
// lock 4 a Yale YRD410-F ZW3, whose file maps only alarm type 132, to Access Control 254).
//
// Control channel: POST /node/<id>/<what> with a JSON body; 200 {"ok": true} or 4xx {"error"}.
//   keypad_unlock {slot_id}, keypad_lock, manual_lock, manual_unlock, auto_lock, wrong_code, jam,
//   battery {level: 0..1}, offline, online, tamper, door_open, door_close,
//   fault {kind: none|no_reply|delay|drop_code|refuse|fail|no_readback, delay_s?}, state (GET-like:
//   returns state), ("no_reply" with delay_s: the swallowed command is carried out delay_s later,
//   unanswered), ("no_readback": the next User Code Set is carried out, and every User Code Get
//   after it goes unanswered until the fault is changed: a read-back lost on the air),
//   ("fail": the next lock/unlock or code set is not carried out and is answered "fail", which a
//   supervised lock sends as Supervision Report Fail and an unsupervised one cannot say at all),
//   duplicates {mode: notify|silent|accept} (a code another slot holds: refused with Access
//   Control 0x0F naming the slot, refused without a word, or stored; reset: notify; a refusal
//   is answered "fail", i.e. Supervision Fail on a supervised lock),
//   code_notify {delay_s} (how long after a write a masking lock sends "user code added" or
//   "deleted"; default 0.02 s, reset with the lock),
//   reset (faults none, codes cleared, bolt locked, door closed, battery 90 %, online; the lock's
//   reports reach zwave-js before the answer, so its cache agrees with the lock).
//   Odd reports, as real locks send them (an Access Control bolt event or a Door Lock report
//   moves the mock's bolt too, unless late): notify_raw {type, event, params?: [bytes], late?},
//   mode_raw {mode} (the bolt in any currentMode, reported), battery_raw {level}
//   (a Battery report with any level byte, e.g. 255: "battery low"), user_code_raw {slot_id,
//   status, code: [bytes]} (an unsolicited User Code report with any bytes as the code), and
//   readback_raw {status, code: [bytes]} (the User Code Get that follows the next User Code
//   Set, its read-back, is answered with these), alarm_raw {type, level} (an Alarm CC v1 report:
//   alarmType and alarmLevel only).
// POST /controller/reset: reset every lock in the network, and if the lock that waited for
//   inclusion has joined, put a new one (same model, next free node id) in inclusion mode.
//   Returns {nodes: [ids], pending: id|null}.
// POST /controller/pending_security {classes: ["S2_AccessControl", "S0_Legacy", ...]}: the lock
//   waiting for inclusion lists Security 2 (and Security, with S0_Legacy) and asks for these
//   classes in S2 bootstrapping (none: insecure again). Needs ZWAVE_MOCK_SECURITY_KEYS. Returns
//   {id, pin}: the 5-digit PIN of its DSK, as printed on a real lock's label.
// POST /controller/remove_node {node_id}: the node leaves the controller's node table (excluded
//   or removed as failed through another client while zwave-server was away); zwave-js, started
//   again, no longer lists it. Not undone by reset.
// Remove Failed Node (zwave-js's removeFailedNode) takes a lock that is offline out of the node
//   table: zwave-js says "node removed". Not undone by reset.

"use strict";

const http = require("node:http");

// Locks: real manufacturer/product ids so zwave-js applies its device config (manufacturer, label).
const LOCKS = [
	{ id: 2, manufacturerId: 0x0129, productType: 0x8002, productId: 0x46d5, numUsers: 20, masked: false }, // Yale YRD256-ZW3
	{ id: 3, manufacturerId: 0x003b, productType: 0x6341, productId: 0x5044, numUsers: 30, masked: false }, // Allegion BE469
	{ id: 4, manufacturerId: 0x0090, productType: 0x0001, productId: 0x0642, numUsers: 10, masked: true }, // Kwikset 916: masks codes
];
// MockControllerStateKeys.InclusionState and MockControllerInclusionState.Idle (zwave-js 15)
const INCLUSION_STATE = "inclusionState";
const INCLUSION_IDLE = 0;
const CODE_MIN = 4;
const CODE_MAX = 8;

// Access Control (6) events
const AC = {
	MANUAL_LOCK: 1, MANUAL_UNLOCK: 2, RF_LOCK: 3, RF_UNLOCK: 4, KEYPAD_LOCK: 5, KEYPAD_UNLOCK: 6,
	AUTO_LOCK: 9, JAMMED: 11, CODE_DELETED: 13, CODE_ADDED: 14, CODE_DUPLICATE: 15, DOOR_OPEN: 22,
	DOOR_CLOSED: 23,
};
// Access Control events that say the bolt moved: event -> locked
const AC_BOLT = new Map([[1, true], [3, true], [5, true], [9, true], [33, true], [35, true],
	[2, false], [4, false], [6, false], [34, false], [36, false]]);
const DUPLICATE_MODES = ["notify", "silent", "accept"];

exports.default = function mockConfig({ require: req }) {
	const cc = req("@zwave-js/cc");
	const { CommandClasses, SecurityClass, generateECDHKeyPair, dskToString } = req("@zwave-js/core");
	const { createMockZWaveRequestFrame, getDefaultMockControllerCapabilities } = req("@zwave-js/testing");
	const { FunctionType } = req("@zwave-js/serial");
	const {
		AddNodeToNetworkRequest, AddNodeType, ApplicationCommandRequest, RemoveFailedNodeRequest,
		RemoveFailedNodeRequestStatusReport, RemoveFailedNodeResponse,
	} = req("@zwave-js/serial/serialapi");

	const alarmV1 = process.env.ZWAVE_MOCK_NOTIFICATION_V1 === "1";
	const models = alarmV1
		? LOCKS.map((l) => {
			if (l.id === 3) return { ...l, manufacturerId: 0x0129, productType: 0x8002, productId: 0x0600 };
			if (l.id === 4) return { ...l, manufacturerId: 0x0129, productType: 0x8107, productId: 0x49d1, masked: false };
			return l;
		})
		: LOCKS;
	const count = Math.max(1, Math.min(models.length, Number(process.env.ZWAVE_MOCK_LOCKS || "2")));
	const controlPort = Number(process.env.ZWAVE_MOCK_CONTROL_PORT || "0");
	const supervised = process.env.ZWAVE_MOCK_SUPERVISION === "1";
	const usersUnread = process.env.ZWAVE_MOCK_NUM_USERS === "unread";
	const securityKeys = process.env.ZWAVE_MOCK_SECURITY_KEYS
		? Object.fromEntries(
			Object.entries(JSON.parse(process.env.ZWAVE_MOCK_SECURITY_KEYS)).map(([k, v]) => [k, Buffer.from(v, "hex")]),
		)
		: undefined;
	// what the lock waiting for inclusion asks for in S2 bootstrapping (pending_security)
	let pendingSecurity = { classes: [], keyPair: undefined };

	const fresh = () => ({
		mode: cc.DoorLockMode.Secured,
		battery: 90,
		fault: "none",
		delayMs: 0,
		swallowing: false,
		offline: false,
		codes: new Map(), // slot -> code (string)
		duplicates: "notify",
		notifyMs: 20, // code_notify: how late a masked lock says "user code added/deleted"
		door: 1, // 0 open, 1 closed
		lastNotification: { 6: 0, 7: 0, 8: 0 },
		readback: undefined, // readback_raw: the answer to the read-back of the next User Code Set
		wrote: false, // a User Code Set came since the last User Code Get
	});
	const st = (self) => {
		if (!self.state.has("gw")) self.state.set("gw", fresh());
		return self.state.get("gw");
	};
	// node id -> lock model; a lock included later gets the model of the one that waited
	const specs = new Map(models.map((l) => [l.id, l]));
	const lockOf = (self) => specs.get(self.id);
	const send = (controller, self, ccObj) =>
		self.sendToController(createMockZWaveRequestFrame(ccObj, { ackRequested: true }));
	// Straight to the host, resolved when zwave-js has acknowledged the frame.
	const deliver = (controller, self, ccObj) => {
		const msg = new ApplicationCommandRequest({ command: ccObj });
		msg.getNodeId = () => self.id;
		return controller.sendMessageToHost(msg, self);
	};
	const notify = (controller, self, type, event, params) => {
		st(self).lastNotification[type] = event;
		return send(controller, self, new cc.NotificationCCReport({
			nodeId: controller.ownNodeId,
			notificationType: type,
			notificationEvent: event,
			eventParameters: params === undefined ? undefined : Uint8Array.from(params),
		}));
	};
	const operationReport = (controller, self) => {
		const s = st(self);
		return new cc.DoorLockCCOperationReport({
			nodeId: controller.ownNodeId,
			currentMode: s.mode,
			targetMode: s.mode,
			outsideHandlesCanOpenDoor: [false, false, false, false],
			insideHandlesCanOpenDoor: [true, true, true, true],
			doorStatus: s.door === 0 ? "open" : "closed",
			boltStatus: s.mode === cc.DoorLockMode.Secured ? "locked" : "unlocked",
			latchStatus: "closed",
			lockTimeout: undefined,
			duration: undefined,
		});
	};
	const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

	const isCommand = (received) =>
		received instanceof cc.DoorLockCCOperationSet || received instanceof cc.UserCodeCCSet;

	// Radio faults first: an offline lock answers nothing, a slow one answers late. "no_reply"
	// swallows the next command and everything after it, until the command after that; with
	// delay_s, until that command is carried out after all, delay_s later.
	const faults = {
		async handleCC(controller, self, received) {
			const s = st(self);
			if (s.offline) return { action: "stop" };
			if (s.fault === "no_reply") {
				if (isCommand(received)) {
					if (s.swallowing) {
						s.fault = "none";
						s.swallowing = false;
						return undefined;
					}
					s.swallowing = true;
					if (s.delayMs > 0) {
						// a lock that acts late: the command is carried out after delay_s, unanswered,
						// and the lock answers again from then on
						setTimeout(() => {
							s.fault = "none";
							s.swallowing = false;
							Promise.resolve(userCode.handleCC(controller, self, received))
								.then(() => doorLock.handleCC(controller, self, received))
								.catch(() => {});
						}, s.delayMs);
					}
				}
				if (s.swallowing) return { action: "stop" };
			}
			if (s.fault === "delay" && s.delayMs > 0) await sleep(s.delayMs);
			return undefined;
		},
	};
	// "refuse" and "drop_code" hit one command only.
	const consume = (s, kind) => {
		if (s.fault !== kind) return false;
		s.fault = "none";
		return true;
	};

	const battery = {
		handleCC(controller, self, received) {
			if (received instanceof cc.BatteryCCGet) {
				const level = st(self).battery;
				return {
					action: "sendCC",
					cc: new cc.BatteryCCReport({ nodeId: controller.ownNodeId, level: level <= 5 ? 0xff : level }),
				};
			}
		},
	};

	const notification = {
		handleCC(controller, self, received) {
			if (received instanceof cc.NotificationCCGet) {
				const type = received.notificationType ?? 6;
				return {
					action: "sendCC",
					cc: new cc.NotificationCCReport({
						nodeId: controller.ownNodeId,
						notificationType: type,
						notificationEvent: 0,
					}),
				};
			}
			if (received instanceof cc.NotificationCCSet) return { action: "ok" };
		},
	};

	const doorLock = {
		handleCC(controller, self, received) {
			const s = st(self);
			if (received instanceof cc.DoorLockCCOperationGet) {
				return { action: "sendCC", cc: operationReport(controller, self) };
			}
			if (received instanceof cc.DoorLockCCOperationSet) {
				if (consume(s, "fail")) return { action: "fail" }; // the bolt stays, nothing reported
				const refused = consume(s, "refuse");
				if (!refused) s.mode = received.mode;
				// Like a real lock: the bolt moves, then it reports the new state and what moved it.
				setTimeout(async () => {
					try {
						if (!refused) {
							const locked = s.mode === cc.DoorLockMode.Secured;
							await notify(controller, self, 6, locked ? AC.RF_LOCK : AC.RF_UNLOCK);
						}
						await send(controller, self, operationReport(controller, self));
					} catch (e) {
						console.error("mock: report failed", e && e.message);
					}
				}, 20);
				return { action: "ok" };
			}
		},
	};

	const userCode = {
		handleCC(controller, self, received) {
			const s = st(self);
			const lock = lockOf(self);
			if (usersUnread && received instanceof cc.UserCodeCCUsersNumberGet) return { action: "stop" };
			if (received instanceof cc.UserCodeCCGet) {
				const slot = received.userId;
				if (slot < 1 || slot > lock.numUsers) {
					return {
						action: "sendCC",
						cc: new cc.UserCodeCCReport({
							nodeId: controller.ownNodeId, userId: slot, userIdStatus: cc.UserIDStatus.StatusNotAvailable,
						}),
					};
				}
				if (s.fault === "no_readback" && s.swallowing) return { action: "stop" };
				const afterWrite = s.wrote;
				s.wrote = false;
				if (s.readback && afterWrite) {
					const odd = s.readback;
					s.readback = undefined;
					return {
						action: "sendCC",
						cc: new cc.UserCodeCCReport({
							nodeId: controller.ownNodeId, userId: slot, userIdStatus: odd.status, userCode: odd.code,
						}),
					};
				}
				const code = s.codes.get(slot);
				return {
					action: "sendCC",
					cc: new cc.UserCodeCCReport({
						nodeId: controller.ownNodeId,
						userId: slot,
						userIdStatus: code ? cc.UserIDStatus.Enabled : cc.UserIDStatus.Available,
						userCode: code ? (lock.masked ? "*".repeat(code.length) : code) : "",
					}),
				};
			}
			if (received instanceof cc.UserCodeCCSet) {
				s.wrote = true;
				if (s.fault === "no_readback") s.swallowing = true;
				const slot = received.userId;
				if (slot < 1 || slot > lock.numUsers) return { action: "fail" };
				const clearing = received.userIdStatus === cc.UserIDStatus.Available;
				if (clearing) {
					if (!consume(s, "refuse")) {
						s.codes.delete(slot);
						if (lock.masked) setTimeout(() => notify(controller, self, 6, AC.CODE_DELETED, [slot]).catch(() => {}), s.notifyMs);
					}
					return { action: "ok" };
				}
				if (consume(s, "fail")) return { action: "fail" }; // not stored, nothing reported
				let code = received.userCode;
				if (typeof code !== "string") code = Buffer.from(code).toString("ascii");
				// A lock silently ignores codes it cannot hold (wrong length, or told to refuse).
				if (consume(s, "refuse") || code.length < CODE_MIN || code.length > CODE_MAX) return { action: "ok" };
				// Like real locks: a code another slot holds is not added, and the lock says so.
				const taken = [...s.codes].some(([other, held]) => other !== slot && held === code);
				if (taken && s.duplicates !== "accept") {
					if (s.duplicates === "notify") {
						setTimeout(() => notify(controller, self, 6, AC.CODE_DUPLICATE, [slot]).catch(() => {}), 20);
					}
					return { action: "fail" };
				}
				const dropAfter = s.delayMs;
				if (consume(s, "drop_code")) {
					if (dropAfter === 0) return { action: "ok" }; // never stored
					setTimeout(() => s.codes.delete(slot), dropAfter); // stored, then lost
				}
				s.codes.set(slot, code);
				if (lock.masked) setTimeout(() => notify(controller, self, 6, AC.CODE_ADDED, [slot]).catch(() => {}), s.notifyMs);
				return { action: "ok" };
			}
		},
	};

	const nodeOptions = (lock, security = { classes: [] }) => ({
		id: lock.id,
		capabilities: {
			manufacturerId: lock.manufacturerId,
			productType: lock.productType,
			productId: lock.productId,
			firmwareVersion: "6.8",
			genericDeviceClass: 0x40, // Entry Control
			specificDeviceClass: 0x03, // Secure Keypad Door Lock
			isListening: true,
			commandClasses: [
				{ ccId: CommandClasses.Version, isSupported: true, version: 2 },
				{ ccId: CommandClasses["Manufacturer Specific"], isSupported: true, version: 2 },
				{ ccId: CommandClasses["Z-Wave Plus Info"], isSupported: true, version: 2 },
				{ ccId: CommandClasses["Door Lock"], isSupported: true, version: 4 },
				{
					ccId: CommandClasses["User Code"], isSupported: true, version: 1,
					numUsers: process.env.ZWAVE_MOCK_NUM_USERS && !usersUnread
						? Number(process.env.ZWAVE_MOCK_NUM_USERS)
						: lock.numUsers,
				},
				alarmV1 ? { ccId: CommandClasses.Notification, isSupported: true, version: 1 } : {
					ccId: CommandClasses.Notification, isSupported: true, version: 8,
					supportsV1Alarm: false,
					notificationTypesAndEvents: {
						6: [1, 2, 3, 4, 5, 6, 9, 11, 13, 14, 22, 23],
						7: [3, 4],
						8: [10, 11],
					},
				},
				{ ccId: CommandClasses.Battery, isSupported: true, version: 1 },
				...(supervised ? [{ ccId: CommandClasses.Supervision, isSupported: true, version: 1 }] : []),
				...(security.classes.length ? [{ ccId: CommandClasses["Security 2"], isSupported: true, version: 1 }] : []),
				...(security.classes.includes(SecurityClass.S0_Legacy)
					? [{ ccId: CommandClasses.Security, isSupported: true, version: 1 }]
					: []),
			],
			...(security.classes.length ? { securityClasses: new Set(security.classes) } : {}),
		},
		behaviors: [faults, battery, notification, doorLock, userCode],
	});
	const nodes = models.slice(0, count).map((lock) => nodeOptions(lock));
	// The next lock waits in inclusion mode: it joins when the controller starts inclusion.
	const pendingModel = count < models.length ? models[count] : undefined;

	function onInit(controller, mockNodes) {
		const byId = new Map(mockNodes.map((n) => [n.id, n]));
		const allNodes = () => (controller.nodes ? [...controller.nodes.values()] : [...byId.values()]);
		let armed = 0;
		const armInclusion = () => {
			if (!pendingModel || controller.nodePendingInclusion) return;
			const ids = [...specs.keys(), ...allNodes().map((n) => n.id)];
			const id = armed++ === 0 ? pendingModel.id : Math.max(...ids) + 1;
			const model = { ...pendingModel, id };
			specs.set(id, model);
			pend(model);
		};
		const pend = (model) => {
			const security = pendingSecurity;
			const { behaviors, ...rest } = nodeOptions(model, security);
			const setup = (node) => {
				node.defineBehavior(...behaviors);
				// the key pair whose PIN pending_security returned (MockNode.create made a new one)
				if (security.keyPair) node.ecdhKeyPair = security.keyPair;
			};
			controller.nodePendingInclusion = { ...rest, setup };
		};
		armInclusion();
		// zwave-js ends an inclusion with two Stops (finishInclusion, then stopInclusionNoCallback);
		// the mock controller takes a Stop while idle as the start of a new inclusion and would
		// stay in inclusion mode for good. A Stop while idle does nothing, as on a real stick.
		controller.defineBehavior({
			onHostMessage(ctrl, msg) {
				const idle = (ctrl.state.get(INCLUSION_STATE) ?? INCLUSION_IDLE) === INCLUSION_IDLE;
				return msg instanceof AddNodeToNetworkRequest && msg.addNodeType === AddNodeType.Stop && idle;
			},
		});
		// Remove failed node (the mock controller has no behaviour for it): a lock that is offline
		// leaves the node table, as on a real stick; any other node is "not in the failed list".
		controller.defineBehavior({
			async onHostMessage(ctrl, msg) {
				if (!(msg instanceof RemoveFailedNodeRequest)) return false;
				const node = ctrl.nodes.get(msg.failedNodeId);
				const failed = node !== undefined && lockOf(node) !== undefined && st(node).offline;
				await ctrl.sendMessageToHost(new RemoveFailedNodeResponse({
					removeStatus: failed ? 0 : 0x08, payload: Uint8Array.from([failed ? 0 : 0x08]),
				}));
				if (!failed) return true;
				ctrl.removeNode(node);
				await ctrl.sendMessageToHost(new RemoveFailedNodeRequestStatusReport({
					callbackId: msg.callbackId, removeStatus: 1, payload: Uint8Array.from([msg.callbackId, 1]),
				}));
				return true;
			},
		});
		if (!controlPort) return;
		const resetLock = async (self) => {
			const s = st(self);
			Object.assign(s, fresh());
			self.autoAckControllerFrames = true;
			await deliver(controller, self, operationReport(controller, self));
			await deliver(controller, self, new cc.BatteryCCReport({ nodeId: controller.ownNodeId, level: s.battery }));
		};
		const controllerActions = {
			async reset() {
				const ids = [];
				for (const self of allNodes()) {
					if (!lockOf(self)) continue;
					await resetLock(self);
					ids.push(self.id);
				}
				armInclusion();
				const pending = controller.nodePendingInclusion ? controller.nodePendingInclusion.id : null;
				return { nodes: ids.sort((a, b) => a - b), pending };
			},
			async pending_security(p) {
				const pending = controller.nodePendingInclusion;
				if (!pending) throw Object.assign(new Error("no lock waits for inclusion"), { status: 409 });
				const classes = (p.classes || []).map((name) => {
					if (!(name in SecurityClass)) throw Object.assign(new Error(`unknown class ${name}`), { status: 400 });
					return SecurityClass[name];
				});
				const keyPair = classes.length ? await generateECDHKeyPair() : undefined;
				pendingSecurity = { classes, keyPair };
				pend(specs.get(pending.id));
				// zwave-js puts the PIN into the first two bytes of the node's public key
				const pin = keyPair ? dskToString(keyPair.publicKey.subarray(0, 16)).slice(0, 5) : null;
				return { id: pending.id, pin };
			},
			async remove_node(p) {
				const node = controller.nodes.get(Number(p.node_id));
				if (!node) throw Object.assign(new Error("no such node"), { status: 404 });
				controller.removeNode(node);
				return { nodes: [...controller.nodes.keys()].sort((a, b) => a - b) };
			},
		};
		const actions = {
			async keypad_unlock(self, p) {
				st(self).mode = cc.DoorLockMode.Unsecured;
				await notify(controller, self, 6, AC.KEYPAD_UNLOCK, [Number(p.slot_id ?? 1)]);
				await send(controller, self, operationReport(controller, self));
			},
			async keypad_lock(self) {
				st(self).mode = cc.DoorLockMode.Secured;
				await notify(controller, self, 6, AC.KEYPAD_LOCK);
				await send(controller, self, operationReport(controller, self));
			},
			async manual_lock(self) {
				st(self).mode = cc.DoorLockMode.Secured;
				await notify(controller, self, 6, AC.MANUAL_LOCK);
				await send(controller, self, operationReport(controller, self));
			},
			async manual_unlock(self) {
				st(self).mode = cc.DoorLockMode.Unsecured;
				await notify(controller, self, 6, AC.MANUAL_UNLOCK);
				await send(controller, self, operationReport(controller, self));
			},
			async auto_lock(self) {
				st(self).mode = cc.DoorLockMode.Secured;
				await notify(controller, self, 6, AC.AUTO_LOCK);
				await send(controller, self, operationReport(controller, self));
			},
			// A wrong code at the keypad: Home Security "Tampering, invalid code".
			async wrong_code(self) { await notify(controller, self, 7, 4); },
			async jam(self) { await notify(controller, self, 6, AC.JAMMED); },
			async tamper(self) { await notify(controller, self, 7, 3); },
			async door_open(self) { st(self).door = 0; await notify(controller, self, 6, AC.DOOR_OPEN, [0]); },
			async door_close(self) { st(self).door = 1; await notify(controller, self, 6, AC.DOOR_CLOSED); },
			async battery(self, p) {
				const level = Math.max(0, Math.min(100, Math.round(Number(p.level ?? 1) * 100)));
				st(self).battery = level;
				await send(controller, self, new cc.BatteryCCReport({
					nodeId: controller.ownNodeId, level: level <= 5 ? 0xff : level,
				}));
			},
			async offline(self) { st(self).offline = true; self.autoAckControllerFrames = false; },
			async online(self) { st(self).offline = false; self.autoAckControllerFrames = true; },
			async fault(self, p) {
				const kind = String(p.kind ?? "none");
				if (!["none", "no_reply", "delay", "drop_code", "refuse", "fail", "no_readback"].includes(kind)) {
					throw Object.assign(new Error("unknown fault kind"), { status: 400 });
				}
				const s = st(self);
				s.fault = kind;
				s.delayMs = Math.round(Number(p.delay_s ?? 0) * 1000);
				s.swallowing = false;
			},
			async duplicates(self, p) {
				const mode = String(p.mode ?? "notify");
				if (!DUPLICATE_MODES.includes(mode)) {
					throw Object.assign(new Error("unknown duplicates mode"), { status: 400 });
				}
				st(self).duplicates = mode;
			},
			async code_notify(self, p) { st(self).notifyMs = Math.round(Number(p.delay_s ?? 0.02) * 1000); },
			async state(self) {
				const s = st(self);
				return {
					locked: s.mode === cc.DoorLockMode.Secured, battery: s.battery, fault: s.fault,
					offline: s.offline, slots: [...s.codes.keys()], swallowing: s.swallowing,
				};
			},
			async reset(self) { await resetLock(self); },
			async notify_raw(self, p) {
				// a bolt event moved the bolt, so a later read answers the same (as for mode_raw);
				// not a late one (late: true), the word of a move the bolt has since left
				const locked = Number(p.type) === 6 && !p.late ? AC_BOLT.get(Number(p.event)) : undefined;
				if (locked !== undefined) st(self).mode = locked ? cc.DoorLockMode.Secured : cc.DoorLockMode.Unsecured;
				await notify(controller, self, Number(p.type), Number(p.event), p.params ?? undefined);
			},
			async alarm_raw(self, p) {
				await send(controller, self, new cc.NotificationCCReport({
					nodeId: controller.ownNodeId, alarmType: Number(p.type), alarmLevel: Number(p.level ?? 0),
				}));
			},
			// the bolt is in the mode it reports, so a later read answers the same: a start-up
			// read a test overtakes would otherwise take the report back
			async mode_raw(self, p) {
				st(self).mode = Number(p.mode);
				await send(controller, self, operationReport(controller, self));
			},
			async battery_raw(self, p) {
				await send(controller, self, new cc.BatteryCCReport({ nodeId: controller.ownNodeId, level: Number(p.level) }));
			},
			async user_code_raw(self, p) {
				await send(controller, self, new cc.UserCodeCCReport({
					nodeId: controller.ownNodeId, userId: Number(p.slot_id), userIdStatus: Number(p.status ?? 1),
					userCode: Uint8Array.from(p.code),
				}));
			},
			async readback_raw(self, p) {
				st(self).readback = { status: Number(p.status ?? 1), code: Uint8Array.from(p.code) };
			},
		};
		const server = http.createServer((req, res) => {
			let body = "";
			req.on("data", (c) => { body += c; });
			req.on("end", async () => {
				const m = /^\/node\/(\d+)\/([a-z_]+)$/.exec(req.url || "");
				const reply = (status, obj) => {
					res.writeHead(status, { "content-type": "application/json" });
					res.end(JSON.stringify(obj));
				};
				const c = /^\/controller\/([a-z_]+)$/.exec(req.url || "");
				if (c && req.method === "POST" && controllerActions[c[1]]) {
					try {
						const params = body ? JSON.parse(body) : {};
						return reply(200, { ok: true, result: await controllerActions[c[1]](params) });
					} catch (e) {
						return reply(e.status || 500, { error: String((e && e.message) || e) });
					}
				}
				if (!m || req.method !== "POST") return reply(404, { error: "POST /node/<id>/<what>" });
				const self = (controller.nodes && controller.nodes.get(Number(m[1]))) || byId.get(Number(m[1]));
				const fn = actions[m[2]];
				if (!self) return reply(404, { error: "no such node" });
				if (!fn) return reply(400, { error: "unknown action" });
				try {
					const params = body ? JSON.parse(body) : {};
					const result = await fn(self, params);
					reply(200, { ok: true, result: result ?? null });
				} catch (e) {
					reply(e.status || 500, { error: String((e && e.message) || e) });
				}
			});
		});
		server.listen(controlPort, "127.0.0.1", () => {
			console.log(`Mock control listening on http://127.0.0.1:${controlPort}`);
		});
	}

	const homeId = Number(process.env.ZWAVE_MOCK_HOME_ID || 0x7e57d00d);
	// zwave-js refuses removeFailedNode on a stick that does not list the function (see onInit)
	const { supportedFunctionTypes } = getDefaultMockControllerCapabilities();
	const capabilities = { supportedFunctionTypes: [...supportedFunctionTypes, FunctionType.RemoveFailedNode] };
	return { controller: { homeId, capabilities, ...(securityKeys ? { securityKeys } : {}) }, nodes, onInit };
};
