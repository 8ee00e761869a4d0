'use strict';
// The probe's connection to the agent: one Unix socket, hello first, a bounded queue written
// in batches from the event loop (every 5 ms at most), heartbeats, reconnect with backoff. Nothing here ever keeps
// the app alive (socket and timers are unref'd) or waits on the agent: when the agent is away
// or slow, events are dropped and counted (docs/probe-contract.md).

const net = require('net');
const { FrameReader, ProtocolError, encode, encodeMany, decodeFromAgent } = require('./framing');

const QUEUE_MAX = 10000; // events waiting for the socket
const HIGH_WATER = 1 << 20; // bytes the socket may hold unsent before we stop writing
const BATCH_MAX = 512; // frames per write
// Events are written at most every FLUSH_MS (or at once when FLUSH_AT are waiting): one
// event per request would otherwise cost one write syscall per event.
const FLUSH_MS = 5;
const FLUSH_AT = 256;
const HEARTBEAT_MS = 10000;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30000;

class Client {
  /**
   * @param {object} o
   * @param {string} o.socket path of the agent socket
   * @param {() => object} o.hello builds the hello's data (already_running is set here)
   * @param {() => object} o.heartbeat builds the heartbeat's data
   * @param {(msg: object) => void} o.onMessage a decoded frame from the agent
   * @param {(fn: () => any) => any} o.guard runs fn with the probe's hooks muted
   * @param {object} o.envelope pid, runtime, runtime_version, probe_version
   * @param {object} o.counters shared counters: sent, dropped, dropped_by
   */
  constructor(o) {
    Object.assign(this, o);
    this.state = 'idle'; // idle | connecting | connected | away | closed
    this.queue = [];
    this.sock = null;
    this.backoff = BACKOFF_MIN_MS;
    this.helloSent = 0; // hellos sent so far: every hello after the first says already_running
    this.flushScheduled = false;
    this.flushTimer = null;
    this.retryTimer = null;
    this.hbTimer = null;
  }

  start() {
    this.hbTimer = setInterval(() => this.sendHeartbeat(), HEARTBEAT_MS);
    this.hbTimer.unref();
    this.connect();
  }

  connect() {
    if (this.state === 'closed') return;
    this.state = 'connecting';
    const reader = new FrameReader();
    // the probe's own socket must not become a net.Socket.connect event: guard()
    const sock = this.guard(() => net.createConnection({ path: this.socket }));
    this.sock = sock;
    sock.unref();
    sock.on('connect', () => {
      if (this.sock !== sock) return;
      this.state = 'connected';
      this.backoff = BACKOFF_MIN_MS;
      this.writeNow(this.frame(100, this.helloData()));
      this.flush();
    });
    sock.on('data', (chunk) => {
      let payloads;
      try {
        payloads = reader.feed(chunk);
        for (const p of payloads) this.onMessage(decodeFromAgent(p));
      } catch (e) {
        // a frame we cannot read: drop the connection (and reconnect), never throw into the app
        if (!(e instanceof ProtocolError)) this.count('error');
        sock.destroy();
      }
    });
    sock.on('drain', () => this.flush());
    sock.on('error', () => {}); // 'close' follows
    sock.on('close', () => {
      if (this.sock !== sock) return;
      this.sock = null;
      if (this.state === 'closed') return;
      this.state = 'away';
      // what waits in the queue is lost with the agent: count it
      if (this.queue.length) this.drop('agent_away', this.queue.length);
      this.queue = [];
      this.retryTimer = setTimeout(() => this.connect(), this.backoff);
      this.retryTimer.unref();
      this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
    });
  }

  helloData() {
    const data = this.hello();
    if (this.helloSent++ > 0) data.already_running = true;
    return data;
  }

  /** A second start of the probe: say hello again, flagged already_running. */
  rehello() {
    if (this.state === 'connected') {
      this.helloSent++;
      // one hello per connection (the agent refuses a second): open a fresh one, the
      // agent replaces the old connection by the new (docs/protocol.md rule 6)
      const old = this.sock;
      this.sock = null;
      this.guard(() => old.destroy());
      this.connect();
    } else if (this.state === 'away') {
      clearTimeout(this.retryTimer);
      this.connect();
    }
  }

  frame(type, data) {
    const e = this.envelope;
    return {
      message_type: type, pid: process.pid, runtime: 'nodejs',
      runtime_version: e.runtime_version, probe_version: e.probe_version, time: Date.now(), data,
    };
  }

  count(reason, n = 1) {
    const c = this.counters;
    c.dropped_by[reason] = (c.dropped_by[reason] || 0) + n;
  }

  drop(reason, n = 1) {
    this.counters.dropped += n;
    this.count(reason, n);
  }

  /** On the app's thread: enqueue a trace's data or drop it. Never does I/O. */
  enqueue(data) {
    if (this.state === 'away' || this.state === 'closed') return this.drop('agent_away');
    if (this.queue.length >= QUEUE_MAX) return this.drop('queue_full');
    this.queue.push(this.frame(2, data));
    if (this.queue.length >= FLUSH_AT) {
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => this.flushNow()).unref();
      }
    } else if (!this.flushTimer) {
      this.flushTimer = setTimeout(() => this.flushNow(), FLUSH_MS);
      this.flushTimer.unref();
    }
    return undefined;
  }

  flushNow() {
    this.flushScheduled = false;
    if (this.flushTimer) {
      clearTimeout(this.flushTimer);
      this.flushTimer = null;
    }
    this.flush();
  }

  flush() {
    const sock = this.sock;
    if (this.state !== 'connected' || !sock) return;
    this.guard(() => {
      while (this.queue.length && sock.writableLength < HIGH_WATER) {
        const batch = this.queue.splice(0, BATCH_MAX);
        let buf;
        try {
          buf = encodeMany(batch);
        } catch (e) {
          this.drop('error', batch.length);
          continue;
        }
        sock.write(buf);
        this.counters.sent += batch.length;
      }
    });
  }

  writeNow(msg) {
    const sock = this.sock;
    if (this.state !== 'connected' || !sock) return false;
    this.guard(() => sock.write(encode(msg)));
    return true;
  }

  sendHeartbeat() {
    this.writeNow(this.frame(1, this.heartbeat(this.queue.length)));
  }

  /** Best effort at exit: Unix socket writes of a small frame complete synchronously. */
  sendExit(reason) {
    this.writeNow(this.frame(0, { reason }));
  }

  close() {
    this.state = 'closed';
    clearInterval(this.hbTimer);
    clearTimeout(this.retryTimer);
    clearTimeout(this.flushTimer);
    if (this.sock) this.guard(() => this.sock.end());
    this.queue = [];
  }
}

module.exports = { Client, QUEUE_MAX, HIGH_WATER, HEARTBEAT_MS };
