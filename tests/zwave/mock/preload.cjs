// Preloaded into zwave-js's mock-server (node -r preload.cjs): makes it reliable on loopback.
// 1. mock-server hands each TCP read to its serial parser as one frame; when TCP coalesces an ACK
//    with the next frame, it dies with "does not start with SOF". Re-split the stream into frames.
// 2. mock-server always announces itself over mDNS; tests must not touch the LAN. Stub it out.
// 3. The mock controller awaits the host's ACK of each frame it sends for 1 s and throws if none
//    comes; thrown while answering a host request, that is an unhandled rejection and the mock
//    process dies (zwave-server, hung or stopped at that moment, then exits when it is back). A
//    controller goes on without the ACK (it retries, then drops the frame), and so does this one.
"use strict";

const net = require("node:net");
const Module = require("node:module");

const SOF = 0x01;

function splitFrames(onFrame) {
	let buf = Buffer.alloc(0);
	let chain = Promise.resolve();
	return (chunk) => {
		buf = Buffer.concat([buf, chunk]);
		while (buf.length > 0) {
			let n;
			if (buf[0] === SOF) {
				if (buf.length < 2) break;
				n = buf[1] + 2;
				if (buf.length < n) break;
			} else {
				n = 1; // ACK/NAK/CAN, or a stray byte the parser may discard on its own
			}
			const frame = Buffer.from(buf.subarray(0, n));
			buf = buf.subarray(n);
			chain = chain.then(() => onFrame(frame)).catch(() => {});
		}
	};
}

const createServer = net.createServer;
net.createServer = function patchedCreateServer(...args) {
	const i = args.findIndex((a) => typeof a === "function");
	if (i >= 0) {
		const listener = args[i];
		args[i] = function (socket) {
			const on = socket.on.bind(socket);
			socket.on = function (event, fn) {
				if (event === "data") return on("data", splitFrames(fn));
				return on(event, fn);
			};
			return listener.call(this, socket);
		};
	}
	return createServer.apply(this, args);
};

const noop = async () => {};
const ciaoStub = {
	getResponder: () => ({
		createService: () => ({ advertise: noop, end: noop, destroy: noop }),
		shutdown: noop,
	}),
};
function toleratesMissingHostACKs(MockController) {
	const expectHostACK = MockController.prototype.expectHostACK;
	if (expectHostACK.tolerant) return;
	const tolerant = async function (timeout, ...rest) {
		try {
			return await expectHostACK.call(this, timeout, ...rest);
		} catch (e) {
			if (this.destroyed) return undefined;
			console.error(`Host did not ACK a frame within ${timeout} ms; going on without it`);
			return undefined;
		}
	};
	tolerant.tolerant = true;
	MockController.prototype.expectHostACK = tolerant;
}

const load = Module._load;
Module._load = function patchedLoad(request, ...rest) {
	if (request === "@homebridge/ciao") return ciaoStub;
	const loaded = load.call(this, request, ...rest);
	if (request === "@zwave-js/testing" && loaded?.MockController) {
		toleratesMissingHostACKs(loaded.MockController);
	}
	return loaded;
};
