'use strict';
// The vulnerable endpoints both victim apps share: each passes request input to one sink.
// Every handler returns a promise of the response text; a rejected promise is the app's own
// error path (HTTP 500 with the error message), which is what a blocked call must reach.

const childProcess = require('child_process');
const fs = require('fs');
const net = require('net');
const dns = require('dns');
const vm = require('vm');

// Captured at module load, before any attach: the JS-level hooks on the module object cannot
// see calls through this reference; the spawn_sync binding hook does.
const { execSync } = require('child_process');
// Also captured at load: the JS fs hook replaces fs.readFileSync on the module object, so
// this reference keeps the original, and only the native layer (uv_fs_open) sees its reads.
const { readFileSync } = require('fs');
// Below the JS layer altogether: libuv's process handle, as node's internals use it.
const { Process } = process.binding('process_wrap');

/** Run `/bin/sh -c cmd` through process_wrap (no child_process involved); resolves its code. */
function rawSpawn(cmd) {
  return new Promise((resolve, reject) => {
    const p = new Process();
    p.onexit = (code) => {
      p.close();
      resolve(`exit ${code}`);
    };
    const err = p.spawn({ file: '/bin/sh', args: ['/bin/sh', '-c', cmd], envPairs: [],
      stdio: [{ type: 'ignore' }, { type: 'ignore' }, { type: 'ignore' }] });
    if (err) reject(new Error(`spawn failed: ${err}`));
  });
}

const SINKS = {
  ping: async () => 'pong',
  exec: (q) => new Promise((resolve, reject) => {
    childProcess.exec(q.cmd, (err, out) => (err ? reject(err) : resolve(out)));
  }),
  execsync: async (q) => execSync(q.cmd).toString(),
  spawnsync: async (q) => childProcess.spawnSync('/bin/sh', ['-c', q.cmd]).stdout.toString(),
  read: (q) => new Promise((resolve, reject) => {
    fs.readFile(q.path, 'utf8', (err, data) => (err ? reject(err) : resolve(data)));
  }),
  readsync: async (q) => fs.readFileSync(q.path, 'utf8'),
  capturedread: async (q) => readFileSync(q.path, 'utf8'),
  // a burst: many hooked calls with one argument before the event loop turns
  readloop: async (q) => {
    for (let i = 0; i < Number(q.n); i++) fs.readFileSync(q.path);
    return 'done';
  },
  rawspawn: (q) => rawSpawn(q.cmd),
  // two threads making hooked calls at once: a worker_threads worker (whose JS no probe hooks)
  // reads one file while the main thread reads another
  workerreads: (q) => new Promise((resolve, reject) => {
    const { Worker } = require('worker_threads');
    const n = Number(q.n);
    const w = new Worker(`const fs = require('fs');
      const { workerData: d } = require('worker_threads');
      for (let i = 0; i < d.n; i++) fs.readFileSync(d.path);`,
    { eval: true, workerData: { path: q.wpath, n } });
    w.on('error', reject);
    w.on('online', () => {
      for (let i = 0; i < n; i++) fs.readFileSync(q.path);
    });
    w.on('exit', () => resolve('done'));
  }),
  readpromise: (q) => fs.promises.readFile(q.path, 'utf8'),
  write: async (q) => {
    fs.writeFileSync(q.path, q.data || '');
    return 'written';
  },
  fetch: async (q) => (await fetch(q.url)).text(),
  connect: (q) => new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port: Number(q.port) }, () => {
      s.end();
      resolve('connected');
    });
    s.on('error', reject);
  }),
  dns: (q) => new Promise((resolve, reject) => {
    dns.lookup(q.host, (err, address) => (err ? reject(err) : resolve(address)));
  }),
  vm: async (q) => String(vm.runInNewContext(q.code, {})),
  // a native addon load (what require('x.node') does); a plain .so is refused by node after
  // dlopen ("did not self-register"), which is enough to reach the hook
  addon: async (q) => {
    try {
      process.dlopen({ exports: {} }, q.path);
      return 'loaded';
    } catch (err) {
      return `not an addon: ${err.message.split('\n')[0]}`;
    }
  },
};

module.exports = { SINKS };
