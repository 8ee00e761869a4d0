'use strict';
// Tells the fs hooks which read is node's CommonJS loader reading the module it loads.
// Module._extensions['.js'/'.json'] read the file (fs.readFileSync) before compiling it; we
// note the filename while the extension runs and skip the first read of exactly that path.
// The module's own top-level code runs inside the same call, so only that one read is
// skipped: a module reading a config file at load time is still seen.

const Module = require('module');

let pending = null;

function isLoaderRead(p) {
  if (pending !== null && p === pending) {
    pending = null;
    return true;
  }
  return false;
}

function install(kit) {
  for (const ext of ['.js', '.json', '.cjs']) {
    kit.replace(Module._extensions, ext, (orig) => function (module, filename) {
      const outer = pending;
      pending = filename;
      try {
        return Reflect.apply(orig, this, arguments);
      } finally {
        pending = outer;
      }
    });
  }
}

module.exports = { isLoaderRead, install };
