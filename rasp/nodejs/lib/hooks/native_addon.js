'use strict';
// Native addons: require('x.node') goes through Module._extensions['.node'], which calls
// process.dlopen; hooking process.dlopen also sees addons loaded without require.

function install(kit) {
  kit.wrap(process, 'dlopen', 'process.dlopen', 'library',
    (module, filename) => [filename], 'sync'); // blocking: throw, as a failed dlopen does
}

module.exports = { family: 'native_addon', install };
