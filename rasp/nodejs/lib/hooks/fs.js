'use strict';
// fs and fs/promises (the same object as fs.promises). Only calls through the module objects
// are seen: a function the app destructured before the attach keeps the original.
// node's CommonJS loader reads module sources with fs.readFileSync: those reads are the
// runtime loading its own code, not file events (design §4), so the loader's read of the
// file it is loading is skipped (see ../loader.js).

const fs = require('fs');
const loader = require('../loader');

const path1 = (p) => [p];
const path2 = (a, b) => [a, b];
const openArgs = (p, flags) => [p, typeof flags === 'string' || typeof flags === 'number'
  ? String(flags) : 'r'];
const readArgs = (p) => (loader.isLoaderRead(p) ? null : [p]);

// [name, argsOf]
const CALLBACK = [
  ['open', openArgs], ['readFile', path1], ['writeFile', path1], ['appendFile', path1],
  ['unlink', path1], ['rename', path2], ['readdir', path1], ['rm', path1], ['rmdir', path1],
  ['mkdir', path1], ['copyFile', path2], ['symlink', path2], ['chmod', path1],
];
const SYNC = [
  ['openSync', openArgs], ['readFileSync', readArgs], ['writeFileSync', path1],
  ['appendFileSync', path1], ['unlinkSync', path1], ['renameSync', path2],
  ['readdirSync', path1], ['rmSync', path1], ['rmdirSync', path1], ['mkdirSync', path1],
  ['copyFileSync', path2], ['symlinkSync', path2], ['chmodSync', path1],
];

function install(kit) {
  // blocking: callback APIs get the error in their callback, sync APIs throw, promise APIs
  // reject: each call site's own error path. Quiet: fs functions calling each other
  // (readFileSync -> openSync, createReadStream -> open) make one event, not two.
  for (const [name, argsOf] of CALLBACK) {
    kit.wrap(fs, name, `fs.${name}`, 'file', argsOf, 'callback', true);
  }
  for (const [name, argsOf] of SYNC) kit.wrap(fs, name, `fs.${name}`, 'file', argsOf, 'sync', true);
  const promises = fs.promises;
  for (const [name, argsOf] of CALLBACK) {
    kit.wrap(promises, name, `fs.promises.${name}`, 'file', argsOf, 'promise', true);
  }
}

module.exports = { family: 'fs', install };
