'use strict';
// child_process: every async API (spawn, exec, execFile, fork) ends in
// ChildProcess.prototype.spawn(options); every sync API (spawnSync, execSync, execFileSync)
// ends in the spawn_sync binding's spawn(options). The binding object is a singleton shared
// with node's internals, so patching its `spawn` also catches calls through references the
// app captured before the attach (`const {execSync} = require('child_process')`).
// Checked on Node 16, 18, 20: process.binding('spawn_sync') is on the allow list (no warning
// unless --pending-deprecation).

const childProcess = require('child_process');

const argv = (options) => {
  if (!options || typeof options !== 'object') return [];
  if (Array.isArray(options.args) && options.args.length) return options.args;
  return [options.file];
};

function install(kit) {
  // blocking: throw, the call site's natural error for a spawn that cannot start
  kit.wrap(childProcess.ChildProcess.prototype, 'spawn', 'child_process.spawn', 'process',
    (options) => argv(options), 'sync');
  let binding = null;
  try {
    binding = process.binding('spawn_sync');
  } catch (e) { /* not on this Node: the sync path is not seen */ }
  kit.wrap(binding, 'spawn', 'child_process.spawnSync', 'process',
    (options) => argv(options), 'sync');
}

module.exports = { family: 'child_process', install };
